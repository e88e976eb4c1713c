"""The schedules of flows.yaml in Prefect: serving them (``keel flows serve``) and reading back
each flow's last and next run (``keel flows list``)."""

from __future__ import annotations

import asyncio
import re
import signal
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

#: ``--schedule NAME=EVERY``: a number and a unit.
INTERVAL = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|h|d)$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
#: What ``flows list`` reads as a flow's last run: anything that has started or ended.
RUNS_COUNTED = 200
FINISHED_OR_RUNNING = ["RUNNING", "COMPLETED", "FAILED", "CRASHED", "CANCELLED", "CANCELLING", "PAUSED"]


@dataclass(frozen=True)
class Override:
    """A schedule given on the command line for one serve: an interval or a cron expression."""

    every: timedelta | None = None
    cron: str | None = None

    def describe(self) -> str:
        return f"every {_duration(self.every)}" if self.every is not None else f"cron {self.cron}"


def _duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_overrides(values: list[str], known: list[str]) -> dict[str, Override]:
    """``NAME=20s`` / ``NAME=5m`` / ``NAME='*/5 * * * *'``; raises ValueError naming what is wrong."""
    from prefect.client.schemas.schedules import CronSchedule

    overrides: dict[str, Override] = {}
    for item in values:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"--schedule {item!r} is not NAME=EVERY (20s, 5m, 2h, 1d) or NAME=CRON")
        if name not in known:
            raise ValueError(f"--schedule: no flow named {name!r}; known: {', '.join(sorted(known))}")
        interval = INTERVAL.match(value)
        if interval:
            every = timedelta(**{UNITS[interval["unit"]]: float(interval["n"])})
            if every < timedelta(seconds=1):
                raise ValueError(f"--schedule {item!r}: the interval must be at least 1s")
            overrides[name] = Override(every=every)
            continue
        try:
            CronSchedule(cron=value)
        except ValueError:
            raise ValueError(
                f"--schedule {item!r}: {value!r} is neither an interval (20s, 5m, 2h, 1d)"
                " nor a cron expression"
            ) from None
        overrides[name] = Override(cron=value)
    return overrides


def declared_crons(deployment: dict[str, Any]) -> list[str]:
    return [s["cron"] for s in deployment.get("schedules") or [] if "cron" in s]


def build_deployments(declared: list[dict[str, Any]], overrides: dict[str, Override]) -> list[Any]:
    """One Prefect deployment per flows.yaml entry, with its schedule or the override."""
    from pipelines import flows

    deployments = []
    for d in declared:
        flow = flows.FLOWS[d["name"]]
        override = overrides.get(d["name"])
        schedule: dict[str, Any]
        if override is not None and override.every is not None:
            schedule = {"interval": override.every}
        elif override is not None:
            schedule = {"cron": override.cron}
        else:
            crons = declared_crons(d)
            schedule = {"cron": crons} if crons else {}
        deployments.append(
            flow.to_deployment(
                name=d["name"],
                description=d.get("description"),
                parameters=d.get("parameters") or {},
                **schedule,
            )
        )
    return deployments


def serve(declared: list[dict[str, Any]], overrides: dict[str, Override], *, console: Console) -> None:
    """Register the deployments and execute their scheduled runs until SIGTERM or Ctrl-C, then stop
    cleanly: runs in flight are cancelled (the flows are idempotent), the schedules paused."""
    from prefect.runner import Runner

    deployments = build_deployments(declared, overrides)

    class QuietRunner(Runner):
        """Prefect's runner, stopped the same way by SIGTERM and SIGINT, at any moment: Prefect's
        own handler calls ``sys.exit`` from inside the signal handler when the runner has not
        started yet, which surfaces as a ``SystemExit`` traceback."""

        stop_requested = False

        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            self.stop_requested = True
            if self.started and not self.stopping and self._loop is not None:
                self.stopping = True
                self.execute_in_background(self.astop)

        async def cancel_all(self) -> None:
            """The runs in flight, cancelled together: Prefect cancels one after another, each
            waiting seconds for a process still starting to acknowledge, and a stop must stay
            short. The flows are idempotent, so a cancelled run loses nothing."""

            async def cancel(flow_run_id: Any) -> None:
                try:
                    flow_run = await self._client.read_flow_run(flow_run_id)
                    await self._cancellation_manager.cancel(flow_run, state_msg="keel flows serve stopped")
                except Exception:
                    self._logger.exception("could not cancel flow run %s", flow_run_id)

            await asyncio.gather(*(cancel(i) for i in self._process_manager.flow_run_ids()))

    runner = QuietRunner(pause_on_shutdown=True)

    async def main() -> None:
        from pipelines import flows

        for deployment in deployments:
            deployment_id = await runner.aadd_deployment(deployment)
            # Prefect looks a run's flow up here to call its on_cancellation hooks when it stops
            # runs in flight; unregistered, it re-imports the flow's file for each run (seconds each).
            runner._deployment_registry.register_flow(deployment_id, flows.FLOWS[deployment.name])
        started = asyncio.create_task(runner.start())
        while not runner.started and not started.done():  # noqa: ASYNC110 (Prefect's runner has no event)
            await asyncio.sleep(0.05)
        # Runner.start installed Prefect's SIGTERM handler on its way in; ours again, for both.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, runner.handle_sigterm)
        if runner.stop_requested and not runner.stopping:
            runner.stopping = True
            await runner.astop()
        await started

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, runner.handle_sigterm)
    for d in declared:
        override = overrides.get(d["name"])
        crons = declared_crons(d)
        line = (
            override.describe() + " (--schedule)"
            if override
            else (f"cron {crons[0]}" if crons else "on demand")
        )
        console.print(f"  {d['name']:<18} {line}")
    console.print(f"serving {len(deployments)} flows on their schedules; Ctrl-C stops")
    asyncio.run(main())
    console.print("flow schedules stopped")


