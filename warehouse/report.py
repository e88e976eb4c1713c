"""The org health report for account managers: a self-contained HTML page (inline SVG charts, a
sortable table, reasons in words; nothing fetched from the network), and the same rows as CSV/JSON.

The page only presents ``org_health``: the score, its signals and their reasons are the mart's.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from warehouse import queries, rules

#: The WAU chart's window: the same six weeks, ending at the as-of date, for every organization.
CHART_DAYS = 42
CHART_WIDTH, CHART_HEIGHT = 170, 40
SEAT_BAR_WIDTH = 150
# Text colours are chosen for WCAG AA contrast (4.5:1 or more) on white, and white on the badges.
LABEL_COLORS = {"healthy": "#1a7f37", "watch": "#9a6700", "at_risk": "#cf222e"}
RISK_COLOR, EXPANSION_COLOR = "#cf222e", "#6639ba"
CSV_COLUMNS = [
    "organization_id", "name", "score", "label", "wau_now", "wau_4w_ago", "wau_trend", "mau",
    "active_members", "seats", "seat_utilization", "over_seat_limit", "billing_status", "renewal_date",
    "trial_end", "open_discrepancies", "owner_changes_30d", "key_churn_30d", "days_since_last_event",
    "webhook_attempts_7d", "webhook_success_rate_7d", "webhook_endpoints_disabled_30d", "reasons",
]  # fmt: skip


def report_rows(path: Path) -> list[dict[str, Any]]:
    return queries.org_health(path).to_dicts()


def render_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "reasons": " ".join(row.get("reasons") or [])})
    return out.getvalue()


def render_json(rows: list[dict[str, Any]], as_of: date) -> str:
    return json.dumps({"as_of": as_of.isoformat(), "organizations": rows}, default=str)


def chart_window(as_of: date) -> tuple[date, date]:
    """The first and last day every WAU chart shows."""
    return as_of - timedelta(days=CHART_DAYS - 1), as_of


def _sparkline(days: list[tuple[date, int, bool]], start: date, end: date) -> str:
    """WAU on a date axis from ``start`` to ``end``: a line begins on its first day in the window
    (an organization younger than the window starts part-way along, it is not stretched). Days
    whose 7-day window the lake holds only part of are not drawn: they would ramp up from nothing."""
    width, height = CHART_WIDTH, CHART_HEIGHT
    span = max((end - start).days, 1)
    points = [(d, v) for d, v, complete in days if complete]
    top = max([v for _, v in points] + [1])

    def xy(day: date, value: int) -> str:
        return f"{(day - start).days / span * width:.1f},{height - 3 - value / top * (height - 8):.1f}"

    window = f"weekly active users from {start.isoformat()} to {end.isoformat()}"
    drawing, note = "", ""
    if points:
        coords = " ".join(xy(d, v) for d, v in points)
        first_x, last_x = coords.split(" ")[0].split(",")[0], coords.split(" ")[-1].split(",")[0]
        since = f" (from {points[0][0].isoformat()})" if points[0][0] > start else ""
        label = f"{window}{since}: {points[0][1]} to {points[-1][1]}"
        last_y = coords.split(" ")[-1].split(",")[1]
        drawing = (  # the dot marks the latest figure (and is all there is of a one-day line)
            f'<polygon points="{first_x},{height} {coords} {last_x},{height}" fill="#ddf4ff"/>'
            f'<polyline points="{coords}" fill="none" stroke="#0969da" stroke-width="2"/>'
            f'<circle cx="{last_x}" cy="{last_y}" r="2.5" fill="#0969da"/>'
        )
    elif days:  # active, but the lake does not hold a whole week yet
        label = f"{window}: the lake holds less than a week of this organization's activity"
        note = f'<div class="chart-note">less than a week in the lake (since {_date(days[0][0])})</div>'
    else:
        label = f"{window}: no activity"
        note = '<div class="chart-note">no activity in the lake</div>'
    return (
        f'<svg class="chart wau" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(label)}"><title>{html.escape(label)}</title>'
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" stroke="#d1d9e0"/>{drawing}</svg>'
        f'<div class="axis"><span class="axis-start">{start.isoformat()}</span>'
        f'<span class="axis-end">{end.isoformat()}</span></div>{note}'
    )


def _seat_bar(share: float | None) -> str:
    """Monthly active users against seats as a bar; past 100% the seat limit is a tick and the
    part beyond it is drawn in the expansion colour."""
    width = SEAT_BAR_WIDTH
    share = share or 0.0
    scale = max(share, 1.0)
    used = min(share, 1.0) / scale * width
    color = "#1a7f37" if share >= 0.5 else "#9a6700" if share >= 0.3 else RISK_COLOR
    parts = [
        f'<rect width="{width}" height="10" rx="2" fill="#eaeef2"/>',
        f'<rect width="{used:.1f}" height="10" rx="2" fill="{color}"/>',
    ]
    if share > 1.0:
        parts += [
            f'<rect x="{used:.1f}" width="{width - used:.1f}" height="10" rx="2" fill="{EXPANSION_COLOR}"/>',
            f'<line x1="{used:.1f}" y1="-2" x2="{used:.1f}" y2="12" stroke="#1f2328" stroke-width="2"/>',
        ]
    return (
        f'<svg class="chart seats" width="{width}" height="12" viewBox="0 -1 {width} 12" aria-hidden="true">'
        + "".join(parts)
        + "</svg>"
    )


def _seat_cell(r: dict[str, Any], seat: dict[str, Any]) -> str:
    share = r["seat_utilization"]
    capacity = seat.get("seats_purchased") or seat.get("active_members") or 0
    unit = "seats" if seat.get("seats_purchased") else "members"
    percent = "" if share is None else f" ({share:.0%})"
    lines = [
        f'<div class="seat-text">{seat.get("active_users") or 0} active users on {capacity} {unit}'
        f"{percent}</div>"
    ]
    lines.append(_seat_bar(share))
    if r["seats"] is not None:
        held = f"{r['active_members']} members hold {r['seats']} seats"
        if r["over_seat_limit"]:
            held = (
                f"{r['active_members']} members on {r['seats']} seats: "
                f'<strong class="expansion">{r["active_members"] - r["seats"]} over the limit</strong>'
            )
        lines.append(f'<div class="seat-text">{held}</div>')
    return "".join(lines)


def _billing_cell(r: dict[str, Any], as_of: date) -> str:
    status = r["billing_status"]
    if status is None:
        return '<span class="muted">no subscription</span>'
    lines = [html.escape(status.replace("_", " "))]
    renewal, trial = r["renewal_date"], r["trial_end"]
    if status == "trialing" and trial is not None:
        soon = 0 <= (trial - as_of).days <= 14
        lines.append(f'<span class="{"risk" if soon else "muted"}">trial ends {_date(trial)}</span>')
    if renewal is not None:
        past = renewal < as_of and not rules.subscription_is_ended(status)
        text = f"renewal date passed {_date(renewal)}" if past else f"renews {_date(renewal)}"
        lines.append(f'<span class="{"risk" if past else "muted"}">{text}</span>')
    if r["open_discrepancies"]:  # risks or expansion signals: the reasons say which
        n = r["open_discrepancies"]
        lines.append(f'<span class="muted">{n} open billing discrepanc{"y" if n == 1 else "ies"}</span>')
    return "<br>".join(lines)


ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


def _date(day: date) -> str:
    return f'<span class="date">{day.isoformat()}</span>'


def _words(text: str) -> str:
    """Escaped, with dates kept on one line."""
    return ISO_DATE.sub(lambda m: f'<span class="date">{m.group(0)}</span>', html.escape(text))


def _reasons(r: dict[str, Any]) -> str:
    signals = {s["reason"]: s for s in r["signals"] or []}
    items = []
    for reason in r["reasons"] or []:
        signal = signals.get(reason)
        if signal is None:
            items.append(f'<li class="ok">{_words(reason)}</li>')
        elif signal["kind"] == "expansion":
            items.append(f'<li class="expansion"><span class="tag">expansion</span>{_words(reason)}</li>')
        else:
            items.append(
                f'<li class="risk"><span class="tag">&minus;{signal["points"]}</span>{_words(reason)}</li>'
            )
    return "".join(items)


def render_html(path: Path) -> str:
    rows = report_rows(path)
    as_of = queries.as_of(path)
    start, end = chart_window(as_of)
    series = queries.wau_series(path, CHART_DAYS)
    seats = {r["organization_id"]: r for r in queries.seat_use(path).to_dicts()}
    wau: dict[str, list[tuple[date, int, bool]]] = {}
    for org_id, frame in series.group_by("organization_id"):
        ordered = frame.sort("day")
        wau[str(org_id[0])] = list(
            zip(
                ordered["day"].to_list(),
                ordered["wau"].to_list(),
                ordered["wau_complete"].to_list(),
                strict=True,
            )
        )
    counts = {label: sum(1 for r in rows if r["label"] == label) for label in LABEL_COLORS}
    body = []
    for r in rows:
        org_id = r["organization_id"]
        trend = "" if r["wau_trend"] is None else f" · {r['wau_trend']:+.0%} in 4 weeks"
        hook_rate = r.get("webhook_success_rate_7d")
        hooks = "none" if hook_rate is None else f"{hook_rate:.0%} of {r['webhook_attempts_7d']}"
        body.append(
            f'<tbody class="org" data-organization-id="{org_id}"><tr>'
            f'<td data-sort="{html.escape(r["name"].lower())}"><strong>{html.escape(r["name"])}</strong>'
            f'<div class="id">{org_id}</div></td>'
            f'<td data-sort="{r["score"]}"><span class="score" style="background:{LABEL_COLORS[r["label"]]}">'
            f'{r["score"]}</span><div class="label">{r["label"].replace("_", " ")}</div></td>'
            f'<td data-sort="{r["wau_now"]}"><div>{r["wau_now"]} now<span class="muted">{trend}</span></div>'
            f"{_sparkline(wau.get(org_id, []), start, end)}</td>"
            f'<td class="seats-cell" data-sort="{r["seat_utilization"] or 0}">'
            f"{_seat_cell(r, seats.get(org_id, {}))}</td>"
            f'<td data-sort="{html.escape(r["billing_status"] or "")}">{_billing_cell(r, as_of)}</td>'
            f'<td data-sort="{-1 if hook_rate is None else hook_rate}">{hooks}</td></tr>'
            f'<tr class="why"><td colspan="6"><ul class="reasons">{_reasons(r)}</ul></td></tr></tbody>'
        )
    summary = " · ".join(f"{counts[label]} {label.replace('_', ' ')}" for label in LABEL_COLORS)
    return PAGE.format(
        as_of=as_of.isoformat(),
        summary=summary,
        rows="\n".join(body),
        count=len(rows),
        window=f"{_date(start)} to {_date(end)}",
        weeks=CHART_DAYS // 7,
        risk=RISK_COLOR,
        expansion=EXPANSION_COLOR,
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Org health — {as_of}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; background: #ffffff;
  margin: 24px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
.meta {{ color: #59636e; margin-bottom: 16px; max-width: 70em; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
th, td {{ text-align: left; vertical-align: top; padding: 8px; }}
th {{ cursor: pointer; user-select: none; background: #f6f8fa; position: sticky; top: 0; font-size: 13px;
  border-bottom: 1px solid #d1d9e0; }}
th:after {{ content: " ↕"; color: #59636e; }}
th.organization {{ width: 22%; }} th.score-col {{ width: 72px; }} th.wau-col {{ width: 186px; }}
th.seats-col {{ width: 166px; }} th.hooks-col {{ width: 84px; }}
tbody.org {{ border-bottom: 1px solid #d1d9e0; }}
tr.why td {{ padding-top: 0; }}
.score {{ color: #ffffff; border-radius: 12px; padding: 2px 10px; font-weight: 600; }}
.label {{ margin-top: 4px; }}
.id {{ color: #59636e; font-size: 11px; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }}
.muted {{ color: #59636e; }}
.date {{ white-space: nowrap; }}
th .window {{ font-weight: normal; }}
.risk {{ color: {risk}; }}
.expansion {{ color: {expansion}; }}
.seat-text {{ color: #1f2328; font-size: 13px; }}
.seat-text .expansion {{ color: {expansion}; }}
svg.chart {{ display: block; margin: 4px 0; }}
.chart-note {{ color: #59636e; font-size: 11px; }}
.axis {{ display: flex; justify-content: space-between; width: 170px; color: #59636e; font-size: 11px; }}
ul.reasons {{ margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; }}
ul.reasons li {{ color: #1f2328; }}
ul.reasons .tag {{ font-size: 11px; font-weight: 600; border-radius: 8px; padding: 0 6px; margin-right: 6px;
  color: #ffffff; }}
ul.reasons li.risk .tag {{ background: {risk}; }}
ul.reasons li.expansion .tag {{ background: {expansion}; }}
ul.reasons li.ok {{ color: #1a7f37; }}
</style></head>
<body>
<h1>Organization health</h1>
<div class="meta">As of {as_of} · {count} organizations · {summary}.<br>
Weekly active users: the chart shows {window} (the last {weeks} weeks, the same dates for every
organization; one that started later starts part-way along). Seats: monthly active users against
seats bought (or members), and members holding seats against seats bought. Why: each risk with the
points it takes off the score; an expansion signal takes none.</div>
<table id="health">
<thead><tr><th class="organization">Organization</th><th class="score-col">Score</th>
<th class="wau-col">Weekly active users<br><span class="window">{window}</span></th>
<th class="seats-col">Seats</th>
<th>Billing</th><th class="hooks-col">Webhooks (7 days)</th></tr></thead>
{rows}
</table>
<script>
document.querySelectorAll("#health th").forEach((th, column) => {{
  let ascending = true;
  th.addEventListener("click", () => {{
    const table = th.closest("table");
    const groups = Array.from(table.tBodies);
    const cell = (group) => group.rows[0].cells[column];
    const key = (group) => cell(group).dataset.sort ?? cell(group).textContent;
    groups.sort((a, b) => {{
      const x = key(a), y = key(b);
      const nx = parseFloat(x), ny = parseFloat(y);
      const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
      return ascending ? order : -order;
    }});
    ascending = !ascending;
    groups.forEach((group) => table.appendChild(group));
  }});
}});
</script>
</body></html>
"""


def write_report(path: Path, out: Path, fmt: str = "html") -> Path:
    if fmt == "html":
        out.write_text(render_html(path))
    elif fmt == "csv":
        out.write_text(render_csv(report_rows(path)))
    elif fmt == "json":
        out.write_text(render_json(report_rows(path), queries.as_of(path)))
    else:
        raise ValueError(f"unknown report format {fmt!r}: use html, csv or json")
    return out


__all__ = ["chart_window", "render_csv", "render_html", "render_json", "write_report"]
