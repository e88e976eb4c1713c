"""Flag evaluation as a pure function: Unleash compatibility, distribution, precedence."""

from __future__ import annotations

import random
import uuid

import pytest

from api.flags.evaluation import (
    FlagDefinition,
    FlagSnapshot,
    Override,
    Reason,
    Stickiness,
    bucket,
    evaluate,
)

# Unleash's published client-specification test cases (github.com/Unleash/client-specification),
# the rollout ones, encoded as (source file, toggle, rollout %, stickiness, stickiness value, expected).
# Unleash hashes "{groupId}:{value}" where value is the context field the strategy is sticky on; a Keel
# flag hashes "{key}:{org id or user id}". So a toggle maps to the Keel flag whose key is its groupId:
#   - userId stickiness -> Keel `user` stickiness with that user id; a context without userId -> no
#     user id (off, as in Unleash);
#   - default / sessionId / custom-field stickiness -> Keel `org` stickiness with that value as the org
#     id (the hash sees only the value, not the field's name). Contexts without the field, where
#     Unleash falls back to a random value, are left out: a Keel org always has an id.
# Cases whose outcome depends on a second strategy (03's and 04's Feature.D*) are left out too.
UNLEASH_VECTORS = [
    # specifications/10-flexible-rollout-strategy.json (groupId = toggle name)
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.100", 100, "org", "any-org", True),
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.10", 10, "org", "174", True),
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.10", 10, "org", "499", False),
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.userId.55", 55, "user", "25", True),
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.userId.55", 55, "user", None, False),
    ("10-flexible-rollout-strategy.json", "Feature.flexibleRollout.sessionId.42", 42, "org", "147", True),
    # specifications/12-custom-stickiness.json (stickiness on customField, groupId = toggle name)
    (
        "12-custom-stickiness.json",
        "Feature.flexible.rollout.custom.stickiness_100",
        100,
        "org",
        "any_value",
        True,
    ),
    ("12-custom-stickiness.json", "Feature.flexible.rollout.custom.stickiness_50", 50, "user", None, False),
    ("12-custom-stickiness.json", "Feature.flexible.rollout.custom.stickiness_50", 50, "org", "402", False),
    ("12-custom-stickiness.json", "Feature.flexible.rollout.custom.stickiness_50", 50, "org", "388", True),
    ("12-custom-stickiness.json", "Feature.flexible.rollout.custom.stickiness_50", 50, "org", "39", True),
    # specifications/03-gradual-rollout-user-id-strategy.json (gradualRolloutUserId, groupId "AB12A")
    ("03-gradual-rollout-user-id-strategy.json", "AB12A", 100, "user", "123", True),
    ("03-gradual-rollout-user-id-strategy.json", "AB12A", 100, "user", None, False),
    ("03-gradual-rollout-user-id-strategy.json", "AB12A", 50, "user", "122", True),
    ("03-gradual-rollout-user-id-strategy.json", "AB12A", 50, "user", "155", False),
    ("03-gradual-rollout-user-id-strategy.json", "AB12A", 0, "user", "122", False),
    # specifications/04-gradual-rollout-session-id-strategy.json (gradualRolloutSessionId, groupId "AB12A")
    ("04-gradual-rollout-session-id-strategy.json", "AB12A", 100, "org", "123", True),
    ("04-gradual-rollout-session-id-strategy.json", "AB12A", 50, "org", "122", True),
    ("04-gradual-rollout-session-id-strategy.json", "AB12A", 50, "org", "155", False),
    ("04-gradual-rollout-session-id-strategy.json", "AB12A", 0, "org", "122", False),
]


def flag(key: str = "f", *, rollout: int = 100, stickiness: str = "org", enabled: bool = True,
         archived: bool = False) -> FlagDefinition:  # fmt: skip
    return FlagDefinition(
        key=key,
        enabled=enabled,
        archived=archived,
        rollout_percentage=rollout,
        stickiness=Stickiness(stickiness),
    )


def org_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


@pytest.mark.parametrize(("source", "toggle", "rollout", "stickiness", "value", "expected"), UNLEASH_VECTORS)
def test_unleash_client_specification(
    source: str, toggle: str, rollout: int, stickiness: str, value: str | None, expected: bool
) -> None:
    definition = flag(toggle, rollout=rollout, stickiness=stickiness)
    if stickiness == "user":
        result = evaluate(definition, org_id=str(uuid.uuid4()), user_id=value, override=None)
    else:
        assert value is not None
        result = evaluate(definition, org_id=value, user_id=None, override=None)
    assert result.enabled is expected, (source, toggle, value, result)


def test_buckets_at_the_boundaries_of_the_vectors() -> None:
    # The vectors above include exact hits on the boundary (bucket == rollout is on), which pins
    # both the `% 100 + 1` normalization and the `<=` comparison.
    assert bucket("Feature.flexibleRollout.10", "174") == 10
    assert bucket("Feature.flexibleRollout.userId.55", "25") == 55
    assert bucket("Feature.flexibleRollout.10", "499") == 32


def test_buckets_are_1_to_100() -> None:
    seen = {bucket("range", value) for value in org_ids(5000, seed=1)}
    assert min(seen) == 1 and max(seen) == 100


def test_distribution_at_30_percent() -> None:
    definition = flag("distribution.check", rollout=30)
    ids = org_ids(10_000, seed=30)
    on = sum(evaluate(definition, org_id=o, user_id=None, override=None).enabled for o in ids)
    assert 2800 <= on <= 3200, on


