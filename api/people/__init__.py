"""People and organization traits, set by Segment's ``identify``, ``group`` and ``alias`` calls."""
