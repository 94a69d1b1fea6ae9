"""The Pareto report, built only from what a study stored in its run folder.

``reports/<study>/`` receives: ``index.html`` (self-contained plotly: both fronts and the table of
front trials), ``pareto.csv`` and ``trials.csv`` (every trial with its settings and metrics) and
``summary.md`` (teacher figures, the front, the hypervolume and the objective definitions).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from autokd.pareto import OBJECTIVES, hypervolume, pareto_mask
from autokd.quantize import AGREEMENT_THRESHOLD
from autokd.record import StudyRecord, load_records
from autokd.students import FAMILIES

DEFINITIONS = """\
- **accuracy retention** = top-1 of the INT8 student on the test split / top-1 of the FP32 teacher on the same split.
  `retention_fp32` is the same ratio for the FP32 student; their gap (`quantization_loss`) is what INT8 cost.
- **compression ratio** = teacher weight bytes (FP32) / student weight bytes as deployed (INT8 weights with their
  per-channel scales and zero points, FP32 where a layer stays FP32), counted from element counts and bit-widths,
  not file sizes. `parameter_ratio` is the plain teacher/student parameter-count ratio.
- **latency** = median wall time of one forward pass of the deployed INT8 student on the named runtime
  (torch.utils.benchmark, at least 10 timed blocks after warm-up and after any compilation, measured under a lock that
  keeps other measurements and training off the cores), at the batch size and thread count below;
  `latency_iqr_ms` is its interquartile range. `latency_fp32_ms` is the same student in FP32 on the same runtime
  and `int8_speedup_vs_fp32` their ratio; `speedup_vs_teacher` = FP32 teacher latency, measured the same way on
  the same runtime, / student latency. `int8_fp32_agreement` = share of test images on which the INT8 and FP32
  students predict the same class.
- **Pareto front**: retention and compression maximised, latency minimised, over completed trials only (trials
  stopped early by the median rule or skipped by the pre-screen are PRUNED and never on it). **Hypervolume** against the
  reference point fixed when the study was created."""

SETTINGS = ["family", "stem", "width", "depth", "method", "distillation_share"]


class ReportError(RuntimeError):
    """There is no study to report on at the given path."""


@dataclass
class StudyResults:
    """A study's stored results as tables plus its fixed metadata."""

    name: str
    trials: pd.DataFrame
    teacher: dict
    reference_point: dict
    settings: dict
    executions: list[dict]


def trials_frame(records: StudyRecord) -> pd.DataFrame:
    """One row per stored trial: its state, sampled settings, metrics, flags and front membership."""
    rows = []
    for record in records.trials:
        attrs = record.attrs
        row = {"trial": record.number, "state": record.state}
        row.update(record.params)
        row.setdefault("method", None)
        if record.config is not None:  # trials stored before the stem choice were built with timm's own
            family = record.config.get("family")
            stem = record.config.get("stem", "imagenet")
            has_small = family in FAMILIES and FAMILIES.get(family).has_small_stem
            row["stem"] = stem if has_small else "own"
        if record.values is not None:
            row.update(zip(OBJECTIVES, record.values, strict=True))
        if record.result is not None:
            result = record.result.as_attrs()
            for key, value in result.items():
                if key not in ("config", "latency", "latency_fp32", "val_accuracy_per_epoch"):
                    row[key] = value
        if record.stop is not None:
            row["stopped_at_epoch"] = record.stop.epoch
            row["stopped_by"] = record.stop.stopped_by
            row["seconds_saved"] = record.stop.seconds_saved
        if record.prescreened is not None:
            row["prescreened_dominated_by"] = record.prescreened.get("dominated_by")
            row["prescreen_seconds"] = record.prescreened.get("prescreen_seconds")
        if record.error is not None:
            row["error"] = record.error
        row["worker"] = record.worker
        latency = attrs.get("latency", {})
        row["latency_batch_size"] = latency.get("batch_size")
        row["latency_threads"] = latency.get("threads")
        row["runtime"] = latency.get("runtime")
        row["runtime_version"] = latency.get("runtime_version")
        row["flags"] = "; ".join(_flags(attrs))
        history = (
            record.result.val_accuracy_per_epoch if record.result else attrs.get("val_accuracy_per_epoch", [])
        )
        row["val_accuracy_per_epoch"] = " ".join(f"{v:.4f}" for v in history)
        rows.append(row)
    trials = pd.DataFrame(rows)
    teacher = records.teacher
    if len(trials) and "latency_ms" in trials and teacher.get("latency"):
        trials["speedup_vs_teacher"] = teacher["latency"]["median_ms"] / trials["latency_ms"]
    trials["on_front"] = False
    complete = trials.index[trials["state"] == "COMPLETE"] if len(trials) else []
    if len(complete):
        points = trials.loc[complete, list(OBJECTIVES)].to_numpy(dtype=float)
        trials.loc[complete, "on_front"] = pareto_mask(points)
    return trials