def test_distribution_by_user() -> None:
    definition = flag("distribution.users", rollout=30, stickiness="user")
    org = str(uuid.uuid4())
    on = sum(
        evaluate(definition, org_id=org, user_id=u, override=None).enabled for u in org_ids(10_000, seed=7)
    )
    assert 2800 <= on <= 3200, on


def test_raising_the_percentage_never_turns_an_org_off() -> None:
    ids = org_ids(2000, seed=99)
    previous: set[str] = set()
    for p in range(0, 101):
        definition = flag("monotonic", rollout=p)
        on = {o for o in ids if evaluate(definition, org_id=o, user_id=None, override=None).enabled}
        assert previous <= on, f"raising to {p}% turned off {len(previous - on)} orgs"
        previous = on


def test_zero_is_nobody_and_a_hundred_is_everybody() -> None:
    ids = org_ids(10_000, seed=0)
    assert not any(
        evaluate(flag("edges", rollout=0), org_id=o, user_id=None, override=None).enabled for o in ids
    )
    assert all(
        evaluate(flag("edges", rollout=100), org_id=o, user_id=None, override=None).enabled for o in ids
    )


def test_the_flag_key_is_the_hash_group() -> None:
    # Two flags at the same percentage do not pick the same organizations.
    ids = org_ids(2000, seed=5)
    a = {
        o for o in ids if evaluate(flag("group.a", rollout=50), org_id=o, user_id=None, override=None).enabled
    }
    b = {
        o for o in ids if evaluate(flag("group.b", rollout=50), org_id=o, user_id=None, override=None).enabled
    }
    assert a != b and 0.35 < len(a & b) / len(a) < 0.65


@pytest.mark.parametrize(
    ("definition", "override", "enabled", "reason"),
    [
        # archived wins over everything
        (flag(archived=True), Override(True, "beta"), False, Reason.archived),
        (flag(archived=True, enabled=False), None, False, Reason.archived),
        # the kill switch wins over an override
        (flag(enabled=False), Override(True, "beta"), False, Reason.kill_switch),
        (flag(enabled=False, rollout=100), None, False, Reason.kill_switch),
        # an override wins over the rollout, either way
        (flag(rollout=100), Override(False, "opted out"), False, Reason.override),
        (flag(rollout=0), Override(True, "beta"), True, Reason.override),
        (flag(rollout=0, stickiness="user"), Override(True, "beta"), True, Reason.override),
        # then the rollout
        (flag(rollout=100), None, True, Reason.rollout),
        (flag(rollout=0), None, False, Reason.rollout),
        (flag(rollout=100, stickiness="user"), None, False, Reason.missing_user_id),
    ],
)
def test_precedence(
    definition: FlagDefinition, override: Override | None, enabled: bool, reason: Reason
) -> None:
    result = evaluate(definition, org_id=str(uuid.uuid4()), user_id=None, override=override)
    assert (result.enabled, result.reason) == (enabled, reason)
    assert result.explain().startswith("on" if enabled else "off")


def test_explanations_name_the_cause() -> None:
    org = "00000000-0000-7000-8000-000000000001"
    n = bucket("explained", org)
    rollout = evaluate(flag("explained", rollout=n), org_id=org, user_id=None, override=None)
    assert rollout.explain() == f"on: bucket {n} <= rollout {n}"
    assert evaluate(flag("explained", rollout=n - 1), org_id=org, user_id=None, override=None).explain() == (
        f"off: bucket {n} > rollout {n - 1}"
    )
    forced = evaluate(flag(), org_id=org, user_id=None, override=Override(False, "asked to wait"))
    assert "asked to wait" in forced.explain()
    assert "kill switch" in evaluate(flag(enabled=False), org_id=org, user_id=None, override=None).explain()


def test_snapshot_evaluates_one_or_all_with_the_orgs_overrides() -> None:
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    snapshot = FlagSnapshot(
        version=3,
        flags={"a": flag("a", rollout=0), "b": flag("b", rollout=100), "c": flag("c", archived=True)},
        overrides={org: {"a": Override(True, "beta")}},
    )
    assert {r.key: r.enabled for r in snapshot.evaluate_all(org_id=org)} == {"a": True, "b": True, "c": False}
    assert {r.key: r.enabled for r in snapshot.evaluate_all(org_id=other)} == {
        "a": False,
        "b": True,
        "c": False,
    }
    one = snapshot.evaluate("a", org_id=org)
    assert one is not None and one.reason is Reason.override
    assert snapshot.evaluate("missing", org_id=org) is None


def test_answers_agree_with_evaluate_all_for_every_precedence_case() -> None:
    """The endpoint's fast path (``answers``) and the reasoned one give the same map, case by case."""
    orgs = org_ids(300, seed=7)
    flags = {
        f"k{i}": flag(
            f"k{i}",
            rollout=(i * 13) % 101,
            stickiness="user" if i % 3 == 0 else "org",
            enabled=i % 7 != 1,
            archived=i % 11 == 2,
        )
        for i in range(40)
    }
    overrides = {
        org: {"k1": Override(True, "killed anyway"), "k4": Override(False, "x")} for org in orgs[:50]
    }
    snapshot = FlagSnapshot(version=1, flags=flags, overrides=overrides)
    for org in orgs:
        for user in (None, "", "user-9", org):
            expected = {r.key: r.enabled for r in snapshot.evaluate_all(org_id=org, user_id=user)}
            assert snapshot.answers(org_id=org, user_id=user) == expected
    assert list(snapshot.answers(org_id=orgs[0])) == list(flags)  # the snapshot's (key) order
