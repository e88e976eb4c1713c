"""Flag evaluation: pure functions over immutable definitions, shared by the API, the CLI and the bench.

Nothing here touches the database, so an evaluation costs a dictionary lookup and one hash.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import mmh3

#: Unleash normalizes a hash to 1..100 for rollout percentages.
NORMALIZER = 100


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
    rollout = "rollout"  # the bucket was compared with the rollout percentage


def bucket(group_id: str, value: str) -> int:
    """Unleash's ``normalizedValue(value, groupId, 100)``: 1..100, stable for a (group, value) pair.

    ``murmurhash3_x86_32("{groupId}:{value}", seed 0) % 100 + 1`` on the unsigned 32-bit hash, so a
    Keel flag with key K answers as an Unleash flexibleRollout strategy with ``groupId = K``.
    """
    return mmh3.hash(f"{group_id}:{value}", 0, signed=False) % NORMALIZER + 1


@dataclass(frozen=True, slots=True)
class FlagDefinition:
    key: str
    enabled: bool
    archived: bool
    rollout_percentage: int
    stickiness: Stickiness


@dataclass(frozen=True, slots=True)
class Override:
    """A per-org decision by staff; ``reason`` is their note (shown to operators, not to customers)."""

    enabled: bool
    reason: str


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

    def explain(self) -> str:
        """One human sentence: why this answer (for `keel flags explain` and support)."""
        state = "on" if self.enabled else "off"
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


def evaluate(
    flag: FlagDefinition, *, org_id: str, user_id: str | None, override: Override | None
) -> Evaluation:
    """Archived, then the kill switch, then the org's override, then the rollout.

    ``org_id`` and ``user_id`` are hashed exactly as given: pass the canonical text of a UUID.
    """
    if flag.archived:
        return Evaluation(flag.key, False, Reason.archived)
    if not flag.enabled:
        return Evaluation(flag.key, False, Reason.kill_switch)
    if override is not None:
        return Evaluation(flag.key, override.enabled, Reason.override, override_reason=override.reason)
    if flag.stickiness is Stickiness.user:
        if not user_id:
            return Evaluation(flag.key, False, Reason.missing_user_id)
        value = user_id
    else:
        value = org_id
    n = bucket(flag.key, value)
    return Evaluation(
        flag.key, n <= flag.rollout_percentage, Reason.rollout, bucket=n,
        rollout_percentage=flag.rollout_percentage,
    )  # fmt: skip


#: How :meth:`FlagSnapshot.answers` decides a flag, fixed when the snapshot is made.
_OFF, _BY_ORG, _BY_USER = 0, 1, 2


def _how(flag: FlagDefinition) -> int:
    if flag.archived or not flag.enabled:
        return _OFF  # archived and the kill switch come before any override
    return _BY_USER if flag.stickiness is Stickiness.user else _BY_ORG


def _plan(flags: Mapping[str, FlagDefinition]) -> tuple[tuple[str, int, str, int], ...]:
    """(key, how, "{key}:", rollout) per flag: what :func:`evaluate` works out per call, once per snapshot."""
    return tuple((key, _how(flag), f"{key}:", flag.rollout_percentage) for key, flag in flags.items())


@dataclass(frozen=True, slots=True)
class FlagSnapshot:
    """Every definition and override at one ``version``; replaced whole, never mutated."""

    version: int
    #: Definitions by key, in key order.
    flags: Mapping[str, FlagDefinition]
    #: Overrides by organization id (canonical text), then by flag key.
    overrides: Mapping[str, Mapping[str, Override]] = field(default_factory=dict)
    _plan: tuple[tuple[str, int, str, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", _plan(self.flags))

    def evaluate(self, key: str, *, org_id: str, user_id: str | None = None) -> Evaluation | None:
        """One flag for one org, or ``None`` when no flag has this key."""
        flag = self.flags.get(key)
        if flag is None:
            return None
        return evaluate(
            flag, org_id=org_id, user_id=user_id, override=self.overrides.get(org_id, {}).get(key)
        )

    def evaluate_all(self, *, org_id: str, user_id: str | None = None) -> list[Evaluation]:
        """Every flag (archived ones answer off) for one org, in key order."""
        mine = self.overrides.get(org_id, {})
        return [
            evaluate(flag, org_id=org_id, user_id=user_id, override=mine.get(key))
            for key, flag in self.flags.items()
        ]

    def answers(self, *, org_id: str, user_id: str | None = None) -> dict[str, bool]:
        """``{key: enabled}`` for every flag: :meth:`evaluate_all` without the reasons.

        The endpoint's hot path (50 flags on every request), so it builds no :class:`Evaluation`
        and formats no strings: the precedence of :func:`evaluate`, on the plan made with the
        snapshot. ``tests/test_flag_evaluation.py`` holds the two to the same answers.
        """
        mine = self.overrides.get(org_id)
        hash32 = mmh3.hash
        out: dict[str, bool] = {}
        for key, how, prefix, rollout in self._plan:
            if how == _OFF:
                out[key] = False
            elif mine is not None and key in mine:
                out[key] = mine[key].enabled
            elif how == _BY_ORG:
                out[key] = hash32(prefix + org_id, 0, signed=False) % NORMALIZER + 1 <= rollout
            elif user_id:
                out[key] = hash32(prefix + user_id, 0, signed=False) % NORMALIZER + 1 <= rollout
            else:
                out[key] = False
        return out


EMPTY = FlagSnapshot(version=-1, flags={})
