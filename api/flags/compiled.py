"""The answer map compiled once per snapshot: ``FlagSnapshot.answers``' hot path as one function.

Every flag's precedence (off, override, rules in order, base rollout) is decided when a snapshot
is made, so the function written here holds only what is left to do per call: the hashes and
the constraints. Constraint operators are resolved at compile time: ``IN``/``NOT_IN`` become a
set look-up of the field's text (a local read once per call), every other operator the check
:func:`~api.flags.targeting.compile_constraint` made, with its values already parsed. A rule
condition or a check that several flags share is computed once per call, whichever flag needs
it first; a flag's bucket is hashed once per stickiness, whichever of its rules or its base
rollout needs it first; rollouts of 0 and 100 are answered without a hash.

Why a generated function: the interpreter's own loop over a per-flag plan cost more than the
work (``bench/bench_flags.py`` has the profile). Safety: the source holds only names made here
and integer literals; every key, field name, value and check is a constant of the function's
namespace, never text in its source. ``tests/test_flag_compiled.py`` holds the answers to
:func:`api.flags.evaluation.evaluate`'s, operator by operator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import mmh3

from api.flags.targeting import Check, Constraint, Facts, compile_constraint, membership

if TYPE_CHECKING:
    from api.flags.evaluation import FlagDefinition, Override

#: ``(org_id, user_id, facts, the org's overrides) -> {key: enabled}``.
AnswerMap = Callable[[str, "str | None", "Facts | None", "Mapping[str, Override] | None"], dict[str, bool]]


def _plain(c: Constraint) -> Constraint:
    """The constraint without its segment's name (explanations only): equal checks are one."""
    if c.segment is None:
        return c
    return Constraint(c.field, c.operator, c.values, c.inverted, c.case_insensitive)


class _Writer:
    """The function's source, line by line, and the constants it names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"H": mmh3.hash, "Facts": Facts}
        self.fields: dict[str, str] = {}  # field name -> its local
        self.checks: dict[Constraint, str] = {}  # constraint -> its expression
        self.conditions: dict[tuple[Constraint, ...], str] = {}
        self.memos: list[str] = []

    def const(self, prefix: str, value: Any) -> str:
        name = f"{prefix}{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def field(self, name: str) -> str:
        local = self.fields.get(name)
        if local is None:
            local = self.fields[name] = f"v{len(self.fields)}"
        return local

    def memo(self, expression: str) -> str:
        """``expression`` computed at its first use in a call and reused after."""
        local = f"m{len(self.memos)}"
        self.memos.append(local)
        return f"({local} if {local} is not None else ({local} := {expression}))"


def _check_expression(w: _Writer, c: Constraint, shared: Counter[Constraint]) -> str:
    found = w.checks.get(c)
    if found is not None:
        return found
    member = membership(c)
    if member is not None:  # a set look-up of a local: cheaper inline than remembered
        values, negate = member
        expression = f"({w.field(c.field)} {'not in' if negate else 'in'} {w.const('S', values)})"
    else:
        check: Check = compile_constraint(c)
        expression = f"{w.const('C', check)}(flat)"
        if shared[c] > 1:
            expression = w.memo(expression)
    w.checks[c] = expression
    return expression


def _condition_expression(
    w: _Writer,
    constraints: tuple[Constraint, ...],
    shared_conditions: Counter[tuple[Constraint, ...]],
    shared_checks: Counter[Constraint],
) -> str:
    """A rule's constraints as one ``and`` (``True`` without any), remembered when shared."""
    condition = tuple(_plain(c) for c in constraints)
    expression = w.conditions.get(condition)
    if expression is None:
        parts = [_check_expression(w, c, shared_checks) for c in condition]
        expression = " and ".join(parts) if parts else "True"
        if shared_conditions[condition] > 1:
            expression = w.memo(f"({expression})")
        w.conditions[condition] = expression
    return expression


