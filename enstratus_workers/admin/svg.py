"""Charts drawn on the server as inline SVG: nothing is fetched from anywhere, no script draws them.

Two shapes, all the pages need: a line chart (values per minute, on a linear or a log scale)
and a timeline (bars between two times: a job's attempts). Colours come from CSS classes
(``style.css``), so a chart is only geometry and escaped text. Each series and bar carries its
figures in ``data-`` attributes, which the tests read.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Callable, Sequence

from .strictbody import printable

WIDTH, HEIGHT = 640, 190
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 24


@dataclass(frozen=True)
class Series:
    """One line: its name (shown in the legend), CSS class, and a value per x (None: no value)."""

    name: str
    css: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Bar:
    """One row of a timeline: its label, where it starts and ends (ms), CSS class, tooltip."""

    label: str
    start_ms: int
    end_ms: int
    css: str
    title: str


def escape(text) -> str:
    """Text of the database (action names are user input) made safe for the page."""
    return html.escape(printable(str(text)))


def _f(x: float) -> str:
    return f"{x:.1f}"


def _nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``x`` (at least 1)."""
    if x <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(x))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= x)


def _scale(series: Sequence[Series], log: bool) -> tuple[Callable[[float], float], list[float]]:
    """Value -> 0..1 of the plot's height, and the ticks to label."""
    values = [v for s in series for v in s.values if v is not None]
    if not log:
        top = _nice_ceiling(max(values, default=0))
        return (lambda v: v / top), [0.0, top / 2, top] if top % 2 == 0 else [0.0, top]
    positive = [v for v in values if v > 0] or [0.01]
    lo = 10 ** math.floor(math.log10(min(positive)))
    hi = 10 ** math.ceil(math.log10(max(positive)))
    hi = hi * 10 if hi <= lo else hi
    span = math.log10(hi / lo)
    ticks = [lo * 10 ** i for i in range(round(span) + 1)]
    return (lambda v: math.log10(max(v, lo) / lo) / span), ticks


def line_chart(chart_id: str, title: str, series: Sequence[Series], x_labels: dict[int, str], *,
               log: bool = False, y_label: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """An SVG line chart of ``series`` (all the same length), x labelled at the given indexes."""
    n = max((len(s.values) for s in series), default=1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    fraction, ticks = _scale(series, log)

    def x(i: int) -> float:
        return LEFT + plot_w * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - fraction(v))

    parts = [f'<svg id="{escape(chart_id)}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for t in ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_f(y(t))}" y2="{_f(y(t))}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{_f(y(t) + 4)}" text-anchor="end">{escape(y_label(t))}</text>')
    for i, label in x_labels.items():
        parts.append(f'<text class="tick" x="{_f(x(i))}" y="{HEIGHT - 6}" text-anchor="middle">{escape(label)}</text>')
    for s in series:
        total = sum(v for v in s.values if v is not None)
        parts.append(f'<g class="series {escape(s.css)}" data-series="{escape(s.name)}" data-total="{total:g}">')
        for run in _runs(s.values):
            if len(run) == 1:
                i, v = run[0]
                parts.append(f'<circle cx="{_f(x(i))}" cy="{_f(y(v))}" r="2.5"/>')
            else:
                points = " ".join(f"{_f(x(i))},{_f(y(v))}" for i, v in run)
                parts.append(f'<polyline points="{points}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive values that are not None, with their indexes."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [r for r in runs if r]


def timeline(chart_id: str, title: str, bars: Sequence[Bar], *, row_h: int = 22, left: int = 84) -> str:
    """An SVG timeline: a row per bar (labelled in the ``left`` margin), on one time axis from
    the first start to the last end."""
    start = min((b.start_ms for b in bars), default=0)
    end = max((b.end_ms for b in bars), default=start)
    span = max(end - start, 1)
    plot_w = WIDTH - left - RIGHT
    height = TOP + row_h * len(bars) + BOTTOM
    parts = [f'<svg id="{escape(chart_id)}" class="chart timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for row, b in enumerate(bars):
        top = TOP + row * row_h
        x0 = left + plot_w * (b.start_ms - start) / span
        w = max(plot_w * (b.end_ms - b.start_ms) / span, 2.0)   # an instant still shows
        parts.append(f'<text class="tick" x="{left - 6}" y="{top + row_h - 8}" text-anchor="end">{escape(b.label)}</text>'
                     f'<rect class="bar {escape(b.css)}" x="{_f(x0)}" y="{top + 3}" width="{_f(w)}" '
                     f'height="{row_h - 6}" data-start="{b.start_ms}" data-end="{b.end_ms}">'
                     f'<title>{escape(b.title)}</title></rect>')
    parts.append(f'<text class="tick" x="{left}" y="{height - 6}">0</text>'
                 f'<text class="tick" x="{WIDTH - RIGHT}" y="{height - 6}" text-anchor="end">'
                 f'{escape(f"+{span / 1000:.3f} s")}</text></svg>')
    return "".join(parts)
