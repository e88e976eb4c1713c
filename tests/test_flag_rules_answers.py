"""The answer map's inlined rules (FlagSnapshot.answers) and evaluate() give the same answers."""

from __future__ import annotations

import random

import pytest

from api.flags.evaluation import FlagDefinition, FlagSnapshot, Override, Rule, Stickiness, Variant
from api.flags.targeting import Constraint, Facts

pytestmark = pytest.mark.unit

PLANS = ("team", "business", "enterprise")


def random_flags(rng: random.Random, n: int) -> dict[str, FlagDefinition]:
    flags = {}
    for i in range(n):
        rules = tuple(
            Rule(
                name=f"r{j}",
                constraints=tuple(
                    rng.choice([
                        Constraint("org.plan", "IN", (rng.choice(PLANS),)),
                        Constraint("org.seats", rng.choice(["NUM_GT", "NUM_LTE"]), (str(rng.randint(1, 50)),)),
                        Constraint("org.traits.industry", "STR_STARTS_WITH", ("fin",), inverted=rng.random() < 0.3),
                        Constraint("context.country", "NOT_IN", ("NO", "SE")),
                        Constraint("user.id", "IN", ("u1", "u2", "u3")),
                    ])
                    for _ in range(rng.randint(0, 3))
                ),
                rollout_percentage=rng.choice([0, 30, 70, 100]),
                stickiness=rng.choice(list(Stickiness)),
            )
            for j in range(rng.randint(0, 2))
        )  # fmt: skip
        variants = (Variant("a", 600, 1), Variant("b", 400, 2)) if i % 4 == 0 else ()
        key = f"f{i}"
        flags[key] = FlagDefinition(
            key=key, enabled=rng.random() > 0.1, archived=rng.random() < 0.05,
            rollout_percentage=rng.choice([0, 10, 50, 100]), stickiness=rng.choice(list(Stickiness)),
            rules=rules, variants=variants,
        )  # fmt: skip
    return flags


@pytest.mark.parametrize("seed", range(5))
def test_answers_match_evaluate_all_with_rules(seed: int) -> None:
    rng = random.Random(seed)
    flags = random_flags(rng, 40)
    orgs = [f"org-{i}" for i in range(30)]
    overrides = {orgs[0]: {"f1": Override(True, "beta", None)}, orgs[1]: {"f4": Override(True, "x", "b")}}
    snapshot = FlagSnapshot(version=1, flags=flags, overrides=overrides)
    for org in orgs:
        user = rng.choice([None, "u1", "u7", "u9"])
        facts = Facts(
            org_id=org, user_id=user,
            org={"org.plan": rng.choice(PLANS), "org.seats": str(rng.randint(1, 60))},
            traits={"industry": rng.choice(["fintech", "health"])}, context={"country": rng.choice(["NO", "US"])},
        )  # fmt: skip
        results = snapshot.evaluate_all(org_id=org, user_id=user, facts=facts)
        answers = snapshot.answers(org_id=org, user_id=user, facts=facts)
        assert answers == {r.key: r.enabled for r in results}
        variants = snapshot.variant_answers(answers, org_id=org, facts=facts)
        assert variants == {r.key: r.variant for r in results if r.variant is not None}