def load_results(run_dir: Path) -> StudyResults:
    """Read a study's stored records into a DataFrame of trials (one row each) and its metadata."""
    try:
        records = load_records(run_dir)
    except FileNotFoundError as exc:
        raise ReportError(f"{exc}; run 'autokd search STUDY' first") from None
    except LookupError as exc:
        raise ReportError(str(exc)) from None
    return StudyResults(
        name=records.name,
        trials=trials_frame(records),
        teacher=records.teacher,
        reference_point=records.reference_point,
        settings=records.settings,
        executions=records.executions,
    )


def _flags(attrs: dict) -> list[str]:
    """What a reader must know about a trial's INT8 numbers (empty when nothing is wrong)."""
    flags = []
    if attrs.get("int8_slower_than_fp32"):
        flags.append(f"INT8 slower than FP32 ({attrs.get('int8_speedup_vs_fp32', float('nan')):.2f}x)")
    agreement = attrs.get("int8_fp32_agreement")
    if agreement is not None and agreement < AGREEMENT_THRESHOLD:
        flags.append(f"INT8/FP32 agreement {agreement:.3f} < {AGREEMENT_THRESHOLD}")
    return flags


def _hover(frame: pd.DataFrame) -> list[str]:
    texts = []
    for _, r in frame.iterrows():
        parts = [f"trial {r['trial']}"] + [
            f"{k}: {r[k]:.3g}" if isinstance(r[k], float) else f"{k}: {r[k]}"
            for k in SETTINGS
            if k in r and pd.notna(r[k])
        ]
        if pd.notna(r.get("parameters")):
            parts.append(f"params: {int(r['parameters']):,}")
        fp32 = f" (fp32 {r['retention_fp32']:.4f})" if pd.notna(r.get("retention_fp32")) else ""
        parts += [
            f"retention: {r['retention']:.4f}{fp32}",
            f"compression: {r['compression']:.1f}x",
            f"latency: {r['latency_ms']:.3f} ms",
        ]
        texts.append("<br>".join(parts))
    return texts


def _front_figure(done: pd.DataFrame, x: str, x_title: str, log_x: bool, floor: float) -> go.Figure:
    fig = go.Figure()
    for on_front, label, symbol in ((False, "dominated", "circle-open"), (True, "Pareto front", "star")):
        part = done[done["on_front"] == on_front]
        fig.add_trace(
            go.Scatter(
                x=part[x],
                y=part["retention"],
                mode="markers",
                name=label,
                marker={"symbol": symbol, "size": 13 if on_front else 9},
                text=_hover(part),
                hoverinfo="text",
            )
        )
    fig.add_hline(y=floor, line_dash="dot", annotation_text="retention floor")
    fig.update_layout(
        title=f"INT8 retention vs {x_title}",
        xaxis_title=x_title,
        yaxis_title="INT8 accuracy retention",
        template="plotly_white",
        height=480,
    )
    if log_x:
        fig.update_xaxes(type="log")
    return fig


FRONT_COLUMNS = [
    "trial",
    *SETTINGS,
    "parameters",
    "retention",
    "retention_fp32",
    "compression",
    "parameter_ratio",
    "qat",
    "latency_ms",
    "latency_iqr_ms",
    "latency_fp32_ms",
    "int8_speedup_vs_fp32",
    "speedup_vs_teacher",
    "int8_fp32_agreement",
    "weight_bytes",
    "artifact_bytes",
    "wall_seconds",
    "flags",
]


def _execution_line(run: dict) -> str:
    where = f"{run.get('backend')} backend on {run.get('host')}"
    if run.get("backend") == "ray":
        cluster = (
            "Ray started locally" if run.get("address") == "local" else f"Ray cluster {run.get('address')}"
        )
        where += f" ({cluster}, {run.get('cpus_per_trial', 0):g} CPU per trial)"
    elif run.get("storage") == "database":
        where += " (database storage shared with other machines)"
    return f"- {run.get('started')}: {where}, up to {run.get('concurrent_trials')} trial(s) at a time"


