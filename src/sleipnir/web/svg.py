"""Line charts as inline SVG, drawn on the server: no JavaScript, no front-end build."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["PALETTE", "line_chart"]

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * 10**exponent >= value:
            return float(step * 10**exponent)
    return float(10.0 ** (exponent + 1))  # pragma: no cover - the loop always returns


def _label(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.0f}%" if value * 100 >= 10 or value == 0 else f"{value * 100:.1f}%"
    if value >= 100 or value == int(value):
        return f"{value:.0f}{unit}"
    return f"{value:.2g}{unit}"


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    since: float,
    until: float,
    title: str,
    unit: str = "",
    width: int = 720,
    height: int = 200,
    threshold: float | None = None,
) -> str:
    """An SVG line chart of ``series`` (name -> ``(epoch seconds, value)`` points).

    The x axis runs from ``since`` to ``until`` with UTC times; the y axis from 0
    to a round number above the largest value (or ``threshold``, drawn dashed).
    ``unit="%"`` shows ratios (0..1) as percentages. Names and the title are
    escaped, so queue and host names cannot inject markup.
    """
    left, right, top, bottom = 56, 12, 24, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in series.values() for _, v in points if math.isfinite(v)]
    y_max = _nice_max(max([*values, threshold or 0.0, 0.0]))
    if unit == "%":
        y_max = min(y_max, 1.0) if max(values, default=0.0) <= 1.0 else y_max
    span = max(until - since, 1e-9)

    def x(t: float) -> float:
        return left + (t - since) / span * plot_w

    def y(v: float) -> float:
        return top + plot_h - min(v, y_max) / y_max * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="14" class="chart-title">{escape(title)}</text>',
    ]
    lead = round(y_max / 10 ** math.floor(math.log10(y_max)))
    divisions = 5 if lead in (5, 10) else 4
    for i in range(divisions + 1):
        v = y_max * i / divisions
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(v):.1f}" y2="{y(v):.1f}"'
            ' class="grid"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(_label(v, unit))}</text>"
        )
    for i in range(5):
        t = since + span * i / 4
        clock = time.strftime("%H:%M", time.gmtime(t))
        anchor = ("start", "middle", "middle", "middle", "end")[i]
        out.append(
            f'<text x="{x(t):.1f}" y="{height - 8}" text-anchor="{anchor}" class="tick">'
            f"{clock}</text>"
        )
    if threshold is not None:
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(threshold):.1f}"'
            f' y2="{y(threshold):.1f}" class="threshold"/>'
        )
    legend_x = left + 8
    for i, (name, points) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        shown = [(t, v) for t, v in points if since <= t <= until and math.isfinite(v)]
        if shown:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in shown)
            last_t, last_v = shown[-1]
            out.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}">'
                f"<title>{escape(name)}</title></polyline>"
                f'<circle cx="{x(last_t):.1f}" cy="{y(last_v):.1f}" r="2.5" fill="{color}">'
                f"<title>{escape(name)}: {escape(_label(last_v, unit))}</title></circle>"
            )
        label = escape(name)
        out.append(
            f'<rect x="{legend_x}" y="{top + 4}" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{top + 13}" class="legend">{label}</text>'
        )
        legend_x += 24 + 7 * len(name)
    if not values:
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle"'
            ' class="empty">no data yet</text>'
        )
    out.append("</svg>")
    return "".join(out)
