"""Flag evaluation: pure functions over immutable definitions, shared by the API, the CLI and the bench.

Nothing here touches the database, so an evaluation costs a dictionary lookup and one hash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import mmh3

from api.flags.compiled import AnswerMap, compile_answers
from api.flags.targeting import CURRENT_TIME, Check, Constraint, Facts, compile_constraint, first_failing

#: Unleash normalizes a hash to 1..100 for rollout percentages.
NORMALIZER = 100
#: Unleash's seed for variant hashing (``normalizedVariantValue``); the normalizer is the total weight.
VARIANT_SEED = 86028157
#: Keel's variant weights add up to this (Unleash's convention: weights out of 1000).
VARIANT_WEIGHT_TOTAL = 1000


class Stickiness(enum.StrEnum):
    """Which id a flag's rollout hashes: the organization's, or the end user's."""

    org = "org"
    user = "user"


class Reason(enum.StrEnum):
    """Why a flag evaluated as it did, in precedence order. Stable: clients and exposure events use it."""

    archived = "archived"  # the flag is archived: off for everyone
    kill_switch = "kill_switch"  # `enabled` is false: off for everyone, overrides included
    override = "override"  # a per-org override decided
    missing_user_id = "missing_user_id"  # `user` stickiness and no user id: off
    rule = "rule"  # a rule's constraints all held and its rollout included the caller: on
    rollout = "rollout"  # the bucket was compared with the (base) rollout percentage


def bucket(group_id: str, value: str) -> int:
    """Unleash's ``normalizedValue(value, groupId, 100)``: 1..100, stable for a (group, value) pair.

    ``murmurhash3_x86_32("{groupId}:{value}", seed 0) % 100 + 1`` on the unsigned 32-bit hash, so a
    Keel flag with key K answers as an Unleash flexibleRollout strategy with ``groupId = K``.
    """
    return mmh3.hash(f"{group_id}:{value}", 0, signed=False) % NORMALIZER + 1


