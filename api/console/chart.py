"""The activity chart of the Org 360 page: DAU and WAU over the last days, as inline SVG markup.

Drawn on the server (no script, nothing for the Content-Security-Policy to allow); the page also
carries the numbers as a table for screen readers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

WIDTH, HEIGHT, PAD = 720, 180, 28


@dataclass(frozen=True, slots=True)
class Point:
    day: date
    dau: int
    wau: int


def _path(values: Sequence[int], top: int) -> str:
    if not values:
        return ""
    step = (WIDTH - 2 * PAD) / max(len(values) - 1, 1)
    scale = (HEIGHT - 2 * PAD) / max(top, 1)
    return " ".join(
        f"{'M' if i == 0 else 'L'}{PAD + i * step:.1f},{HEIGHT - PAD - v * scale:.1f}"
        for i, v in enumerate(values)
    )


def activity_svg(points: Sequence[Point]) -> str:
    """Two polylines (DAU, WAU) on one scale, with the top value and the first and last days."""
    top = max([p.wau for p in points] + [p.dau for p in points] + [1])
    first = points[0].day.isoformat() if points else ""
    last = points[-1].day.isoformat() if points else ""
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title">'
        f'<title id="chart-title">Daily and weekly active users, {first} to {last}</title>'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{HEIGHT - PAD}" class="axis"/>'
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end" class="tick">{top}</text>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" class="tick">{first}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" text-anchor="end" class="tick">{last}</text>'
        f'<path d="{_path([p.wau for p in points], top)}" class="wau"/>'
        f'<path d="{_path([p.dau for p in points], top)}" class="dau"/>'
        "</svg>"
    )
