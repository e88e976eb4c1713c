"""Targeting: the constraints of flag rules, with Unleash's operators and Unleash's answers.

Pure, like :mod:`api.flags.evaluation`: a :class:`Constraint` is compiled once per snapshot into a
check over a :class:`Facts` (the fields of one evaluation), so the hot path does no parsing of the
constraint's own values. A context value is compared as text, as Unleash's clients compare it
(numbers, booleans and times are turned into their JSON/ISO text when the facts are made).

Unleash's answers for what is missing or unparsable (its client-specification vectors, run by
``tests/test_flag_unleash_spec.py``): a missing field is never ``IN`` anything and always
``NOT_IN``; a string, number, date or semver operator on a missing or unparsable value is false;
``inverted`` negates the operator's answer afterwards; an unknown operator (one a stored definition
could only carry if written around the API) is false. ``DATE_*`` on ``context.currentTime`` that
the client did not send compares the evaluation's own time, as Unleash does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import semver


class Operator(enum.StrEnum):
    IN = "IN"
    NOT_IN = "NOT_IN"
    STR_CONTAINS = "STR_CONTAINS"
    STR_STARTS_WITH = "STR_STARTS_WITH"
    STR_ENDS_WITH = "STR_ENDS_WITH"
    NUM_EQ = "NUM_EQ"
    NUM_GT = "NUM_GT"
    NUM_GTE = "NUM_GTE"
    NUM_LT = "NUM_LT"
    NUM_LTE = "NUM_LTE"
    DATE_AFTER = "DATE_AFTER"
    DATE_BEFORE = "DATE_BEFORE"
    SEMVER_EQ = "SEMVER_EQ"
    SEMVER_GT = "SEMVER_GT"
    SEMVER_GTE = "SEMVER_GTE"
    SEMVER_LT = "SEMVER_LT"
    SEMVER_LTE = "SEMVER_LTE"


#: Operators that compare with one value (Unleash's ``value``; Keel's ``values`` of length one).
SINGLE_VALUE = frozenset(
    {
        Operator.NUM_EQ, Operator.NUM_GT, Operator.NUM_GTE, Operator.NUM_LT, Operator.NUM_LTE,
        Operator.DATE_AFTER, Operator.DATE_BEFORE, Operator.SEMVER_EQ, Operator.SEMVER_GT,
        Operator.SEMVER_GTE, Operator.SEMVER_LT, Operator.SEMVER_LTE,
    }
)  # fmt: skip

#: Fields Keel resolves itself (never sent by the client), and the open families.
ORG_FIELDS = frozenset(
    {"org.id", "org.external_id", "org.plan", "org.subscription_status", "org.seats", "org.created_at"}
)
USER_ID = "user.id"
TRAITS_PREFIX = "org.traits."
CONTEXT_PREFIX = "context."
CURRENT_TIME = "context.currentTime"
_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_.$-]{0,99}$")


def field_problem(name: str) -> str | None:
    """Why ``name`` is not a field a rule can use, or ``None`` when it is."""
    if name in ORG_FIELDS or name == USER_ID:
        return None
    for prefix in (TRAITS_PREFIX, CONTEXT_PREFIX):
        if name.startswith(prefix):
            rest = name[len(prefix) :]
            return None if _NAME.fullmatch(rest) else f"{prefix}<name> needs a name (letters, digits, _.$-)"
    return (
        f"unknown field {name!r}: use one of {', '.join(sorted(ORG_FIELDS))}, user.id, "
        "org.traits.<name> or context.<name>"
    )


def as_text(value: Any) -> str | None:
    """A context value as the text Unleash compares: JSON's spelling for booleans, ISO for times."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return None  # objects and lists match nothing


def org_fields(org_id: str, org: Mapping[str, str], traits: Mapping[str, Any]) -> dict[str, str]:
    """An org's fields by rule name, as text: ``org.id``, ``org.*`` and ``org.traits.*``."""
    flat = {"org.id": org_id, **org}
    for name, value in traits.items():
        text = as_text(value)
        if text is not None:
            flat[TRAITS_PREFIX + name] = text
    return flat


@dataclass(slots=True)
class Facts:
    """The fields of one evaluation, as text: Keel's org fields, the user id and the client's context.

    Made per request and not changed after (nothing here writes to it but the :attr:`flat` cache).
    Not a frozen dataclass: a frozen one's ``__init__`` sets each field through
    ``object.__setattr__``, which cost more than checking a rule (``bench/bench_flags.py``).
    """

    org_id: str
    user_id: str | None = None
    #: ``org.*`` (plan, status, seats, created_at, external_id) as text; absent = missing.
    org: Mapping[str, str] = field(default_factory=dict)
    traits: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    #: When ``context.currentTime`` is not given (``DATE_*``); ``None`` = the time of the check.
    now: datetime | None = None
    #: ``org.*`` and ``org.traits.*`` already flattened (:func:`org_fields`), kept by the store per
    #: org, so a request flattens only its own user id and context.
    org_flat: Mapping[str, str] | None = None
    _flat: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def flat(self) -> dict[str, str]:
        """Every field by its rule name, as text (made once per evaluation: checks read only this)."""
        flat = self._flat
        if flat is None:
            if self.org_flat is not None:
                flat = dict(self.org_flat)
            else:
                flat = org_fields(self.org_id, self.org, self.traits)
            if self.user_id:
                flat[USER_ID] = self.user_id
            for name, value in self.context.items():
                text = value if type(value) is str else as_text(value)
                if text is not None:
                    flat[CONTEXT_PREFIX + name] = text
            if self.now is not None and CURRENT_TIME not in flat:
                flat[CURRENT_TIME] = self.now.isoformat()
            self._flat = flat
        return flat

    def get(self, name: str) -> str | None:
        if name == "org.id":
            return self.org_id
        if name == USER_ID:
            return self.user_id
        if name.startswith(TRAITS_PREFIX):
            return as_text(self.traits.get(name[len(TRAITS_PREFIX) :]))
        if name.startswith(CONTEXT_PREFIX):
            return as_text(self.context.get(name[len(CONTEXT_PREFIX) :]))
        return self.org.get(name)


