"""The compiled answer map (``api/flags/compiled.py``) answers as ``evaluate`` does, for every operator.

``FlagSnapshot.answers`` runs a function written per snapshot; these tests hold it to the reasoned
path (``evaluate_all``) over random definitions that use every operator, ``inverted`` and
``case_insensitive``, segments, shared conditions, 0/partial/100 rollouts on both stickinesses,
missing user ids and overrides, and check that nothing a definition holds becomes source text.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime

import pytest

from api.flags.evaluation import FlagDefinition, FlagSnapshot, Override, Rule, Stickiness, Variant
from api.flags.targeting import Constraint, Facts, Operator

pytestmark = pytest.mark.unit

PLANS = ("team", "business", "enterprise")
FIELDS_AND_VALUES = {
    "org.plan": lambda rng: rng.choice(PLANS),
    "org.seats": lambda rng: rng.choice(["1", "9", "10", "10.5", "50", "x", " 12 "]),
    "org.created_at": lambda rng: rng.choice(["2024-01-01T00:00:00+00:00", "2026-06-01", "not a date"]),
    "org.traits.industry": lambda rng: rng.choice(["fintech", "FinTech", "health", "retail"]),
    "org.traits.app": lambda rng: rng.choice(["1.2.3", "2.0.0-beta.1", "10.0.0", "bad"]),
    "context.country": lambda rng: rng.choice(["NO", "no", "SE", "US"]),
    "context.currentTime": lambda rng: rng.choice(["2025-01-01T00:00:00Z", "2030-01-01T00:00:00+02:00"]),
    "user.id": lambda rng: rng.choice(["u1", "u2", "u7"]),
    "org.id": lambda rng: "org-3",
}
OPERATOR_VALUES = {
    Operator.IN: lambda rng, f: tuple({FIELDS_AND_VALUES[f](rng) for _ in range(rng.randint(1, 3))}),
    Operator.NOT_IN: lambda rng, f: tuple({FIELDS_AND_VALUES[f](rng) for _ in range(rng.randint(1, 3))}),
    Operator.STR_CONTAINS: lambda rng, f: (rng.choice(["in", "TE", "e", ""]),),
    Operator.STR_STARTS_WITH: lambda rng, f: (rng.choice(["fin", "N", "u", "2"]), "he"),
    Operator.STR_ENDS_WITH: lambda rng, f: (rng.choice(["ch", "O", "7", "3"]),),
    Operator.NUM_EQ: lambda rng, f: (rng.choice(["10", "10.5", "1", "nope"]),),
    Operator.NUM_GT: lambda rng, f: (rng.choice(["9", "12"]),),
    Operator.NUM_GTE: lambda rng, f: (rng.choice(["10", "50"]),),
    Operator.NUM_LT: lambda rng, f: (rng.choice(["10", "2"]),),
    Operator.NUM_LTE: lambda rng, f: (rng.choice(["10", "50"]),),
    Operator.DATE_AFTER: lambda rng, f: (rng.choice(["2025-06-01T00:00:00Z", "2020-01-01", "bad"]),),
    Operator.DATE_BEFORE: lambda rng, f: (rng.choice(["2025-06-01T00:00:00Z", "2031-01-01"]),),
    Operator.SEMVER_EQ: lambda rng, f: (rng.choice(["1.2.3", "2.0.0-beta.1"]),),
    Operator.SEMVER_GT: lambda rng, f: (rng.choice(["1.2.3", "2.0.0"]),),
    Operator.SEMVER_GTE: lambda rng, f: (rng.choice(["2.0.0-beta.1", "10.0.0"]),),
    Operator.SEMVER_LT: lambda rng, f: (rng.choice(["2.0.0", "1.0.0"]),),
    Operator.SEMVER_LTE: lambda rng, f: (rng.choice(["1.2.3", "bad"]),),
}


def random_constraint(rng: random.Random, pool: list[Constraint]) -> Constraint:
    if pool and rng.random() < 0.4:  # the same constraint in several rules: checked once per call
        return rng.choice(pool)
    field = rng.choice([*FIELDS_AND_VALUES, "context.absent", "org.traits.absent"])
    operator = rng.choice([*OPERATOR_VALUES, "REGEX_UNKNOWN"])
    values_of = OPERATOR_VALUES.get(operator)  # type: ignore[call-overload]
    values = values_of(rng, field if field in FIELDS_AND_VALUES else "org.plan") if values_of else ("x",)
    constraint = Constraint(
        field, operator, values, inverted=rng.random() < 0.25, case_insensitive=rng.random() < 0.3,
        segment=rng.choice([None, None, "enterprise-eu"]),
    )  # fmt: skip
    pool.append(constraint)
    return constraint


def random_flags(rng: random.Random, n: int) -> dict[str, FlagDefinition]:
    pool: list[Constraint] = []
    shared_rules: list[Rule] = []
    flags = {}
    for i in range(n):
        rules = []
        for j in range(rng.randint(0, 3)):
            if shared_rules and rng.random() < 0.3:  # a whole condition many flags share (a segment)
                rules.append(rng.choice(shared_rules))
                continue
            rule = Rule(
                name=f"r{j}",
                constraints=tuple(random_constraint(rng, pool) for _ in range(rng.randint(0, 3))),
                rollout_percentage=rng.choice([0, 1, 30, 70, 99, 100]),
                stickiness=rng.choice(list(Stickiness)),
            )
            shared_rules.append(rule)
            rules.append(rule)
        key = f"f{i}"
        flags[key] = FlagDefinition(
            key=key, enabled=rng.random() > 0.1, archived=rng.random() < 0.05,
            rollout_percentage=rng.choice([0, 1, 10, 50, 99, 100]), stickiness=rng.choice(list(Stickiness)),
            rules=tuple(rules), variants=(Variant("a", 500, 1), Variant("b", 500, 2)) if i % 5 == 0 else (),
        )  # fmt: skip
    return flags


def random_facts(rng: random.Random, org: str) -> Facts:
    user = rng.choice([None, "", "u1", "u2", "u7"])
    org_fields = {
        name: make(rng)
        for name, make in FIELDS_AND_VALUES.items()
        if name.startswith("org.") and not name.startswith("org.traits.") and name != "org.id"
        if rng.random() < 0.8
    }
    traits = {
        name.removeprefix("org.traits."): make(rng)
        for name, make in FIELDS_AND_VALUES.items()
        if name.startswith("org.traits.")
        if rng.random() < 0.8
    }
    traits["flag"] = rng.choice([True, False, 3, 2.5, None, ["a"]])
    context = {
        name.removeprefix("context."): make(rng)
        for name, make in FIELDS_AND_VALUES.items()
        if name.startswith("context.")
        if rng.random() < 0.7
    }
    now = rng.choice([None, datetime(2026, 1, 1, tzinfo=UTC)])
    return Facts(org_id=org, user_id=user, org=org_fields, traits=traits, context=context, now=now)


@pytest.mark.parametrize("seed", range(12))
def test_compiled_answers_match_evaluate_for_every_operator(seed: int) -> None:
    rng = random.Random(seed)
    flags = random_flags(rng, 60)
    orgs = [f"org-{i}" for i in range(40)]
    overrides = {
        orgs[0]: {"f1": Override(True, "beta"), "f2": Override(False, "no"), "gone": Override(True, "x")},
        orgs[1]: {key: Override(rng.random() < 0.5, "all") for key in flags},
    }
    snapshot = FlagSnapshot(version=1, flags=flags, overrides=overrides)
    for org in orgs:
        facts = random_facts(rng, org)
        expected = {
            r.key: r.enabled for r in snapshot.evaluate_all(org_id=org, user_id=facts.user_id, facts=facts)
        }
        answers = snapshot.answers(org_id=org, user_id=facts.user_id, facts=facts)
        assert answers == expected, snapshot.answers_source
        assert list(answers) == list(flags)
        assert all(type(v) is bool for v in answers.values())
        # Without facts, rules see only org.id and user.id (as evaluate does).
        bare = {r.key: r.enabled for r in snapshot.evaluate_all(org_id=org, user_id=facts.user_id)}
        assert snapshot.answers(org_id=org, user_id=facts.user_id) == bare


def test_the_bucket_is_hashed_once_per_stickiness_and_shared_between_a_rule_and_the_base() -> None:
    """A rule at 40 % and a base rollout at 60 %, both by org: one hash decides both, as evaluate."""
    rule = Rule("half", (Constraint("org.plan", "IN", ("enterprise",)),), rollout_percentage=40)
    flags = {
        "k": FlagDefinition(
            key="k",
            enabled=True,
            archived=False,
            rollout_percentage=60,
            stickiness=Stickiness.org,
            rules=(rule,),
        ),
        "u": FlagDefinition(
            key="u",
            enabled=True,
            archived=False,
            rollout_percentage=60,
            stickiness=Stickiness.user,
            rules=(Rule("by-user", rule.constraints, 40, Stickiness.user),),
        ),
    }
    snapshot = FlagSnapshot(version=1, flags=flags)
    namespace = snapshot._answer_map.__globals__  # the compiled function's constants
    hashed: list[str] = []
    murmur = namespace["H"]
    namespace["H"] = lambda text, seed, signed: hashed.append(text) or murmur(text, seed, signed)
    for i in range(300):
        org, user = f"org-{i}", f"user-{i}"
        facts = Facts(org_id=org, user_id=user, org={"org.plan": "enterprise" if i % 2 else "team"})
        expected = {r.key: r.enabled for r in snapshot.evaluate_all(org_id=org, user_id=user, facts=facts)}
        hashed.clear()
        assert snapshot.answers(org_id=org, user_id=user, facts=facts) == expected
        assert sorted(hashed) == sorted({f"k:{org}", f"u:{user}"})  # once each, rule or no rule
        # Facts for another user than the base's: the rule hashes the facts' one, the base its own.
        other = Facts(org_id=org, user_id=f"someone-else-{i}", org=facts.org)
        expected = {r.key: r.enabled for r in snapshot.evaluate_all(org_id=org, user_id=user, facts=other)}
        assert snapshot.answers(org_id=org, user_id=user, facts=other) == expected


def test_nothing_a_definition_holds_becomes_source_text() -> None:
    """Keys, fields and values are constants of the function's namespace: code in them is inert."""
    payload = '"); __import__("os")._exit(3); ("'
    flags = {
        "flag.x": FlagDefinition(
            key="flag.x",
            enabled=True,
            archived=False,
            rollout_percentage=100,
            stickiness=Stickiness.org,
            rules=(
                Rule(
                    "evil",
                    (
                        Constraint("context.x", "IN", (payload,)),
                        Constraint("context.y", "STR_CONTAINS", (payload,)),
                    ),
                    100,
                ),
            ),
        ),
    }
    snapshot = FlagSnapshot(version=1, flags=flags)
    assert payload not in snapshot.answers_source
    assert "flag.x" not in snapshot.answers_source
    hit = Facts(org_id="o", context={"x": payload, "y": "a" + payload})
    assert snapshot.answers(org_id="o", facts=hit) == {"flag.x": True}
    assert snapshot.answers(org_id="o", facts=Facts(org_id="o")) == {"flag.x": True}  # base at 100


def test_rollouts_of_zero_and_one_hundred_need_no_hash_and_rules_at_zero_no_check() -> None:
    never = Rule("never", (Constraint("org.plan", "SEMVER_GT", ("1.0.0",)),), rollout_percentage=0)
    flags = {
        f"k{r}-{s}": FlagDefinition(
            key=f"k{r}-{s}", enabled=True, archived=False, rollout_percentage=r, stickiness=s, rules=(never,)
        )
        for r in (0, 100)
        for s in Stickiness
    }
    snapshot = FlagSnapshot(version=1, flags=flags)
    assert "H(" not in snapshot.answers_source
    assert re.search(r"\bC\d+\(", snapshot.answers_source) is None  # the rule at 0 % is never checked
    for user in (None, "", "u"):
        expected = {r.key: r.enabled for r in snapshot.evaluate_all(org_id="o", user_id=user)}
        assert snapshot.answers(org_id="o", user_id=user) == expected