def compile_answers(flags: Mapping[str, FlagDefinition]) -> tuple[AnswerMap, str]:
    """The answer map of ``flags`` (what :func:`~api.flags.evaluation.evaluate` answers for each,
    without its reasons) and the function's source (for a reader: ``FlagSnapshot.answers_source``)."""
    from api.flags.evaluation import NORMALIZER, Stickiness  # evaluation imports this module

    live = {k: f for k, f in flags.items() if f.enabled and not f.archived}
    conditions = [tuple(_plain(c) for c in r.constraints) for f in live.values() for r in f.rules]
    shared_conditions = Counter(conditions)
    # A check met in several distinct conditions is remembered (those in one shared condition are
    # computed with it, once).
    shared_checks: Counter[Constraint] = Counter(c for cond in set(conditions) for c in set(cond))

    w = _Writer()
    body: list[str] = []
    w.lines = body
    for key, flag in flags.items():
        k = w.const("K", key)
        if key not in live:
            w.emit(1, f"out[{k}] = False")
            continue
        p = w.const("P", f"{key}:")
        rollout = int(flag.rollout_percentage)
        by_user = flag.stickiness is Stickiness.user
        if not flag.rules:
            if rollout <= 0:
                w.emit(1, f"out[{k}] = False")
            elif by_user:
                hashed = "True" if rollout >= NORMALIZER else f"H({p} + user_id, 0, False) % 100 < {rollout}"
                w.emit(1, f"out[{k}] = ({hashed}) if user_id else False")
            else:
                hashed = "True" if rollout >= NORMALIZER else f"H({p} + org_id, 0, False) % 100 < {rollout}"
                w.emit(1, f"out[{k}] = {hashed}")
            continue
        # One expression: the first rule that includes the caller, else the base rollout. Each
        # operand is a bool (the last one too), so the answer is one.
        tests: list[str] = []
        hash_uses = {"bo": 0, "bu": 0}  # how many rules hash by org / by user so far
        for rule in flag.rules:
            share = int(rule.rollout_percentage)
            if share <= 0:
                continue  # includes no one: its condition cannot change the answer
            condition = _condition_expression(w, rule.constraints, shared_conditions, shared_checks)
            if share >= NORMALIZER:
                tests.append(f"({condition})")
                continue
            local, sticky = ("bu", "rule_user") if rule.stickiness is Stickiness.user else ("bo", "rule_org")
            fresh = f"({local} := H({p} + {sticky}, 0, False) % 100)"
            bucket = fresh if not hash_uses[local] else f"({local} if {local} >= 0 else {fresh})"
            hash_uses[local] += 1
            tests.append(f"({condition} and {sticky} and {bucket} < {share})")
        base_local, base_id = ("bu", "user_id") if by_user else ("bo", "org_id")
        if rollout <= 0:
            base = "False"
        elif rollout >= NORMALIZER:
            base = "bool(user_id)" if by_user else "True"
        else:
            bucket = f"H({p} + {base_id}, 0, False) % 100"
            if hash_uses[base_local]:
                same = "user_id == rule_user" if by_user else "org_id == rule_org"
                bucket = f"({base_local} if {base_local} >= 0 and {same} else {bucket})"
            base = f"({bucket} < {rollout} if user_id else False)" if by_user else f"{bucket} < {rollout}"
        for local, count in hash_uses.items():
            if count > 1 or (count and local == base_local and 0 < rollout < NORMALIZER):
                w.emit(1, f"{local} = -1")  # read before it may have been hashed
        w.emit(1, f"out[{k}] = " + " or ".join([*tests, base]))

    head: list[str] = []
    w.lines = head
    w.emit(0, "def answers(org_id, user_id, facts, mine):")
    w.emit(1, "out = {}")
    if any(f.rules for f in live.values()):
        w.emit(1, "if facts is None:")
        w.emit(2, "facts = Facts(org_id=org_id, user_id=user_id)")
        w.emit(1, "flat = facts.flat")
        w.emit(1, "rule_org, rule_user = facts.org_id, facts.user_id")
        for name, local in w.fields.items():
            w.emit(1, f"{local} = flat.get({w.const('F', name)})")
        if w.memos:
            w.emit(1, " = ".join(w.memos) + " = None")
    tail: list[str] = []
    w.lines = tail
    w.emit(1, "if mine:")  # an override decides a live flag (archived and the kill switch come first)
    w.emit(2, "for key, override in mine.items():")
    w.emit(3, f"if key in {w.const('L', frozenset(live))}:")
    w.emit(4, "out[key] = override.enabled")
    w.emit(1, "return out")
    source = "\n".join([*head, *body, *tail]) + "\n"
    namespace = w.namespace
    exec(compile(source, "<keel flags answer map>", "exec"), namespace)
    answers: AnswerMap = namespace["answers"]
    return answers, source
