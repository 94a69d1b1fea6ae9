"""The report's plotly figures: fronts that read without hovering, all three objectives, and progress.

Every figure is SVG (no WebGL), so it renders the same in any browser, headless ones included.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from autokd.pareto import OBJECTIVES, hypervolume

TEMPLATE = "plotly_white"
HEIGHT = 460


def log_ticks(values: pd.Series, suffix: str, fmt: str = "{:g}") -> dict:
    """Tick values and labels on a 1-2-5 ladder covering ``values``, e.g. ``100x, 200x, 500x``.

    Plotly's own log axis labels minor ticks with bare digits ("2 3 4 5"), which reads as a scale of
    its own; these label every tick in full.
    """
    positive = values[values > 0]
    if not len(positive):
        return {}
    low, high = math.floor(math.log10(positive.min())), math.ceil(math.log10(positive.max()))
    ticks = [m * 10**e for e in range(low, high + 1) for m in (1, 2, 5)]
    lo, hi = positive.min() / 1.5, positive.max() * 1.5
    ticks = [t for t in ticks if lo <= t <= hi] or [float(positive.min())]
    return {
        "tickvals": ticks,
        "ticktext": [fmt.format(t) + suffix for t in ticks],
        "minor": {"showgrid": False},
    }


def family_colours(families: list[str]) -> dict[str, str]:
    """One colour per student family, the same in every figure."""
    palette = qualitative.D3
    return {family: palette[i % len(palette)] for i, family in enumerate(sorted(families))}


def _hover(frame: pd.DataFrame) -> list[str]:
    texts = []
    for _, r in frame.iterrows():
        parts = [
            f"trial {r['trial']}: {r.get('family')} w={r.get('width', float('nan')):.2f} d={r.get('depth', float('nan')):.2f}"
        ]
        parts.append(f"method: {r.get('method')}")
        if pd.notna(r.get("parameters")):
            parts.append(f"params: {int(r['parameters']):,}")
        parts += [
            f"retention: {r['retention']:.4f}",
            f"compression: {r['compression']:.1f}x",
            f"latency: {r['latency_ms']:.3f} ms",
        ]
        texts.append("<br>".join(parts))
    return texts


def _scatter_by_family(fig: go.Figure, done: pd.DataFrame, x: str, y: str, colours: dict[str, str]) -> None:
    """Dominated trials as open circles and front trials as labelled stars, one colour per family."""
    for family in sorted(done["family"].dropna().unique()):
        part = done[done["family"] == family]
        for on_front in (False, True):
            points = part[part["on_front"] == on_front]
            if not len(points):
                continue
            fig.add_trace(
                go.Scatter(
                    x=points[x],
                    y=points[y],
                    mode="markers+text" if on_front else "markers",
                    name=f"{family} ({'front' if on_front else 'dominated'})",
                    legendgroup=family,
                    marker={
                        "symbol": "star" if on_front else "circle-open",
                        "size": 14 if on_front else 9,
                        "color": colours[family],
                    },
                    text=[str(t) for t in points["trial"]] if on_front else None,
                    textposition="top center",
                    hovertext=_hover(points),
                    hoverinfo="text",
                )
            )


def front_figure(
    done: pd.DataFrame, x: str, x_title: str, suffix: str, floor: float, colours: dict[str, str]
) -> go.Figure:
    """INT8 retention against one other objective (log axis), the retention floor drawn."""
    fig = go.Figure()
    _scatter_by_family(fig, done, x, "retention", colours)
    fig.add_hline(y=floor, line_dash="dot", annotation_text=f"retention floor {floor:g}")
    fig.update_layout(
        title=f"INT8 retention vs {x_title} (front trials labelled with their number)",
        xaxis_title=x_title,
        yaxis_title="INT8 accuracy retention",
        template=TEMPLATE,
        height=HEIGHT,
    )
    fig.update_xaxes(type="log", **log_ticks(done[x], suffix, "{:g}"))
    return fig


def objectives_figure(done: pd.DataFrame, teacher_latency_ms: float | None) -> go.Figure:
    """All three objectives in one view: compression × latency, coloured by retention, front labelled."""
    fig = go.Figure(
        go.Scatter(
            x=done["compression"],
            y=done["latency_ms"],
            mode="markers+text",
            text=[str(t) if f else "" for t, f in zip(done["trial"], done["on_front"], strict=True)],
            textposition="top center",
            marker={
                "size": [16 if f else 9 for f in done["on_front"]],
                "symbol": ["star" if f else "circle" for f in done["on_front"]],
                "color": done["retention"],
                "colorscale": "Viridis",
                "colorbar": {"title": "retention"},
                "line": {"width": 1, "color": "#333"},
            },
            hovertext=_hover(done),
            hoverinfo="text",
            name="trials",
        )
    )
    if teacher_latency_ms:
        fig.add_hline(y=teacher_latency_ms, line_dash="dot", annotation_text="FP32 teacher latency")
    fig.update_layout(
        title="All three objectives: smaller (right), faster (down), colour = retention; stars are the front",
        xaxis_title="compression ratio",
        yaxis_title="INT8 latency, ms",
        template=TEMPLATE,
        height=HEIGHT,
    )
    fig.update_xaxes(type="log", **log_ticks(done["compression"], "x"))
    fig.update_yaxes(type="log", **log_ticks(done["latency_ms"], " ms"))
    return fig


def hypervolume_history(done: pd.DataFrame, reference: tuple[float, float, float]) -> pd.DataFrame:
    """Hypervolume of the completed trials after each completion, with its trial number and wall time."""
    if not len(done) or "finished" not in done:
        return pd.DataFrame(columns=["trial", "minutes", "hypervolume"])
    ordered = done.sort_values("finished")
    start = pd.to_datetime(done["started"]).min()
    rows = []
    for i in range(1, len(ordered) + 1):
        part = ordered.iloc[:i]
        if "feasible" in part:  # the front, so its hypervolume, holds feasible students only
            part = part[part["feasible"].astype(bool)]
        rows.append(
            {
                "completed": i,
                "trial": int(ordered["trial"].iloc[i - 1]),
                "minutes": (pd.to_datetime(ordered["finished"].iloc[i - 1]) - start).total_seconds() / 60,
                "hypervolume": hypervolume(part[list(OBJECTIVES)].to_numpy(dtype=float), reference),
            }
        )
    return pd.DataFrame(rows)


def history_figure(history: pd.DataFrame, by: str) -> go.Figure:
    """Hypervolume against completed trials (``by="completed"``) or wall time (``by="minutes"``)."""
    fig = go.Figure(
        go.Scatter(
            x=history[by],
            y=history["hypervolume"],
            mode="lines+markers",
            line={"shape": "hv"},
            hovertext=[f"after trial {t}" for t in history["trial"]],
            name="hypervolume",
        )
    )
    title = "completed trials" if by == "completed" else "wall time since the first trial, minutes"
    fig.update_layout(
        title=f"Optimisation history: hypervolume against {title}",
        xaxis_title=title,
        yaxis_title="hypervolume",
        template=TEMPLATE,
        height=340,
        showlegend=False,
    )
    if by == "completed":
        fig.update_xaxes(dtick=max(1, int(np.ceil(len(history) / 12))))
    return fig