@dataclass(frozen=True, slots=True)
class Constraint:
    field: str
    operator: str
    values: tuple[str, ...] = ()
    inverted: bool = False
    case_insensitive: bool = False
    #: The segment it came from (for explanations), or ``None`` for the rule's own.
    segment: str | None = None

    def describe(self) -> str:
        shown = ", ".join(self.values)
        text = f"{self.field} {'NOT ' if self.inverted else ''}{self.operator} [{shown}]"
        return f"{text} (segment {self.segment!r})" if self.segment else text


#: A compiled constraint: reads the fields of :attr:`Facts.flat`.
Check = Callable[[Mapping[str, str]], bool]


def parse_date(text: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return None if number != number else number  # NaN compares as nothing


def parse_semver(text: str | None) -> semver.Version | None:
    if text is None:
        return None
    try:
        return semver.Version.parse(text.strip())
    except (ValueError, TypeError):
        return None


_NUM: dict[str, Callable[[float, float], bool]] = {
    Operator.NUM_EQ: lambda a, b: a == b,
    Operator.NUM_GT: lambda a, b: a > b,
    Operator.NUM_GTE: lambda a, b: a >= b,
    Operator.NUM_LT: lambda a, b: a < b,
    Operator.NUM_LTE: lambda a, b: a <= b,
}
_SEMVER: dict[str, Callable[[int], bool]] = {
    Operator.SEMVER_EQ: lambda c: c == 0,
    Operator.SEMVER_GT: lambda c: c > 0,
    Operator.SEMVER_GTE: lambda c: c >= 0,
    Operator.SEMVER_LT: lambda c: c < 0,
    Operator.SEMVER_LTE: lambda c: c <= 0,
}


def membership(c: Constraint) -> tuple[frozenset[str], bool] | None:
    """For ``IN``/``NOT_IN``: the values to look the field's text up in, and whether the answer is
    "not in" (``NOT_IN``, or ``IN`` inverted); ``None`` for every other operator.

    The one definition of a membership constraint: :func:`compile_constraint` makes its check of
    it, and the compiled answer map (:mod:`api.flags.compiled`) writes it inline.
    """
    if c.operator not in (Operator.IN, Operator.NOT_IN):
        return None
    members = frozenset(v.strip() for v in c.values if v is not None)
    return members, (c.operator == Operator.NOT_IN) != c.inverted


def _operator_check(c: Constraint) -> Check:
    """The operator's answer (before ``inverted``)."""
    name = c.field
    values = tuple(v.strip() for v in c.values if v is not None)
    op = c.operator
    if op in (Operator.STR_CONTAINS, Operator.STR_STARTS_WITH, Operator.STR_ENDS_WITH):
        fold = c.case_insensitive
        needles = tuple(v.lower() for v in values) if fold else values

        def text_of(f: Mapping[str, str]) -> str | None:
            value = f.get(name)
            return value.lower() if fold and value is not None else value

        if op == Operator.STR_CONTAINS:
            return lambda f: (v := text_of(f)) is not None and any(n in v for n in needles)
        if op == Operator.STR_STARTS_WITH:
            return lambda f: (v := text_of(f)) is not None and v.startswith(needles)
        return lambda f: (v := text_of(f)) is not None and v.endswith(needles)
    if op in _NUM:
        target = parse_number(values[0]) if values else None
        compare = _NUM[op]
        if target is None:
            return lambda f: False
        return lambda f: (v := parse_number(f.get(name))) is not None and compare(v, target)
    if op in (Operator.DATE_AFTER, Operator.DATE_BEFORE):
        when = parse_date(values[0]) if values else None
        if when is None:
            return lambda f: False
        after = op == Operator.DATE_AFTER

        def date_check(f: Mapping[str, str]) -> bool:
            raw = f.get(name)
            if raw is None and name == CURRENT_TIME:
                value: datetime | None = datetime.now(UTC)
            else:
                value = parse_date(raw) if raw is not None else None
            if value is None:
                return False
            return value > when if after else value < when

        return date_check
    if op in _SEMVER:
        version = parse_semver(values[0]) if values else None
        outcome = _SEMVER[op]
        if version is None:
            return lambda f: False
        return lambda f: (v := parse_semver(f.get(name))) is not None and outcome(v.compare(version))
    return lambda f: False  # an unknown operator matches nothing (Unleash)


def compile_constraint(c: Constraint) -> Check:
    found = membership(c)
    if found is not None:  # `inverted` is folded into the membership's sense
        name, (members, negate) = c.field, found
        if negate:
            return lambda f: f.get(name) not in members
        return lambda f: f.get(name) in members
    check = _operator_check(c)
    if c.inverted:
        return lambda f: not check(f)
    return check


def first_failing(checks: Sequence[tuple[Constraint, Check]], facts: Facts) -> Constraint | None:
    """The first constraint that does not hold (``None``: all hold)."""
    flat = facts.flat
    for constraint, check in checks:
        if not check(flat):
            return constraint
    return None
