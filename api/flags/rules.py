"""Flag rules, segments and variants: what a definition may hold (422 naming the field path at
fault) and how the stored JSON becomes the pure definitions of :mod:`api.flags.evaluation`.

One definition of each: the admin API validates with these functions, the store and the admin
views build definitions with :func:`definition_of`, the scheduler re-validates a patch with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from api.errors import ValidationFailed
from api.flags.evaluation import VARIANT_WEIGHT_TOTAL, FlagDefinition, Rule, Stickiness, Variant
from api.flags.schemas import ConstraintIn, RuleIn, VariantIn
from api.flags.targeting import (
    SINGLE_VALUE,
    Constraint,
    Operator,
    field_problem,
    parse_date,
    parse_number,
    parse_semver,
)

_OPERATORS = {op.value for op in Operator}
_NUMBER_OPS = {"NUM_EQ", "NUM_GT", "NUM_GTE", "NUM_LT", "NUM_LTE"}
_DATE_OPS = {"DATE_AFTER", "DATE_BEFORE"}


def check_constraints(constraints: Sequence[ConstraintIn], path: str) -> list[dict[str, Any]]:
    """Each constraint's field, operator and values, or a 422 naming the first at fault."""
    out: list[dict[str, Any]] = []
    for i, c in enumerate(constraints):
        at = f"{path}[{i}]"
        problem = field_problem(c.field)
        if problem is not None:
            raise ValidationFailed(problem, field=f"{at}.field")
        if c.operator not in _OPERATORS:
            raise ValidationFailed(
                f"unknown operator {c.operator!r}: use one of {', '.join(sorted(_OPERATORS))}",
                field=f"{at}.operator",
            )
        if c.operator in SINGLE_VALUE:
            if len(c.values) != 1:
                raise ValidationFailed(f"{c.operator} compares with exactly one value", field=f"{at}.values")
            value = c.values[0]
            if c.operator in _NUMBER_OPS and parse_number(value) is None:
                raise ValidationFailed(f"{value!r} is not a number", field=f"{at}.values[0]")
            if c.operator in _DATE_OPS and parse_date(value) is None:
                raise ValidationFailed(f"{value!r} is not an ISO-8601 time", field=f"{at}.values[0]")
            if c.operator.startswith("SEMVER_") and parse_semver(value) is None:
                raise ValidationFailed(f"{value!r} is not a semantic version", field=f"{at}.values[0]")
        out.append(msgspec.to_builtins(c))
    return out


def check_rules(rules: Sequence[RuleIn], known_segments: Iterable[str]) -> list[dict[str, Any]]:
    known = set(known_segments)
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in names:
            raise ValidationFailed(f"two rules are named {rule.name!r}", field=f"rules[{i}].name")
        names.add(rule.name)
        for j, segment in enumerate(rule.segments):
            if segment not in known:
                raise ValidationFailed(f"no segment named {segment!r}", field=f"rules[{i}].segments[{j}]")
        check_constraints(rule.constraints, f"rules[{i}].constraints")
        out.append(msgspec.to_builtins(rule))
    return out


def check_variants(variants: Sequence[VariantIn]) -> list[dict[str, Any]]:
    if not variants:
        return []
    names = [v.name for v in variants]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValidationFailed(f"two variants are named {name!r}", field=f"variants[{i}].name")
    total = sum(v.weight for v in variants)
    if total != VARIANT_WEIGHT_TOTAL:
        raise ValidationFailed(
            f"variant weights add up to {total}, not {VARIANT_WEIGHT_TOTAL}", field="variants"
        )
    return [msgspec.to_builtins(v) for v in variants]


def _constraint(raw: Mapping[str, Any], segment: str | None = None) -> Constraint:
    return Constraint(
        field=raw["field"], operator=raw["operator"], values=tuple(raw.get("values") or ()),
        inverted=bool(raw.get("inverted")), case_insensitive=bool(raw.get("case_insensitive")),
        segment=segment,
    )  # fmt: skip


def rule_of(raw: Mapping[str, Any], segments: Mapping[str, Sequence[Mapping[str, Any]]]) -> Rule:
    """A stored rule with its segments resolved (each segment's constraints first, in order).

    A segment deleted since (the API refuses to delete one in use) matches no one: a rule is
    never widened by what it no longer names."""
    constraints: list[Constraint] = []
    for name in raw.get("segments") or ():
        members = segments.get(name)
        if members is None:
            constraints.append(Constraint(field="org.id", operator="IN", values=(), segment=name))
            continue
        constraints.extend(_constraint(c, name) for c in members)
    constraints.extend(_constraint(c) for c in raw.get("constraints") or ())
    return Rule(
        name=raw["name"], constraints=tuple(constraints),
        rollout_percentage=int(raw.get("rollout_percentage", 100)),
        stickiness=Stickiness(raw.get("stickiness", "org")), segments=tuple(raw.get("segments") or ()),
    )  # fmt: skip


def definition_of(
    *,
    key: str,
    enabled: bool,
    archived_at: datetime | None,
    rollout_percentage: int,
    stickiness: Stickiness,
    rules: Sequence[Mapping[str, Any]] | None,
    variants: Sequence[Mapping[str, Any]] | None,
    segments: Mapping[str, Sequence[Mapping[str, Any]]],
) -> FlagDefinition:
    return FlagDefinition(
        key=key, enabled=enabled, archived=archived_at is not None, rollout_percentage=rollout_percentage,
        stickiness=stickiness, rules=tuple(rule_of(r, segments) for r in rules or ()),
        variants=tuple(Variant(v["name"], int(v["weight"]), v.get("value")) for v in variants or ()),
    )  # fmt: skip
