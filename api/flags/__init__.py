"""Feature flags: definitions, per-org overrides, Unleash-compatible evaluation, an in-process cache."""
