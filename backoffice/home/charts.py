"""Charts drawn on the server as inline SVG: no script, no CDN, nothing for the CSP to refuse.

Presentation attributes only (no ``style=``: the pages' CSP allows nonce'd style elements, not
attributes). Every bar and point carries ``data-series``, ``data-category`` and ``data-value`` (the
raw figure) and a ``<title>`` the browser shows on hover; each chart has its table of figures too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 78, 12, 30, 42
PALETTE = ("#1d6fa5", "#e08a1e", "#3c9a5f", "#b0413e", "#7a5ca8", "#7f8c8d", "#c7a41a", "#2aa3a3")


@dataclass(frozen=True)
class Series:
    key: str  # stable, for tests and data-series
    label: str  # shown in the legend
    values: Sequence[float]
    color: str = ""


def _nice_max(value: float) -> float:
    """A round top for the axis: 1, 2, 2.5 or 5 times a power of ten at or above *value*."""
    if value <= 0:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _frame(name: str, title: str, top: float, fmt: Callable[[float], str], series: Sequence[Series],
           width: int, height: int) -> list[str]:
    plot_h = height - TOP - BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(name)}" '
           f'viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>"]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{width - RIGHT}" y2="{y:.1f}" stroke="#d8dde3"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#55606e">'
                   f"{escape(fmt(top * i / 4))}</text>")
    x = LEFT
    for s in series:
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{s.color}"/>')
        out.append(f'<text x="{x + 16}" y="16" font-size="12" fill="#1d2430">{escape(s.label)}</text>')
        x += 28 + 7 * len(s.label)
    return out


def _colored(series: Sequence[Series]) -> list[Series]:
    return [s if s.color else Series(s.key, s.label, s.values, PALETTE[i % len(PALETTE)]) for i, s in enumerate(series)]


def _x_labels(categories: Sequence[str], left: float, step: float, height: int) -> list[str]:
    every = max(1, len(categories) // 12)
    return [f'<text x="{left + step * (i + 0.5):.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" font-size="11" '
            f'fill="#55606e">{escape(c)}</text>' for i, c in enumerate(categories) if i % every == 0]


def _mark(tag: str, geometry: str, s: Series, category: str, value: float, fmt: Callable[[float], str]) -> str:
    """One bar or point: its raw figure in data-* attributes and a hover title."""
    return (f'<{tag} {geometry} fill="{s.color}" data-series="{escape(s.key)}" data-category="{escape(category)}" '
            f'data-value="{value}"><title>{escape(s.label)} — {escape(category)} : {escape(fmt(value))}</title></{tag}>')


def _finish(out: list[str], categories: Sequence[str], step: float, height: int) -> Markup:
    out += _x_labels(categories, LEFT, step, height)
    out.append("</svg>")
    return Markup("".join(out))


MAX_BAR = 56  # one insurer, one group: a bar, not a wall


def bar_chart(name: str, title: str, categories: Sequence[str], series: Sequence[Series], *,
              fmt: Callable[[float], str], stacked: bool = False, integer: bool = False, width: int = WIDTH,
              height: int = HEIGHT) -> Markup:
    """Bars per category: side by side, or *stacked*; *integer* counts keep whole-number gridlines."""
    series = _colored(series)
    n = max(len(categories), 1)
    if stacked:
        peak = max((sum(s.values[i] for s in series) for i in range(len(categories))), default=0)
    else:
        peak = max((v for s in series for v in s.values), default=0)
    top = _nice_max(peak)
    if integer:  # four gridlines of whole numbers
        top = max(4, -(-int(top) // 4) * 4)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = plot_w / n
    out = _frame(name, title, top, fmt, series, width, height)
    for i, category in enumerate(categories):
        base = 0.0
        for j, s in enumerate(series):
            value = s.values[i]
            h = plot_h * max(value, 0) / top
            if stacked:
                w = min(step * 0.7, MAX_BAR)
                x, y = LEFT + step * (i + 0.5) - w / 2, TOP + plot_h - plot_h * base / top - h
                base += max(value, 0)
            else:
                w = min(step * 0.8 / len(series), MAX_BAR)
                x, y = LEFT + step * (i + 0.5) - w * len(series) / 2 + w * j, TOP + plot_h - h
            out.append(_mark("rect", f'x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}"', s, category, value,
                             fmt))
    return _finish(out, categories, step, height)


def line_chart(name: str, title: str, categories: Sequence[str], series: Sequence[Series], *,
               fmt: Callable[[float], str], width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """A line per series, a point per category."""
    series = _colored(series)
    n = max(len(categories), 1)
    top = _nice_max(max((v for s in series for v in s.values), default=0))
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = plot_w / n
    out = _frame(name, title, top, fmt, series, width, height)
    for s in series:
        points = [(LEFT + step * (i + 0.5), TOP + plot_h - plot_h * max(v, 0) / top) for i, v in enumerate(s.values)]
        out.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2" '
                   f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        for (x, y), category, value in zip(points, categories, s.values):
            out.append(_mark("circle", f'cx="{x:.1f}" cy="{y:.1f}" r="3.5"', s, category, value, fmt))
    return _finish(out, categories, step, height)