def variant_bucket(group_id: str, value: str, total: int) -> int:
    """Unleash's ``normalizedVariantValue``: 1..total, with the variant seed."""
    return mmh3.hash(f"{group_id}:{value}", VARIANT_SEED, signed=False) % total + 1


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    weight: int
    value: Any = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One targeting strategy: every constraint (its segments' first) holds, then its own rollout.

    ``constraints`` is what the rule holds once its segments are resolved (each segment's
    constraints carry the segment's name); the checks are compiled once, with the definition.
    """

    name: str
    constraints: tuple[Constraint, ...] = ()
    rollout_percentage: int = 100
    stickiness: Stickiness = Stickiness.org
    segments: tuple[str, ...] = ()
    checks: tuple[tuple[Constraint, Check], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple((c, compile_constraint(c)) for c in self.constraints))


@dataclass(frozen=True, slots=True)
class FlagDefinition:
    key: str
    enabled: bool
    archived: bool
    rollout_percentage: int
    stickiness: Stickiness
    #: Ordered: the first rule that includes the caller decides (Unleash's OR of strategies).
    rules: tuple[Rule, ...] = ()
    #: Weights add up to :data:`VARIANT_WEIGHT_TOTAL`; empty for a boolean flag.
    variants: tuple[Variant, ...] = ()

    def pick_variant(self, facts: Facts) -> tuple[Variant | None, int | None]:
        """The variant for the flag's stickiness (Unleash's variant hashing), and its bucket."""
        if not self.variants:
            return None, None
        total = sum(v.weight for v in self.variants)
        if total <= 0:
            return None, None
        sticky = facts.user_id if self.stickiness is Stickiness.user and facts.user_id else facts.org_id
        target = variant_bucket(self.key, sticky, total)
        counter = 0
        for variant in self.variants:
            if variant.weight == 0:
                continue
            counter += variant.weight
            if counter >= target:
                return variant, target
        return None, target

    def variant_named(self, name: str | None) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None) if name else None


@dataclass(frozen=True, slots=True)
class Override:
    """A per-org decision by staff; ``reason`` is their note (shown to operators, not to customers)."""

    enabled: bool
    reason: str
    #: The variant this org gets (a flag with variants), instead of the hashed one.
    variant: str | None = None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One flag's answer for one org (and user): what an exposure event will record."""

    key: str
    enabled: bool
    reason: Reason
    #: For ``rollout``: the caller's bucket (1..100) and the percentage it was compared with.
    bucket: int | None = None
    rollout_percentage: int | None = None
    #: For ``override``: the staff note given with it.
    override_reason: str | None = None
    #: For ``rule``: the rule that decided.
    rule: str | None = None
    #: The variant served (a flag with variants that is on), its value and its bucket (1..1000).
    variant: str | None = None
    value: Any = None
    variant_bucket: int | None = None
    #: Why each rule did not decide, in order: (rule name, the constraint that failed or the bucket).
    rules_failed: tuple[tuple[str, str], ...] = ()

    def explain(self) -> str:
        """One human sentence: why this answer (for `keel flags explain` and support)."""
        text = self._explain_state()
        if self.variant is not None:
            text += f"; variant {self.variant!r}" + (
                f" (bucket {self.variant_bucket} of {VARIANT_WEIGHT_TOTAL})" if self.variant_bucket else ""
            )
        if self.rules_failed and self.reason is not Reason.rule:
            text += "; " + "; ".join(f"rule {name!r} did not apply: {why}" for name, why in self.rules_failed)
        return text

    def _explain_state(self) -> str:
        state = "on" if self.enabled else "off"
        if self.reason is Reason.rule:
            shown = f"rule {self.rule!r} matched"
            if self.bucket is not None:
                shown += f", bucket {self.bucket} <= rollout {self.rollout_percentage}"
            return f"{state}: {shown}"
        if self.reason is Reason.archived:
            return f"{state}: the flag is archived"
        if self.reason is Reason.kill_switch:
            return f"{state}: the kill switch is off (enabled = false)"
        if self.reason is Reason.override:
            return f"{state}: override for this organization ({self.override_reason})"
        if self.reason is Reason.missing_user_id:
            return f"{state}: the flag is sticky by user and no user id was given"
        comparison = "<=" if self.enabled else ">"
        return f"{state}: bucket {self.bucket} {comparison} rollout {self.rollout_percentage}"


def _rule_bucket(flag_key: str, rule: Rule, facts: Facts) -> tuple[bool, int | None]:
    """Whether ``rule``'s rollout includes the caller, and the bucket compared (``None``: not hashed).

    0 and 100 need no id; a ``user``-sticky rollout in between without a user id includes no one.
    """
    if rule.rollout_percentage >= NORMALIZER:
        return True, None
    if rule.rollout_percentage <= 0:
        return False, None
    sticky = facts.user_id if rule.stickiness is Stickiness.user else facts.org_id
    if not sticky:
        return False, None
    n = bucket(flag_key, sticky)
    return n <= rule.rollout_percentage, n


def _with_variant(flag: FlagDefinition, result: Evaluation, facts: Facts, chosen: str | None) -> Evaluation:
    if not result.enabled or not flag.variants:
        return result
    variant = flag.variant_named(chosen)
    n: int | None = None
    if variant is None:
        variant, n = flag.pick_variant(facts)
    if variant is None:
        return result
    return Evaluation(
        result.key, True, result.reason, bucket=result.bucket, rollout_percentage=result.rollout_percentage,
        override_reason=result.override_reason, rule=result.rule, variant=variant.name, value=variant.value,
        variant_bucket=n, rules_failed=result.rules_failed,
    )  # fmt: skip


def evaluate(
    flag: FlagDefinition,
    *,
    org_id: str,
    user_id: str | None,
    override: Override | None,
    facts: Facts | None = None,
) -> Evaluation:
    """Archived, then the kill switch, then the org's override, then the rules in order, then the rollout.

    ``org_id`` and ``user_id`` are hashed exactly as given: pass the canonical text of a UUID.
    ``facts`` carries the fields rules read (Keel's org fields, the client's context); without
    it a rule sees only ``org.id`` and ``user.id``. A flag that is on serves a variant when it
    has variants: the override's, else the one Unleash's variant hashing picks.
    """
    if flag.archived:
        return Evaluation(flag.key, False, Reason.archived)
    if not flag.enabled:
        return Evaluation(flag.key, False, Reason.kill_switch)
    if facts is None:
        facts = Facts(org_id=org_id, user_id=user_id)
    if override is not None:
        result = Evaluation(flag.key, override.enabled, Reason.override, override_reason=override.reason)
        return _with_variant(flag, result, facts, override.variant)
    failed: list[tuple[str, str]] = []
    for rule in flag.rules:
        failing = first_failing(rule.checks, facts)
        if failing is not None:
            failed.append((rule.name, failing.describe()))
            continue
        included, n = _rule_bucket(flag.key, rule, facts)
        if included:
            result = Evaluation(
                flag.key, True, Reason.rule, bucket=n, rollout_percentage=rule.rollout_percentage,
                rule=rule.name, rules_failed=tuple(failed),
            )  # fmt: skip
            return _with_variant(flag, result, facts, None)
        failed.append(
            (
                rule.name,
                f"bucket {n} > rollout {rule.rollout_percentage}" if n is not None else "outside its rollout",
            )
        )
    if flag.stickiness is Stickiness.user:
        if not user_id:
            return Evaluation(flag.key, False, Reason.missing_user_id, rules_failed=tuple(failed))
        value = user_id
    else:
        value = org_id
    n = bucket(flag.key, value)
    result = Evaluation(
        flag.key, n <= flag.rollout_percentage, Reason.rollout, bucket=n,
        rollout_percentage=flag.rollout_percentage, rules_failed=tuple(failed),
    )  # fmt: skip
    return _with_variant(flag, result, facts, None)


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """Every definition and override at one ``version``; replaced whole, never mutated."""

    version: int
    #: Definitions by key, in key order.
    flags: Mapping[str, FlagDefinition]
    #: Overrides by organization id (canonical text), then by flag key.
    overrides: Mapping[str, Mapping[str, Override]] = field(default_factory=dict)
    _answer_map: AnswerMap = field(init=False, repr=False, compare=False)
    _answers_source: str = field(init=False, repr=False, compare=False)
    _variant_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _reads_the_clock: bool = field(init=False, repr=False, compare=False)
    _needs_org_facts: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "_reads_the_clock",
            any(c.field == CURRENT_TIME for f in self.flags.values() for r in f.rules for c in r.constraints),
        )
        answer_map, source = compile_answers(self.flags)
        object.__setattr__(self, "_answer_map", answer_map)
        object.__setattr__(self, "_answers_source", source)
        object.__setattr__(
            self,
            "_needs_org_facts",
            any(f.rules and f.enabled and not f.archived for f in self.flags.values()),
        )
        object.__setattr__(self, "_variant_keys", tuple(k for k, f in self.flags.items() if f.variants))

    def variant_answers(self, answers: Mapping[str, bool], *, org_id: str, facts: Facts) -> dict[str, str]:
        """``{key: variant}`` for the flags of ``answers`` that are on and have variants."""
        out: dict[str, str] = {}
        mine = self.overrides.get(org_id) or {}
        for key in self._variant_keys:
            if not answers.get(key):
                continue
            flag = self.flags[key]
            chosen = flag.variant_named(mine[key].variant) if key in mine else None
            if chosen is None:
                chosen, _n = flag.pick_variant(facts)
            if chosen is not None:
                out[key] = chosen.name
        return out

    @property
    def reads_the_clock(self) -> bool:
        """Whether some rule compares ``context.currentTime`` (the evaluation's time when absent)."""
        return self._reads_the_clock

    @property
    def needs_org_facts(self) -> bool:
        """Whether some live flag has a rule: only then is an org's facts worth resolving."""
        return self._needs_org_facts

    def evaluate(
        self, key: str, *, org_id: str, user_id: str | None = None, facts: Facts | None = None
    ) -> Evaluation | None:
        """One flag for one org, or ``None`` when no flag has this key."""
        flag = self.flags.get(key)
        if flag is None:
            return None
        return evaluate(
            flag,
            org_id=org_id,
            user_id=user_id,
            override=self.overrides.get(org_id, {}).get(key),
            facts=facts,
        )

    def evaluate_all(
        self, *, org_id: str, user_id: str | None = None, facts: Facts | None = None
    ) -> list[Evaluation]:
        """Every flag (archived ones answer off) for one org, in key order."""
        mine = self.overrides.get(org_id, {})
        if facts is None:
            facts = Facts(org_id=org_id, user_id=user_id)
        return [
            evaluate(flag, org_id=org_id, user_id=user_id, override=mine.get(key), facts=facts)
            for key, flag in self.flags.items()
        ]

    def answers(
        self, *, org_id: str, user_id: str | None = None, facts: Facts | None = None
    ) -> dict[str, bool]:
        """``{key: enabled}`` for every flag: :meth:`evaluate_all` without the reasons.

        The endpoint's hot path (50 flags on every request), so it builds no :class:`Evaluation`
        and formats no strings: the precedence of :func:`evaluate`, on the plan made with the
        snapshot. ``tests/test_flag_evaluation.py`` holds the two to the same answers.
        """
        return self._answer_map(org_id, user_id, facts, self.overrides.get(org_id))

    @property
    def answers_source(self) -> str:
        """The source of the compiled answer map (:mod:`api.flags.compiled`), for a reader."""
        return self._answers_source


EMPTY = FlagSnapshot(version=-1, flags={})