# -- reading back ----------------------------------------------------------------------------------


class PrefectUnreachable(Exception):
    """The configured Prefect API did not answer."""


@dataclass
class FlowStatus:
    name: str
    description: str
    declared: str
    served: str | None = None
    paused: bool = False
    last_state: str | None = None
    last_time: datetime | None = None
    last_message: str | None = None
    #: ``scheduled`` (made by Prefect's scheduler) or ``by hand`` (``keel flows run``, ``keel dev``).
    last_origin: str | None = None
    #: Runs that started (up to the newest ``RUNS_COUNTED``): by the scheduler, and by hand.
    scheduled_runs: int = 0
    runs_by_hand: int = 0
    next_time: datetime | None = None

    def schedule_text(self) -> str:
        if self.served is None:
            return self.declared
        text = self.served if self.served == self.declared else f"{self.served} (flows.yaml: {self.declared})"
        return f"{text}, paused" if self.paused else text

    def last_run_text(self) -> str:
        if self.last_state is None:
            return "never"
        text = f"{self.last_state} {_when(self.last_time)} ({self.last_origin})"
        return (
            f"{text}\n{self.last_message}" if self.last_message and self.last_state != "Completed" else text
        )

    def next_run_text(self) -> str:
        if self.next_time is not None:
            return _when(self.next_time)
        return "paused (not serving)" if self.paused else "none scheduled"

    def runs_text(self) -> str:
        return f"{self.scheduled_runs} scheduled, {self.runs_by_hand} by hand"

    def as_json(self) -> dict[str, Any]:
        return {
            "flow": self.name, "description": self.description, "schedule": self.served or self.declared,
            "declared_schedule": self.declared, "paused": self.paused,
            "last_run": None if self.last_state is None else {
                "state": self.last_state, "time": _iso(self.last_time), "message": self.last_message,
                "origin": self.last_origin,
            },
            "next_run": _iso(self.next_time),
            "runs": {"scheduled": self.scheduled_runs, "by_hand": self.runs_by_hand},
        }  # fmt: skip


@dataclass
class Status:
    rows: list[FlowStatus]
    source: str


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "?"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _schedule_text(schedule: Any) -> str:
    if getattr(schedule, "interval", None) is not None:
        return f"every {_duration(schedule.interval)}"
    if getattr(schedule, "cron", None):
        return str(schedule.cron)
    return str(schedule)


def _run_time(run: FlowRun) -> datetime | None:
    state_time = run.state.timestamp if run.state else None
    return run.end_time or run.start_time or state_time or run.expected_start_time


def read_status(declared: list[dict[str, Any]], home: Path) -> Status:
    """Each flow's schedule, last run and next scheduled run, from the Prefect API in use; without
    one, from Prefect's database in ``home`` through a temporary server (history, nothing
    scheduled), or from flows.yaml alone when Prefect never ran here."""
    import os

    rows = [
        FlowStatus(d["name"], d.get("description", ""), ", ".join(declared_crons(d)) or "on demand")
        for d in declared
    ]
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url and not (home / "prefect.db").exists():
        return Status(rows, "no flow has run here yet (no Prefect database in " + str(home) + ")")
    try:
        asyncio.run(_fill(rows))
    except (OSError, RuntimeError) as exc:
        raise PrefectUnreachable(f"could not read runs from Prefect at {api_url or home}: {exc}") from None
    if api_url:
        return Status(rows, f"runs read from the Prefect API at {api_url}")
    return Status(rows, f"no Prefect server is running: past runs read from {home / 'prefect.db'}")


async def _fill(rows: list[FlowStatus]) -> None:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    names = [row.name for row in rows]
    try:
        async with get_client() as client:
            deployments = {
                d.name: d
                for d in await client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names))
                )
            }
            for row in rows:
                deployment = deployments.get(row.name)
                if deployment is not None:
                    row.served = (
                        ", ".join(_schedule_text(s.schedule) for s in deployment.schedules) or "on demand"
                    )
                    row.paused = bool(deployment.paused) or (
                        bool(deployment.schedules) and not any(s.active for s in deployment.schedules)
                    )
                last = await client.read_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[row.name])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType(s) for s in FINISHED_OR_RUNNING])
                        )
                    ),
                    sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                    limit=RUNS_COUNTED,
                )
                row.scheduled_runs = sum(1 for run in last if run.auto_scheduled)
                row.runs_by_hand = len(last) - row.scheduled_runs
                if last:
                    run = last[0]
                    row.last_state = run.state.name if run.state else "unknown"
                    row.last_time = _run_time(run)
                    row.last_message = (run.state.message or None) if run.state else None
                    row.last_origin = "scheduled" if run.auto_scheduled else "by hand"
                # A paused deployment has no next run, even if Prefect's scheduler inserted one
                # while the serve was pausing it (nothing runs it until the next serve).
                if deployment is not None and not row.paused:
                    upcoming = await client.read_flow_runs(
                        flow_run_filter=FlowRunFilter(
                            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                        ),
                        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                        limit=1,
                    )
                    if upcoming:
                        row.next_time = upcoming[0].expected_start_time
    except httpx.HTTPError as exc:
        raise RuntimeError(str(exc) or type(exc).__name__) from None
