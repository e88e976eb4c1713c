"""The org health report for account managers: a self-contained HTML page (inline SVG charts, a
sortable table, reasons in words; nothing fetched from the network), and the same rows as CSV/JSON."""

from __future__ import annotations

import csv
import html
import io
import json
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from warehouse import queries

LABEL_COLORS = {"healthy": "#1a7f37", "watch": "#b58105", "at_risk": "#cf222e"}
CSV_COLUMNS = [
    "organization_id", "name", "score", "label", "wau_now", "wau_4w_ago", "wau_trend", "mau",
    "active_members", "seat_utilization", "billing_status", "owner_changes_30d", "key_churn_30d",
    "days_since_last_event", "webhook_attempts_7d", "webhook_success_rate_7d",
    "webhook_endpoints_disabled_30d", "reasons",
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


def _sparkline(points: list[int], width: int = 220, height: int = 48) -> str:
    points = points or [0, 0]  # no activity yet: a flat line at zero, not a missing chart
    top = max(max(points), 1)
    step = width / max(len(points) - 1, 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 4 - (v / top) * (height - 8):.1f}" for i, v in enumerate(points)
    )
    area = f"0,{height} {coords} {width:.1f},{height}"
    return (
        f'<svg class="chart wau" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="weekly active users, last {len(points)} days: {points[0]} to {points[-1]}">'
        f'<polygon points="{area}" fill="#ddf4ff"/>'
        f'<polyline points="{coords}" fill="none" stroke="#0969da" stroke-width="2"/></svg>'
    )


def _seat_bar(used: int | None, capacity: int | None, width: int = 160) -> str:
    capacity = capacity or 0
    used = used or 0
    share = min(used / capacity, 1.0) if capacity else 0.0
    color = "#1a7f37" if share >= 0.5 else "#b58105" if share >= 0.3 else "#cf222e"
    return (
        f'<svg class="chart seats" width="{width}" height="18" role="img" '
        f'aria-label="{used} of {capacity} seats used">'
        f'<rect width="{width}" height="18" rx="3" fill="#eaeef2"/>'
        f'<rect width="{share * width:.1f}" height="18" rx="3" fill="{color}"/>'
        f'<text x="6" y="13" font-size="11" fill="#1f2328">{used} / {capacity}</text></svg>'
    )


def render_html(path: Path) -> str:
    rows = report_rows(path)
    as_of = queries.as_of(path)
    series = queries.wau_series(path)
    seats = {r["organization_id"]: r for r in queries.seat_use(path).to_dicts()}
    wau: dict[str, list[int]] = {}
    for org_id, frame in series.group_by("organization_id"):
        wau[str(org_id[0])] = frame.sort("day")["wau"].to_list()
    counts = {label: sum(1 for r in rows if r["label"] == label) for label in LABEL_COLORS}
    body = []
    for r in rows:
        seat = seats.get(r["organization_id"], {})
        capacity = seat.get("seats_purchased") or seat.get("active_members")
        trend = "" if r["wau_trend"] is None else f"{r['wau_trend']:+.0%}"
        utilization = "" if r["seat_utilization"] is None else f"{r['seat_utilization']:.0%}"
        billing = r["billing_status"] or ""
        hook_rate = r.get("webhook_success_rate_7d")
        hooks = "" if hook_rate is None else f"{hook_rate:.0%} of {r['webhook_attempts_7d']}"
        reasons = "".join(f"<li>{html.escape(reason)}</li>" for reason in r["reasons"] or [])
        body.append(
            f'<tr><td data-sort="{html.escape(r["name"].lower())}"><strong>{html.escape(r["name"])}</strong>'
            f'<div class="id">{r["organization_id"]}</div></td>'
            f'<td data-sort="{r["score"]}"><span class="score" style="background:{LABEL_COLORS[r["label"]]}">'
            f"{r['score']}</span></td>"
            f'<td data-sort="{r["label"]}">{r["label"].replace("_", " ")}</td>'
            f'<td data-sort="{r["wau_now"]}">{r["wau_now"]} <span class="trend">{trend}</span>'
            f"<br>{_sparkline(wau.get(r['organization_id'], []))}</td>"
            f'<td data-sort="{r["seat_utilization"] or 0}">{utilization}<br>'
            f"{_seat_bar(seat.get('active_users'), capacity)}</td>"
            f'<td data-sort="{html.escape(billing)}">{html.escape(billing or "unknown")}</td>'
            f'<td data-sort="{-1 if hook_rate is None else hook_rate}">{hooks or "none"}</td>'
            f"<td><ul>{reasons}</ul></td></tr>"
        )
    summary = " · ".join(f"{counts[label]} {label.replace('_', ' ')}" for label in LABEL_COLORS)
    return PAGE.format(as_of=as_of.isoformat(), summary=summary, rows="\n".join(body), count=len(rows))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Org health — {as_of}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 32px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }}
.meta {{ color: #59636e; margin-bottom: 20px; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; vertical-align: top; padding: 10px 12px; border-bottom: 1px solid #d1d9e0; }}
th {{ cursor: pointer; user-select: none; background: #f6f8fa; position: sticky; top: 0; }}
th:after {{ content: " ↕"; color: #9198a1; }}
.score {{ color: white; border-radius: 12px; padding: 2px 10px; font-weight: 600; }}
.id {{ color: #59636e; font-size: 11px; font-family: ui-monospace, monospace; }}
.trend {{ color: #59636e; }}
ul {{ margin: 0; padding-left: 18px; }}
</style></head>
<body>
<h1>Organization health</h1>
<div class="meta">As of {as_of} · {count} organizations · {summary}
· WAU: weekly active users over the last 60 days;
seats: monthly active users against seats bought (or members); webhooks: outbound attempts answered 2xx.</div>
<table id="health">
<thead><tr><th>Organization</th><th>Score</th><th>Label</th><th>WAU (trend over 4 weeks)</th><th>Seat use</th>
<th>Billing</th><th>Webhooks (7 days)</th><th>Why</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<script>
document.querySelectorAll("#health th").forEach((th, column) => {{
  let ascending = true;
  th.addEventListener("click", () => {{
    const body = th.closest("table").tBodies[0];
    const rows = Array.from(body.rows);
    const key = (row) => row.cells[column].dataset.sort ?? row.cells[column].textContent;
    rows.sort((a, b) => {{
      const x = key(a), y = key(b);
      const nx = parseFloat(x), ny = parseFloat(y);
      const order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
      return ascending ? order : -order;
    }});
    ascending = !ascending;
    rows.forEach((row) => body.appendChild(row));
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


__all__ = ["pl", "render_csv", "render_html", "render_json", "write_report"]
