"""Unleash's published client-specification vectors, run through Keel's evaluator.

The JSON files under ``tests/data/unleash/`` are Unleash's own (see SOURCE.md there, Apache-2.0).
Each Unleash toggle becomes a Keel flag with the same key:

- each strategy becomes a rule: ``default`` a rule at 100 %, ``userWithId`` a rule with the extra
  constraint ``user.id IN userIds``, ``flexibleRollout`` a rule at its rollout (``userId`` and
  ``default`` stickiness hash the user id when there is one, as Unleash's default does); a toggle
  without strategies is on for everyone (the base rollout at 100 %), as in Unleash;
- constraint fields map onto Keel's: ``userId`` → ``user.id``; ``environment``, ``appName``,
  ``currentTime`` and every ``properties.X`` → ``context.X`` (the client's evaluation context);
  Unleash's single ``value`` becomes Keel's ``values: [value]``;
- feature variants become the flag's variants (their payload's value as the value), sticky on the
  user id (Unleash's ``default`` stickiness with a ``userId``).

Not applicable, and why (listed in ``NOT_APPLICABLE``): Unleash's per-variant context overrides
(Keel overrides a variant per organization instead, by staff); a toggle the vector names but the
state does not define is Keel's ``FLAG_NOT_FOUND``, checked as "no evaluation". Files left out
entirely: rollout-only ones (01-07, 10, 12) are in ``tests/test_flag_evaluation.py`` already;
strategy-level variants (16), global segments with variant stickiness on a custom field (15),
dependent features (17), delta API (19, 20), regex (21) and CIDR (22) operators are outside the
issue's operators and model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from api.flags.evaluation import FlagDefinition, FlagSnapshot, Rule, Stickiness, Variant, evaluate
from api.flags.targeting import Constraint, Facts

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data" / "unleash"
CONSTRAINT_FILES = [
    "09-strategy-constraints.json",
    "11-strategy-constraints-edge-cases.json",
    "13-constraint-operators.json",
    "14-constraint-semver-operators.json",
]
#: (file, toggle, user id): cases whose answer comes from a feature Keel does not have (see above).
NOT_APPLICABLE = {
    ("08-variants.json", "Feature.Variants.override.D", "132"),
    ("08-variants.json", "Feature.Variants.override.D", "61"),
}
#: The org every vector is evaluated for (Unleash has no organizations; no vector reads it).
ORG = "0190c0de-0000-7000-8000-000000000001"


def keel_field(context_name: str) -> str:
    return "user.id" if context_name == "userId" else f"context.{context_name}"


def keel_constraint(raw: dict[str, Any]) -> Constraint:
    values = raw.get("values") or ([raw["value"]] if raw.get("value") is not None else [])
    return Constraint(
        field=keel_field(raw["contextName"]),
        operator=raw["operator"],
        values=tuple(values),
        inverted=bool(raw.get("inverted")),
        case_insensitive=bool(raw.get("caseInsensitive")),
    )


def keel_rule(index: int, strategy: dict[str, Any]) -> Rule:
    constraints = [keel_constraint(c) for c in strategy.get("constraints", [])]
    params = strategy.get("parameters") or {}
    rollout = 100
    if strategy["name"] == "userWithId":
        ids = tuple(i.strip() for i in params.get("userIds", "").split(","))
        constraints.append(Constraint(field="user.id", operator="IN", values=ids))
    elif strategy["name"] == "flexibleRollout":
        rollout = int(params.get("rollout", "100"))
    elif strategy["name"] != "default":
        raise AssertionError(f"strategy {strategy['name']!r} not mapped")
    return Rule(
        name=f"{strategy['name']}-{index}", constraints=tuple(constraints), rollout_percentage=rollout,
        stickiness=Stickiness.user,
    )  # fmt: skip


def keel_flag(feature: dict[str, Any]) -> FlagDefinition:
    strategies = feature.get("strategies", [])
    variants = tuple(
        Variant(name=v["name"], weight=v["weight"], value=(v.get("payload") or {}).get("value"))
        for v in feature.get("variants") or []
    )
    return FlagDefinition(
        key=feature["name"], enabled=feature["enabled"], archived=False,
        rollout_percentage=0 if strategies else 100, stickiness=Stickiness.user,
        rules=tuple(keel_rule(i, s) for i, s in enumerate(strategies)), variants=variants,
    )  # fmt: skip


def keel_facts(context: dict[str, Any]) -> Facts:
    fields = {k: v for k, v in context.items() if k not in ("userId", "properties")}
    fields.update(context.get("properties") or {})
    user = context.get("userId")
    return Facts(org_id=ORG, user_id=user, context=fields)


def cases(files: list[str], kind: str) -> list[Any]:
    out = []
    for name in files:
        spec = json.loads((DATA / name).read_text())
        flags = {f["name"]: keel_flag(f) for f in spec["state"]["features"]}
        for test in spec.get(kind, []):
            key = (name, test["toggleName"], test["context"].get("userId"))
            if key in NOT_APPLICABLE:
                continue
            out.append(pytest.param(flags, test, id=f"{name[:2]}:{test['description']}"))
    return out


@pytest.mark.parametrize(("flags", "test"), cases(CONSTRAINT_FILES, "tests"))
def test_constraint_vectors(flags: dict[str, FlagDefinition], test: dict[str, Any]) -> None:
    flag = flags.get(test["toggleName"])
    facts = keel_facts(test["context"])
    if flag is None:  # Unleash answers false for a toggle it does not know; Keel: FLAG_NOT_FOUND
        assert test["expectedResult"] is False
        return
    result = evaluate(flag, org_id=ORG, user_id=facts.user_id, override=None, facts=facts)
    assert result.enabled is test["expectedResult"], result.explain()
    # The compiled answer map (the endpoints' path) gives the vector's answer too.
    snapshot = FlagSnapshot(version=1, flags=flags)
    answers = snapshot.answers(org_id=ORG, user_id=facts.user_id, facts=keel_facts(test["context"]))
    assert answers[test["toggleName"]] is test["expectedResult"], snapshot.answers_source


@pytest.mark.parametrize(("flags", "test"), cases(["08-variants.json"], "variantTests"))
def test_variant_vectors(flags: dict[str, FlagDefinition], test: dict[str, Any]) -> None:
    flag = flags.get(test["toggleName"])
    expected = test["expectedResult"]
    if flag is None:
        assert expected["feature_enabled"] is False
        return
    facts = keel_facts(test["context"])
    result = evaluate(flag, org_id=ORG, user_id=facts.user_id, override=None, facts=facts)
    assert result.enabled is expected["feature_enabled"], result.explain()
    if expected["enabled"]:
        assert result.variant == expected["name"]
        assert result.value == expected["payload"]["value"]
    else:
        assert result.variant is None


def test_every_constraint_vector_file_is_run() -> None:
    """The vectors are read, not skipped: each file yields cases and each case names a toggle."""
    for name in CONSTRAINT_FILES:
        spec = json.loads((DATA / name).read_text())
        assert spec["tests"], name
    assert len(cases(CONSTRAINT_FILES, "tests")) >= 90
