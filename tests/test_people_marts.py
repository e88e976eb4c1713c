"""The people and organization-trait marts (dim_orgs, dim_people, int_org_trait_history,
feature_adoption_by_segment) and identities merged by alias in the active-user marts, each equal to
ground truth computed here in Python from what was written: first from a lake written by hand (plans
and traits changing over days), then from real Segment calls sent to the live server, exported and
built by the flows."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
from sqlalchemy import Engine

from pipelines.lake import Lake
from pipelines.tasks import export as export_tasks
from tests.harness import make_org
from tests.harness import write_lake_rows as write_rows
from warehouse.build import build_warehouse

AS_OF = date(2026, 3, 10)
DAYS = [date(2026, 3, d) for d in range(1, 11)]
FEATURES = ("report.exported", "dashboard.viewed", "invite.sent")


def noon(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 12, tzinfo=UTC)


def query(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


# -- ground truth, computed from the changes themselves ---------------------------------------------


def trait_as_of(changes: list[tuple[datetime, str, dict[str, Any]]], trait: str, day: date) -> str:
    """The trait's value on ``day``: the last group call up to that day's end that named it."""
    named = [(at, mid, t[trait]) for at, mid, t in changes if trait in t and at.date() <= day]
    if not named:
        return "(none)"
    value = max(named)[2]
    return value if isinstance(value, str) else json.dumps(value)


def person_of(aliases: dict[str, str], user_id: str | None, anonymous_id: str | None) -> str | None:
    """Who an event counts as: the alias target of its id (user id, else anonymous id), else its user id."""
    return aliases.get(user_id or anonymous_id or "", user_id)


def adoption_truth(
    orgs: dict[str, dict[str, Any]], segment_of: Any
) -> dict[tuple[date, str, str], tuple[int, int, int]]:
    """(day, event, value) -> (adopting orgs, segment orgs, people) for one dimension."""
    sizes: dict[tuple[date, str], int] = defaultdict(int)
    adopters: dict[tuple[date, str, str], set[str]] = defaultdict(set)
    people: dict[tuple[date, str, str], set[tuple[str, str]]] = defaultdict(set)
    for org_id, org in orgs.items():
        first = min(e["day"] for e in org["events"])
        for n in range((AS_OF - first).days + 1):
            sizes[(first + timedelta(days=n), segment_of(org, first + timedelta(days=n)))] += 1
        for e in org["events"]:
            key = (e["day"], e["event"], segment_of(org, e["day"]))
            adopters[key].add(org_id)
            who = person_of(org["aliases"], e["user_id"], e["anonymous_id"])
            if who is not None:
                people[key].add((org_id, who))
    return {k: (len(v), sizes[(k[0], k[2])], len(people[k])) for k, v in adopters.items()}


# -- a lake written by hand --------------------------------------------------------------------------


def hand_written_lake(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    lake = root / "lake"
    export_tasks.write_schemas(Lake.open(str(lake)))
    rng = random.Random(16)
    orgs: dict[str, dict[str, Any]] = {}
    for n in range(3):
        org_id = str(uuid.uuid4())
        # Plans by day: each org changes plan once, on a day of its own (the snapshot of that day).
        switch = DAYS[2 + 3 * n]
        orgs[org_id] = {
            "n": n,
            "external_id": f"acct-{n}" if n < 2 else None,
            "plans": {d: ("starter" if d < switch else ["pro", "enterprise", "pro"][n]) for d in DAYS},
            "group_calls": [],
            "people": {},
            "aliases": {},
            "events": [],
        }
    for org in orgs.values():
        # group calls: industry set early, changed by some; employees set later (a number).
        calls = [(noon(DAYS[0]) + timedelta(hours=org["n"]), {"industry": "retail"})]
        if org["n"] != 1:
            calls.append((noon(DAYS[4]), {"industry": "saas", "employees": 10 * (org["n"] + 1)}))
            calls.append(
                (noon(DAYS[4]) + timedelta(hours=3), {"industry": "fintech"})
            )  # same day: the last wins
        org["group_calls"] = [(at, f"g{i}", t) for i, (at, t) in enumerate(calls)]
        # People: p1..p4 identified; two anonymous ids, one aliased to p1, one to a user never identified.
        for p in ("p1", "p2", "p3", "p4"):
            first = rng.choice(DAYS[:5])
            org["people"][p] = {
                "traits": {"email": f"{p}@{org['n']}.example", "role": rng.choice(["admin", "viewer"])},
                "first": noon(first),
                "last": noon(first) + timedelta(days=rng.randint(0, 4)),
            }
        org["people"]["anon-a"] = {"traits": {"theme": "dark"}, "first": noon(DAYS[0]) - timedelta(hours=5),
                                   "last": noon(DAYS[1])}  # fmt: skip
        org["people"]["anon-b"] = {"traits": {}, "first": noon(DAYS[3]), "last": noon(DAYS[6])}
        org["people"]["anon-c"] = {
            "traits": {"theme": "light"},
            "first": noon(DAYS[2]),
            "last": noon(DAYS[2]),
        }
        org["aliases"] = {"anon-a": "p1", "anon-b": "p9"}
        # identify calls (id, traits): anon-a's count as p1's (aliased), anon-b's as p9's; the day's
        # last call wins; anon-c stays an anonymous person of its own.
        org["identifies"] = [
            (noon(DAYS[0]), "i0", "p1", {"role": "viewer", "seats": 1}),
            (noon(DAYS[1]), "i1", "anon-a", {"theme": "dark", "role": "guest"}),
            (noon(DAYS[3]), "i2", "p1", {"role": "admin"}),
            (noon(DAYS[3]) + timedelta(hours=2), "i3", "p1", {"role": "owner", "seats": 2 + org["n"]}),
            (noon(DAYS[2]), "i4", "p2", {"role": "viewer"}),
            (noon(DAYS[6]), "i5", "p2", {"role": "admin", "seats": 5}),
            (noon(DAYS[5]), "i6", "anon-b", {"utm": "ad"}),
            (noon(DAYS[2]), "i7", "anon-c", {"theme": "light"}),
        ]
        for i in range(40):
            d = rng.choice(DAYS)
            who = rng.choice(["p1", "p2", "p3", "p4", None])
            anon = rng.choice(["anon-a", "anon-b", "anon-c"]) if who is None else None
            org["events"].append(
                {
                    "message_id": f"e{i}",
                    "event": rng.choice(FEATURES),
                    "user_id": who,
                    "anonymous_id": anon,
                    "day": d,
                }
            )
    # Organizations exported by version: one version a day (its traits as of that day), written
    # newest first, so only the version numbers say which one is the state.
    for i, d in reversed(list(enumerate(DAYS))):
        write_rows(
            lake,
            "organizations",
            [{"lake_version": 10 * i + v["n"] + 1, "id": o, "name": f"Org {v['n']}", "slug": f"org-{v['n']}",
              "status": "active", "created_at": noon(DAYS[0]), "external_id": v["external_id"],
              "traits": json.dumps({"industry": trait_as_of(v["group_calls"], "industry", d)})}
             for o, v in orgs.items()],
            "",
            file=f"organizations-{len(DAYS) - i:020d}-{len(DAYS) - i + 1:020d}.parquet",
        )  # fmt: skip
    for d in DAYS:
        part = f"snapshot_date={d.isoformat()}"
        write_rows(
            lake,
            "subscriptions",
            [{"id": str(uuid.uuid5(uuid.NAMESPACE_URL, o)), "organization_id": o, "stripe_subscription_id": f"sub_{v['n']}",
              "plan": v["plans"][d], "status": "active", "seats": 5, "unit_amount": 100, "currency": "usd",
              "created_at": noon(DAYS[0]), "synced_at": noon(d)}
             for o, v in orgs.items()],
            part,
        )  # fmt: skip
    last = f"snapshot_date={AS_OF.isoformat()}"
    # People exported by version: an older version of each (stale traits) and the latest.
    for version, stale in ((2, False), (1, True)):
        write_rows(
            lake,
            "people",
            [{"lake_version": version, "organization_id": o, "user_id": p,
              "traits": json.dumps({"stale": True} if stale else x["traits"]), "first_seen_at": x["first"],
              "last_seen_at": x["last"], "anonymous": p.startswith("anon-")}
             for o, v in orgs.items() for p, x in v["people"].items()],
            "",
            file=f"people-{version:020d}-{version + 1:020d}.parquet",
        )  # fmt: skip
    write_rows(
        lake,
        "identity_aliases",
        [{"organization_id": o, "previous_id": a, "user_id": u, "message_id": f"a-{a}", "timestamp": noon(DAYS[0])}
         for o, v in orgs.items() for a, u in v["aliases"].items()],
        last,
    )  # fmt: skip
    by_day: dict[date, list[dict[str, Any]]] = defaultdict(list)
    seq = 0
    for o, v in orgs.items():
        for at, mid, traits in v["group_calls"]:
            seq += 1
            by_day[at.date()].append({"seq": seq, "organization_id": o, "message_id": mid, "user_id": "p1",
                                      "traits": json.dumps(traits), "timestamp": at, "received_at": at})  # fmt: skip
    for d, rows in by_day.items():
        write_rows(lake, "org_trait_changes", rows, f"date={d.isoformat()}")
    identified: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for o, v in orgs.items():
        for at, mid, who, traits in v["identifies"]:
            seq += 1
            identified[at.date()].append({"seq": seq, "organization_id": o, "message_id": mid, "user_id": who,
                                          "traits": json.dumps(traits), "timestamp": at, "received_at": at})  # fmt: skip
    for d, rows in identified.items():
        write_rows(lake, "person_trait_changes", rows, f"date={d.isoformat()}")
    events: dict[date, list[dict[str, Any]]] = defaultdict(list)
    seq = 0
    for o, v in orgs.items():
        for e in v["events"]:
            seq += 1
            events[e["day"]].append({"ingest_seq": seq, "organization_id": o, "message_id": e["message_id"],
                                     "event": e["event"], "user_id": e["user_id"], "anonymous_id": e["anonymous_id"],
                                     "timestamp": noon(e["day"]), "received_at": noon(e["day"])})  # fmt: skip
    for d, rows in events.items():
        write_rows(lake, "events", rows, f"date={d.isoformat()}")
    return lake, orgs


def test_people_and_trait_marts_equal_ground_truth_from_a_hand_written_lake(tmp_path: Path) -> None:
    lake, orgs = hand_written_lake(tmp_path)
    warehouse = tmp_path / "warehouse.duckdb"
    build_warehouse(str(lake), warehouse, as_of=AS_OF)

    # dim_orgs: external_id, the plan of the current subscription on the as-of date, latest traits.
    dim_orgs = {
        r[0]: r[1:]
        for r in query(warehouse, "SELECT organization_id, external_id, plan, traits FROM dim_orgs")
    }
    assert dim_orgs == {
        o: (
            v["external_id"],
            v["plans"][AS_OF],
            json.dumps({"industry": trait_as_of(v["group_calls"], "industry", AS_OF)}),
        )
        for o, v in orgs.items()
    }

    # dim_people: one row per person, anonymous ids merged into the user an alias named.
    expected_people = {}
    for o, v in orgs.items():
        persons: dict[str, list[str]] = defaultdict(list)
        for p in v["people"]:
            persons[v["aliases"].get(p, p)].append(p)
        for person, ids in persons.items():
            own = v["people"].get(person)
            latest = own if own is not None else max((v["people"][i] for i in ids), key=lambda x: x["last"])
            expected_people[(o, person)] = (
                latest["traits"],
                min(v["people"][i]["first"] for i in ids),
                max(v["people"][i]["last"] for i in ids),
                sorted(i for i in ids if i != person),
            )
    actual_people = {
        (r[0], r[1]): (json.loads(r[2]), r[3], r[4], r[5])
        for r in query(
            warehouse,
            "SELECT organization_id, user_id, traits, first_seen_at, last_seen_at, merged_ids FROM dim_people",
        )
    }
    assert actual_people == expected_people
    # Anonymous: known by an anonymous id that no alias merged into a user.
    assert {
        (o, p)
        for o, p, anonymous in query(warehouse, "SELECT organization_id, user_id, anonymous FROM dim_people")
        if anonymous
    } == {(o, "anon-c") for o in orgs}

    # Person traits as of each day, read from the validity ranges; a person's merged ids' calls are theirs.
    for o, v in orgs.items():
        calls: dict[str, list[tuple[datetime, str, dict[str, Any]]]] = defaultdict(list)
        for at, mid, who, traits in v["identifies"]:
            calls[v["aliases"].get(who, who)].append((at, mid, traits))
        for d in DAYS:
            as_of = {
                (r[0], r[1]): r[2]
                for r in query(
                    warehouse,
                    "SELECT user_id, trait, value FROM int_person_trait_history WHERE organization_id = ?"
                    " AND keel_valid_on(valid_from, valid_to, ?)",
                    o,
                    d,
                )
            }
            truth = {
                (person, trait): trait_as_of(changes, trait, d)
                for person, changes in calls.items()
                for trait in {t for _, _, traits in changes for t in traits}
            }
            assert as_of == {k: v for k, v in truth.items() if v != "(none)"}, (o, d)
            # All of a person's traits as of the day, as docs/warehouse.md shows analysts.
            (one,) = query(
                warehouse,
                "SELECT json_group_object(trait, value) FROM int_person_trait_history"
                " WHERE organization_id = ? AND user_id = 'p1' AND keel_valid_on(valid_from, valid_to, ?)",
                o,
                d,
            )
            assert json.loads(one[0]) == {t: x for (p, t), x in truth.items() if p == "p1" and x != "(none)"}
    assert ("p9" in {p for _, p in actual_people}) and not {"anon-a", "anon-b"} & {
        p for _, p in actual_people
    }

    # Org traits as of each day, read from the validity ranges.
    for o, v in orgs.items():
        for d in DAYS:
            for trait in ("industry", "employees"):
                got = query(
                    warehouse,
                    "SELECT value FROM int_org_trait_history WHERE organization_id = ? AND trait = ?"
                    " AND keel_valid_on(valid_from, valid_to, ?)",
                    o,
                    trait,
                    d,
                )
                assert (got[0][0] if got else "(none)") == trait_as_of(v["group_calls"], trait, d), (
                    o,
                    trait,
                    d,
                )

    # Feature adoption by plan (that day's plan) and by each org trait (as of that day).
    dimensions = {
        "plan": lambda org, d: org["plans"][d],
        "trait:industry": lambda org, d: trait_as_of(org["group_calls"], "industry", d),
        "trait:employees": lambda org, d: trait_as_of(org["group_calls"], "employees", d),
    }
    for dimension, segment_of in dimensions.items():
        actual = {
            (r[0], r[1], r[2]): (r[3], r[4], r[5])
            for r in query(
                warehouse,
                "SELECT day, event, value, adopting_orgs, segment_orgs, users FROM feature_adoption_by_segment"
                " WHERE dimension = ?",
                dimension,
            )
        }
        assert actual == adoption_truth(orgs, segment_of), dimension

    # Active users count an anonymous id aliased to a user as that user, once.
    for o, v in orgs.items():
        daily: dict[date, set[str]] = defaultdict(set)
        for e in v["events"]:
            who = person_of(v["aliases"], e["user_id"], e["anonymous_id"])
            if who is not None:
                daily[e["day"]].add(who)
        mau = set().union(*daily.values())
        got = dict(query(warehouse, "SELECT day, dau FROM org_active_users WHERE organization_id = ?", o))
        assert {d: n for d, n in got.items() if n} == {d: len(s) for d, s in daily.items()}
        assert query(
            warehouse, "SELECT mau FROM org_active_users WHERE organization_id = ? AND day = ?", o, AS_OF
        ) == [(len(mau),)]
        assert "anon-c" not in mau and ("p9" in mau) == any(
            e["anonymous_id"] == "anon-b" for e in v["events"]
        )


# -- real Segment calls, exported and built by the flows ----------------------------------------------


#: The live test's alias calls: an anonymous id and an earlier user id, both now u-1.
ALIASED = {"anon-1": "u-1", "old-1": "u-1"}


def stored(call: dict[str, Any]) -> tuple[str, str | None]:
    """The event a Segment call is stored as (track keeps its name; the others are reserved names)
    and who it counts as (identities merged by ALIASED)."""
    event = call["event"] if call["type"] == "track" else "$" + call["type"]
    return event, ALIASED.get(call.get("userId") or call.get("anonymousId", ""), call.get("userId"))


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_marts_from_real_segment_calls_equal_what_was_sent(
    client: httpx.Client, engine: Engine, prefect_harness: None, pipeline_env: dict[str, Path]
) -> None:
    from pipelines.flows import build_warehouse_flow, export_lake

    today = datetime.now(UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=3)
    tier = f"tier_{uuid.uuid4().hex[:8]}"  # a trait no other test's organization has
    worlds = [make_org(client, engine, roles=("owner",)) for _ in range(2)]
    truth: dict[str, dict[str, Any]] = {}
    for n, world in enumerate(worlds):
        external = f"acct-{uuid.uuid4().hex[:10]}"
        answer = client.patch(
            f"/v1/orgs/{world.id}", json={"external_id": external}, headers=world.headers("owner")
        )
        assert answer.status_code == 200, answer.text
        at = [start + timedelta(days=d, hours=9) for d in range(4)]
        calls: list[dict[str, Any]] = [
            {"type": "identify", "anonymousId": "anon-1", "traits": {"theme": "dark"}, "timestamp": at[0].isoformat()},
            {"type": "track", "anonymousId": "anon-1", "event": "Report Exported", "timestamp": at[0].isoformat()},
            {"type": "track", "anonymousId": "anon-2", "event": "Report Exported", "timestamp": at[0].isoformat()},
            {"type": "identify", "userId": "old-1", "traits": {"email": "old@x.example"}, "timestamp": at[0].isoformat()},
            {"type": "track", "userId": "old-1", "event": "Invite Sent", "timestamp": at[0].isoformat()},
            {"type": "identify", "userId": "u-1", "traits": {"email": "u1@x.example"}, "timestamp": at[1].isoformat()},
            {"type": "alias", "previousId": "anon-1", "userId": "u-1", "timestamp": at[1].isoformat()},
            {"type": "alias", "previousId": "old-1", "userId": "u-1", "timestamp": at[1].isoformat()},
            {"type": "group", "userId": "u-1", "groupId": world.id, "traits": {tier: "gold" if n else "silver"},
             "timestamp": at[1].isoformat()},
            {"type": "track", "userId": "u-1", "event": "Report Exported", "timestamp": at[1].isoformat()},
            {"type": "identify", "userId": "u-2", "traits": {"email": "u2@x.example"}, "timestamp": at[2].isoformat()},
            {"type": "track", "userId": "u-2", "event": "Dashboard Viewed", "timestamp": at[2].isoformat()},
            {"type": "group", "userId": "u-1", "groupId": world.id, "traits": {tier: "gold"},
             "timestamp": at[3].isoformat()},
            {"type": "track", "userId": "u-1", "event": "Report Exported", "timestamp": at[3].isoformat()},
            {"type": "track", "anonymousId": "anon-1", "event": "Dashboard Viewed", "timestamp": at[3].isoformat()},
        ]  # fmt: skip
        for c in calls:
            c["messageId"] = str(uuid.uuid4())
        answer = client.post(
            "/segment/v1/batch",
            json={"batch": calls, "sentAt": datetime.now(UTC).isoformat()},
            headers=basic(world.ingest_key),
        )
        assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text
        truth[world.id] = {
            "external_id": external,
            "calls": calls,
            "tier": {1: "gold" if n else "silver", 3: "gold"},
        }

    export_lake()
    build_warehouse_flow(as_of=today.isoformat())
    warehouse = pipeline_env["warehouse"]

    for org_id, t in truth.items():
        dim = query(warehouse, "SELECT external_id, traits FROM dim_orgs WHERE organization_id = ?", org_id)
        assert len(dim) == 1 and dim[0][0] == t["external_id"] and json.loads(dim[0][1]).get(tier) == "gold"
        people = {
            r[0]: (json.loads(r[1]), r[2], r[3], r[4])
            for r in query(
                warehouse,
                "SELECT user_id, traits, first_seen_at, last_seen_at, merged_ids FROM dim_people WHERE organization_id = ?",
                org_id,
            )
        }
        # old-1 (a person of its own until the alias) and anon-1 (an anonymous person, made by its
        # identify) are u-1: one person, first seen when they were, with anon-1's traits too.
        assert set(people) == {"u-1", "u-2"}
        assert people["u-1"][3] == ["anon-1", "old-1"] and people["u-2"][3] == []
        assert people["u-1"][0] == {"email": "u1@x.example", "theme": "dark"}
        day_of = {c["messageId"]: datetime.fromisoformat(c["timestamp"]).date() for c in t["calls"]}
        assert people["u-1"][1].date() == start.date() and people["u-2"][
            1
        ].date() == start.date() + timedelta(days=2)
        # Active users: anon-1's and old-1's events count as u-1, anon-2's as no one.
        dau: dict[date, set[str]] = defaultdict(set)
        for c in t["calls"]:
            if who := stored(c)[1]:
                dau[day_of[c["messageId"]]].add(who)
        got = dict(
            query(warehouse, "SELECT day, dau FROM org_active_users WHERE organization_id = ?", org_id)
        )
        assert {d: n for d, n in got.items() if n} == {d: len(s) for d, s in dau.items()}
        assert query(
            warehouse, "SELECT mau FROM org_active_users WHERE organization_id = ? AND day = ?", org_id, today
        ) == [(2,)]

    # Adoption by the test's own trait: each day's value as of that day, both orgs counted.
    actual = {
        (r[0], r[1], r[2]): (r[3], r[4], r[5])
        for r in query(
            warehouse,
            "SELECT day, event, value, adopting_orgs, segment_orgs, users FROM feature_adoption_by_segment"
            " WHERE dimension = ? AND value <> '(none)'",
            f"trait:{tier}",
        )
    }
    expected: dict[tuple[date, str, str], tuple[set[str], set[tuple[str, str]]]] = defaultdict(
        lambda: (set(), set())
    )
    sizes: dict[tuple[date, str], int] = defaultdict(int)
    for org_id, t in truth.items():

        def value_on(d: date, t: dict[str, Any] = t) -> str | None:
            set_on = [k for k in t["tier"] if start.date() + timedelta(days=k) <= d]
            return t["tier"][max(set_on)] if set_on else None

        for k in range((today - start.date()).days + 1):
            v = value_on(start.date() + timedelta(days=k))
            if v:
                sizes[(start.date() + timedelta(days=k), v)] += 1
        for c in t["calls"]:
            if not value_on(day_of_call := datetime.fromisoformat(c["timestamp"]).date()):
                continue
            event, who = stored(c)
            key = (day_of_call, event, value_on(day_of_call) or "")
            expected[key][0].add(org_id)
            if who:
                expected[key][1].add((org_id, who))
    assert actual == {k: (len(o), sizes[(k[0], k[2])], len(p)) for k, (o, p) in expected.items()}