def latency_method(results: StudyResults) -> list[str]:
    """How latency was measured: runtime, batch and threads, serialisation, how many trials ran at once."""
    t_lat = results.teacher.get("latency", {})
    lines = [
        f"- {t_lat.get('runtime')} {t_lat.get('runtime_version', '')}, batch {t_lat.get('batch_size')}, "
        f"{t_lat.get('threads')} thread(s): median of at least 10 timed blocks after warm-up (torch.utils.benchmark)",
    ]
    policies = sorted(
        {run["latency_measurement"] for run in results.executions if "latency_measurement" in run}
    )
    lines += [f"- serialised: {policy}" for policy in policies] or [
        "- serialised: one measurement at a time (file lock)"
    ]
    lines += [_execution_line(run) for run in results.executions]
    return lines


def _markdown_table(frame: pd.DataFrame) -> str:
    columns = [c for c in FRONT_COLUMNS if c in frame]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame[columns].iterrows():
        cells = []
        for c in columns:
            v = row[c]
            if c in ("parameters", "weight_bytes", "artifact_bytes") and pd.notna(v):
                cells.append(f"{int(v):,}")
            else:
                cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _efficiency_lines(trials: pd.DataFrame, teacher: dict) -> list[str]:
    """What early stopping, the pre-screen and the teacher-output cache did for this study."""
    lines = []
    if "stopped_at_epoch" in trials:
        stopped = trials["stopped_at_epoch"].notna()
        saved = float(trials.loc[stopped, "seconds_saved"].fillna(0).sum())
        rules = ", ".join(sorted(trials.loc[stopped, "stopped_by"].dropna().unique()))
        lines.append(
            f"- early stopping ({rules}): {int(stopped.sum())} trial(s) stopped, about {saved:.0f} s of training saved"
        )
    if "prescreened_dominated_by" in trials:
        skipped = trials["prescreened_dominated_by"].notna()
        lines.append(
            f"- pre-screen: {int(skipped.sum())} student(s) skipped before training (dominated on size and latency)"
        )
    cache = teacher.get("cache")
    if cache:
        if not cache["enabled"]:
            lines.append("- teacher-output cache: off (teacher run on the fly in every trial)")
        else:
            live = (
                f"; stage(s) {cache['live_stages']} over the disk cap, computed on the fly"
                if cache["live_stages"]
                else ""
            )
            lines.append(
                f"- teacher-output cache: {cache['views']} view(s) per image, cached stages {cache['cached_stages']}{live}"
            )
    return lines


def _deployment_lines(done: pd.DataFrame, teacher_latency: dict) -> list[str]:
    """Backend and runtime of the study, and every completed trial whose INT8 numbers need a warning."""
    if not len(done) or "backend" not in done:
        return ["- no completed trials with deployment records"]
    lines = [
        f"- backend: {', '.join(sorted(done['backend'].dropna().unique()))}; runtime: "
        f"{', '.join(sorted(done['runtime'].dropna().unique()))}"
    ]
    if "qat" in done:
        lines.append(
            f"- quantization-aware training: {int(done['qat'].fillna(False).astype(bool).sum())} of {len(done)} trials"
        )
    batch = teacher_latency.get("batch_size")
    slower_mask = (
        done["int8_slower_than_fp32"].fillna(False).astype(bool) if "int8_slower_than_fp32" in done else []
    )
    slower = done[slower_mask] if len(slower_mask) else done.iloc[:0]
    if len(slower):
        listed = ", ".join(f"{int(r.trial)} ({r.int8_speedup_vs_fp32:.2f}x)" for r in slower.itertuples())
        lines.append(
            f"- **INT8 slower than the same student in FP32** on this runtime at batch {batch}: "
            f"{len(slower)} of {len(done)} trials: {listed}"
        )
    else:
        lines.append(f"- every INT8 student is at least as fast as its FP32 version at batch {batch}")
    if "int8_fp32_agreement" in done:
        low = done[done["int8_fp32_agreement"] < AGREEMENT_THRESHOLD]
        if len(low):
            listed = ", ".join(f"{int(r.trial)} ({r.int8_fp32_agreement:.3f})" for r in low.itertuples())
            lines.append(
                f"- **INT8/FP32 top-1 agreement below {AGREEMENT_THRESHOLD}**: {len(low)} of {len(done)} trials: {listed}"
            )
    return lines


def write_report(run_dir: Path, reports_root: Path) -> Path:
    """Write the report of the study in ``run_dir`` to ``reports_root/<study>/`` and return that folder."""
    results = load_results(run_dir)
    out = reports_root / results.name
    out.mkdir(parents=True, exist_ok=True)
    trials = results.trials
    trials.to_csv(out / "trials.csv", index=False)
    done = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    front = done[done["on_front"]].sort_values("compression", ascending=False) if len(done) else done
    front.to_csv(out / "pareto.csv", index=False)

    ref = results.reference_point
    hv = (
        hypervolume(
            done[list(OBJECTIVES)].to_numpy(dtype=float),
            (ref["retention"], ref["compression"], ref["latency_ms"]),
        )
        if len(done) and ref
        else 0.0
    )
    teacher = results.teacher
    objectives = results.settings.get("objectives", {})
    floor = objectives.get("retention_floor", 0.9)
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    t_lat = teacher.get("latency", {})
    summary = [
        f"# autokd report: {results.name}",
        "",
        "## Teacher",
        f"- model: {teacher.get('model')} ({teacher.get('parameters', 0):,} parameters, {teacher.get('weight_bytes', 0) / 1e6:.2f} MB FP32 weights)",
        f"- test top-1 (FP32): {teacher.get('test_accuracy', float('nan')):.4f}; val top-1: {teacher.get('val_accuracy', float('nan')):.4f}",
        f"- FP32 latency: {t_lat.get('median_ms', float('nan')):.3f} ms median (IQR {t_lat.get('iqr_ms', float('nan')):.3f}) "
        f"at batch {t_lat.get('batch_size')} with {t_lat.get('threads')} thread(s), {t_lat.get('runtime')}",
        f"- measured on: {t_lat.get('cpu')}, {t_lat.get('runtime')} {t_lat.get('runtime_version', '')}, "
        f"torch {t_lat.get('torch_version')}",
        "",
        "## INT8 deployment",
        *_deployment_lines(done, t_lat),
        "",
        "## Trials",
        "- " + ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
        if counts
        else "- none yet",
        f"- hypervolume: {hv:.4f} against reference point retention={ref.get('retention')}, compression={ref.get('compression')}, "
        f"latency_ms={ref.get('latency_ms', float('nan')):.3f}",
        f"- retention floor: {floor}; front members above it: {int((front['retention'] >= floor).sum()) if len(front) else 0}",
        *_efficiency_lines(trials, teacher),
        "",
        f"## Pareto front ({len(front)} trials)",
        "",
        _markdown_table(front) if len(front) else "(no completed trials)",
        "",
        "## How latency was measured",
        *latency_method(results),
        "",
        "## Objective definitions",
        DEFINITIONS,
        "",
    ]
    (out / "summary.md").write_text("\n".join(summary))

    figures = []
    if len(done):
        figures = [
            _front_figure(done, "compression", "compression ratio (x, log)", True, floor),
            _front_figure(
                done,
                "latency_ms",
                f"INT8 latency, ms (batch {t_lat.get('batch_size')}, {t_lat.get('threads')} thread(s))",
                True,
                floor,
            ),
        ]
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    table = (
        front[[c for c in FRONT_COLUMNS if c in front]].to_html(
            index=False, float_format=lambda v: f"{v:.4f}", border=0
        )
        if len(front)
        else "<p>No completed trials.</p>"
    )
    definitions_html = "".join(
        f"<li>{html.escape(line.lstrip('- ').replace('**', ''))}</li>" for line in DEFINITIONS.split("\n- ")
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autokd: {html.escape(results.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}</style></head><body>
<h1>autokd report: {html.escape(results.name)}</h1>
<p>Teacher {html.escape(str(teacher.get("model")))}: test top-1 {teacher.get("test_accuracy", float("nan")):.4f},
{teacher.get("parameters", 0):,} parameters, FP32 latency {t_lat.get("median_ms", float("nan")):.3f} ms.
Trials: {html.escape(", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))}. Hypervolume {hv:.4f}.</p>
{"".join(parts)}
<h2>Pareto front</h2>{table}
<h2>How latency was measured</h2><ul>{"".join(f"<li>{html.escape(line[2:])}</li>" for line in latency_method(results))}</ul>
<h2>Definitions</h2><ul>{definitions_html}</ul></body></html>"""
    (out / "index.html").write_text(page)
    return out
