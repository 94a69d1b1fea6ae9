"""The Pareto report, built only from what a study stored in its run folder.

``reports/<study>/`` receives: ``index.html`` (self-contained plotly, opening with what to ship, then
the fronts, all three objectives in one view, the optimisation history and the tables), ``pareto.csv``
and ``trials.csv`` (every trial with every column) and ``summary.md`` (short enough for a terminal or a
pull request: what to ship, the front in a few columns, the counts and the objective definitions).
"""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autokd.config import STUDY_NAME, STUDY_NAME_RULE
from autokd.pareto import OBJECTIVES, hypervolume, pareto_mask
from autokd.quantize import AGREEMENT_THRESHOLD
from autokd.record import StudyRecord, load_records, run_epochs
from autokd.storage import JOURNAL
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


# A latency whose interquartile range exceeds this share of its median is flagged: the machine was busy
# while it was measured, and comparisons that rest on it (INT8 vs FP32, the front) may not hold.
NOISY_IQR_FRACTION = 0.25


class ReportError(RuntimeError):
    """There is no study to report on at the given path."""


@dataclass
class StudyResults:
    """A study's stored results as tables plus its fixed metadata."""

    name: str
    run_dir: Path
    trials: pd.DataFrame
    teacher: dict
    reference_point: dict
    settings: dict
    executions: list[dict]
    confirmations: dict = dataclasses.field(default_factory=dict)
    baselines: dict = dataclasses.field(default_factory=dict)


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
            row["skipped_because"] = record.prescreened.get(
                "reason", "dominated on size and latency by a completed student above the floor"
            )
        violated = [key for key, value in record.constraints.items() if value > 0]
        row["feasible"] = not violated
        if violated:
            row["violates"] = ", ".join(violated)
        if record.error is not None:
            row["error"] = record.error
        row["worker"] = record.worker
        row["started"], row["finished"] = record.started, record.finished
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
    # The front holds the students that meet the study's constraints (all of them when it has none).
    if len(complete):
        complete = trials.index[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
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
        run_dir=Path(run_dir),
        trials=trials_frame(records),
        teacher=records.teacher,
        reference_point=records.reference_point,
        settings=records.settings,
        executions=records.executions,
        confirmations=records.confirmations,
        baselines=records.baselines,
    )


def _search_epochs(results: StudyResults) -> int | None:
    return results.settings.get("budget", {}).get("epochs")


def _by_epochs(runs: list[dict], search_epochs: int | None) -> dict[int | None, list[dict]]:
    """Stored runs grouped by the epochs they trained (runs without the field: the search's budget)."""
    groups: dict[int | None, list[dict]] = {}
    for run in runs:
        groups.setdefault(run_epochs(run, search_epochs), []).append(run)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def over_seeds(runs: list[dict]) -> dict:
    """``seeds``, and retention and INT8 top-1 as mean and sample standard deviation (NaN for one seed),
    over stored runs of one setting."""
    columns = {"seeds": len(runs)}
    for key in ("retention", "int8_accuracy"):
        values = np.array([r[key] for r in runs], dtype=float)
        columns[f"{key}_mean"] = values.mean()
        columns[f"{key}_std"] = values.std(ddof=1) if len(values) > 1 else float("nan")
    return columns


def confirmed_front(results: StudyResults) -> pd.DataFrame:
    """One row per confirmed front point and training budget (``autokd confirm [--epochs N]``): retention
    and INT8 top-1 as mean and standard deviation over all its seeds at that budget (the search's run
    included at the search's own), whether it stays on the front recomputed on the means of that
    budget, and whether any of its runs fell below the retention floor."""
    floor = results.settings.get("objectives", {}).get("retention_floor", 0.9)
    search_epochs = _search_epochs(results)
    trials = results.trials
    rows = []
    groups = [
        (number, epochs, runs)
        for number, stored in sorted(results.confirmations.items(), key=lambda kv: int(kv[0]))
        for epochs, runs in _by_epochs(stored, search_epochs).items()
    ]
    for number, epochs, runs in groups:
        row = trials[trials["trial"] == int(number)]
        if not len(row) or not runs:
            continue
        first = row.iloc[0]
        search_run = {k: first[k] for k in ("retention", "int8_accuracy", "latency_ms")}
        own_budget = epochs == search_epochs
        every = [search_run, *runs] if own_budget else runs
        retention = np.array([r["retention"] for r in every], dtype=float)
        rows.append(
            {
                "trial": int(number),
                "epochs": epochs,
                "family": first.get("family"),
                "method": first.get("method"),
                **over_seeds(every),
                "compression": float(first["compression"]),
                "latency_ms": float(np.median([r["latency_ms"] for r in every])),
                # the confirmation runs (at the search's budget, the search's own run is the first)
                "below_floor": bool((retention[1 if own_budget else 0 :] < floor).any()),
            }
        )
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["on_front_of_means"] = False
        for _, group in frame.groupby("epochs", dropna=False):  # each budget's front on its own
            means = group[["retention_mean", "compression", "latency_ms"]].to_numpy(dtype=float)
            frame.loc[group.index, "on_front_of_means"] = pareto_mask(means)
    return frame


def baseline_comparison(results: StudyResults) -> pd.DataFrame:
    """One row per front point with baselines (``autokd confirm --baselines``): INT8 top-1 and
    retention as mean and standard deviation over the same seeds for the searched setting (the search's
    run and its confirmations) and for each baseline of the same architecture. ``margin`` is the
    searched mean's lead over the better baseline's, ``beats_baselines`` whether that lead exceeds the
    largest of the standard deviations compared."""
    from autokd.confirmation import BASELINE_VARIANTS

    confirmed = confirmed_front(results)
    search_epochs = _search_epochs(results)
    rows = []
    groups = [
        (number, epochs, {v: _by_epochs(stored.get(v, []), search_epochs).get(epochs) for v in stored})
        for number, stored in sorted(results.baselines.items(), key=lambda kv: int(kv[0]))
        for epochs in sorted(
            {run_epochs(r, search_epochs) for runs in stored.values() for r in runs},
            key=lambda e: (e is None, e or 0),
        )
    ]
    for number, epochs, variants in groups:
        searched = (
            confirmed[(confirmed["trial"] == int(number)) & (confirmed["epochs"] == epochs)]
            if len(confirmed)
            else confirmed
        )
        if not len(searched) or not all(variants.get(v) for v in BASELINE_VARIANTS):
            continue
        first = searched.iloc[0]
        row = {
            "trial": int(number),
            "epochs": epochs,
            "family": first["family"],
            "method": first["method"],
            "compression": first["compression"],
            "seeds": int(first["seeds"]),
            "searched_int8_mean": first["int8_accuracy_mean"],
            "searched_int8_std": first["int8_accuracy_std"],
            "searched_retention_mean": first["retention_mean"],
        }
        for variant in BASELINE_VARIANTS:
            accuracy = np.array([r["int8_accuracy"] for r in variants[variant]], dtype=float)
            retention = np.array([r["retention"] for r in variants[variant]], dtype=float)
            row[f"{variant}_seeds"] = len(accuracy)
            row[f"{variant}_int8_mean"] = accuracy.mean()
            row[f"{variant}_int8_std"] = accuracy.std(ddof=1) if len(accuracy) > 1 else float("nan")
            row[f"{variant}_retention_mean"] = retention.mean()
        best = max(row[f"{v}_int8_mean"] for v in BASELINE_VARIANTS)
        stds = [row["searched_int8_std"], *(row[f"{v}_int8_std"] for v in BASELINE_VARIANTS)]
        # one seed each has no spread to beat: "beats" stays False and the table says why
        spread = float("nan") if np.isnan(stds).all() else np.nanmax(stds)
        row["margin"] = row["searched_int8_mean"] - best
        row["largest_std"] = spread
        row["beats_baselines"] = bool(row["margin"] > spread)
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(mean: float, std: float, digits: int) -> str:
    """``mean ± std`` for a table; a figure from one seed has no spread, and says so."""
    if np.isnan(std):
        return f"{mean:.{digits}f} (one seed)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def baseline_table(frame: pd.DataFrame) -> pd.DataFrame:
    """:func:`baseline_comparison` as display strings, the columns the report shows."""
    from autokd.confirmation import BASELINE_TITLES

    def cell(r: dict, prefix: str) -> str:
        return mean_std(r[f"{prefix}_int8_mean"], r[f"{prefix}_int8_std"], 4)

    return pd.DataFrame(
        [
            {
                "trial": r["trial"],
                "epochs": r["epochs"],
                "family": r["family"],
                "x smaller": f"{r['compression']:.1f}x",
                "seeds": r["seeds"],
                "searched method": r["method"],
                "searched": cell(r, "searched"),
                **{title: cell(r, v) for v, title in BASELINE_TITLES.items()},
                "lead over the better baseline": f"{r['margin']:+.4f}",
                "lead > largest std": (
                    "n/a (one seed)"
                    if np.isnan(r["largest_std"])
                    else "yes"
                    if r["beats_baselines"]
                    else "no"
                ),
            }
            for r in frame.to_dict("records")
        ]
    )


BASELINES_NOTE = (
    "INT8 test top-1, mean ± std over the same seeds, of the same architecture trained with the searched "
    "settings, on hard labels alone, and with the literature's KD defaults."
)


def _baseline_lines(frame: pd.DataFrame) -> list[str]:
    if not len(frame):
        return []
    title = f"## Searched settings against the usual ones ({frame['trial'].nunique()} front points, autokd confirm --baselines)"
    return ["", title, "", BASELINES_NOTE, "", _markdown(baseline_table(frame))]


def _confirmed_lines(frame: pd.DataFrame, floor: float) -> list[str]:
    if not len(frame):
        return []
    lines = [
        "",
        f"## Confirmed over seeds ({frame['trial'].nunique()} front points, autokd confirm)",
        "",
        "| trial | epochs | family | method | seeds | retention (mean ± std) | INT8 top-1 (mean ± std) | x smaller | latency, ms | on front of means | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in frame.itertuples():
        flag = f"a confirmation run fell below the {floor:g} floor" if r.below_floor else ""
        lines.append(
            f"| {r.trial} | {r.epochs} | {r.family} | {r.method} | {r.seeds} | {mean_std(r.retention_mean, r.retention_std, 3)} | "
            f"{mean_std(r.int8_accuracy_mean, r.int8_accuracy_std, 4)} | {r.compression:.1f}x | {r.latency_ms:.3f} | "
            f"{'yes' if r.on_front_of_means else 'no'} | {flag} |"
        )
    return lines


def _noisy(latency: dict | None) -> float | None:
    """The IQR as a fraction of the median, when it is large enough to distrust the median."""
    if not latency or not latency.get("median_ms"):
        return None
    fraction = latency.get("iqr_ms", 0.0) / latency["median_ms"]
    return fraction if fraction > NOISY_IQR_FRACTION else None


def _flags(attrs: dict) -> list[str]:
    """What a reader must know about a trial's INT8 numbers (empty when nothing is wrong)."""
    flags = []
    for key, what in (("latency", "INT8"), ("latency_fp32", "FP32")):
        fraction = _noisy(attrs.get(key))
        if fraction is not None:
            flags.append(f"noisy {what} latency (IQR {fraction:.0%} of the median)")
        if (attrs.get(key) or {}).get("exclusive") is False:
            flags.append(f"{what} latency measured beside other work (a stopped process held the cores)")
    if attrs.get("int8_slower_than_fp32"):
        flags.append(f"INT8 slower than FP32 ({attrs.get('int8_speedup_vs_fp32', float('nan')):.2f}x)")
    agreement = attrs.get("int8_fp32_agreement")
    if agreement is not None and agreement < AGREEMENT_THRESHOLD:
        flags.append(f"INT8/FP32 agreement {agreement:.3f} < {AGREEMENT_THRESHOLD}")
    return flags


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
    if "skipped_because" in trials:
        skipped = trials["skipped_because"].notna()
        over = trials["skipped_because"].fillna("").str.startswith("over budget")
        lines.append(
            f"- skipped before training (measured untrained, never counted as trials): {int(skipped.sum())} "
            f"student(s), {int(over.sum())} of them over the size or latency budget, "
            f"{int((skipped & ~over).sum())} unable to extend the front at an optimistic retention"
        )
    if "violates" in trials:
        infeasible = trials["violates"].notna() & (trials["state"] == "COMPLETE")
        if infeasible.any():
            lines.append(
                f"- {int(infeasible.sum())} completed student(s) miss the study's constraints and are left off "
                "the front: "
                + ", ".join(
                    f"{int(n)} ({v})"
                    for n, v in zip(
                        trials.loc[infeasible, "trial"], trials.loc[infeasible, "violates"], strict=True
                    )
                )
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


# The columns a person decides from; trials.csv and pareto.csv keep every column.
DECISION_COLUMNS = {
    "trial": "trial",
    "family": "family",
    "width": "width",
    "depth": "depth",
    "method": "method",
    "retention": "retention (INT8)",
    "retention_fp32": "retention (FP32)",
    "size_kb": "size, KB",
    "compression": "x smaller",
    "latency_ms": "latency, ms",
    "speedup_vs_teacher": "x faster",
    "flags": "flags",
}
SHORT_COLUMNS = [
    "trial",
    "family",
    "method",
    "retention",
    "compression",
    "latency_ms",
    "speedup_vs_teacher",
    "flags",
]
INTEGER_COLUMNS = (
    "trial",
    "parameters",
    "weight_bytes",
    "artifact_bytes",
    "stopped_at_epoch",
    "latency_batch_size",
)


@dataclass(frozen=True)
class Recommendation:
    """A student worth shipping for one reason (smallest, fastest, best retention) above the floor."""

    reasons: tuple[str, ...]
    row: pd.Series
    export_command: str


def recommend(results: StudyResults, done: pd.DataFrame, floor: float) -> list[Recommendation]:
    """The smallest, the fastest and the best-retention completed students at or above the floor.

    A trial that is best on several counts appears once, with every reason.
    """
    eligible = done[done["retention"] >= floor] if len(done) else done
    if len(eligible) and "feasible" in eligible:
        eligible = eligible[eligible["feasible"].astype(bool)]  # within the study's constraints
    if not len(eligible):
        return []
    return [
        Recommendation(
            reasons=reasons,
            row=eligible.loc[index],
            export_command=f"autokd export {results.run_dir} --trial {int(eligible.loc[index, 'trial'])}",
        )
        for index, reasons in _picks(eligible, "retention").items()
    ]


def _picks(eligible: pd.DataFrame, retention: str) -> dict:
    """The rows of ``eligible`` that are the smallest, the fastest and the best on column ``retention``
    (ties broken by retention, then compression), each once with all its reasons: {index: reasons}."""
    order = {
        "smallest": eligible.sort_values(["compression", retention], ascending=[False, False]),
        "fastest": eligible.sort_values(["latency_ms", retention], ascending=[True, False]),
        "best retention": eligible.sort_values([retention, "compression"], ascending=[False, False]),
    }
    picks: dict = {}
    for reason, ranked in order.items():
        picks[ranked.index[0]] = (*picks.get(ranked.index[0], ()), reason)
    return picks


def confirmed_settings(results: StudyResults) -> pd.DataFrame:
    """One row per trial, training budget and setting retrained by ``autokd confirm`` (the searched
    setting, and each baseline with ``--baselines``): retention and INT8 top-1 as mean and standard
    deviation over its seeds (the search's own run included at the search's budget), the trial's
    architecture, size and latency (the median over all its runs, every setting's), and ``ship_seed``,
    the seed of its median-retention run among those that kept their weights (``None`` when none
    did), so the model exported scores what the mean says."""
    from autokd.confirmation import BASELINE_TITLES, SEARCHED, SETTINGS, setting_runs
    from autokd.storage import confirmation_dir
    from autokd.trial import STUDENT_WEIGHTS

    search_epochs = _search_epochs(results)
    trials = results.trials
    rows = []
    numbers = sorted({int(n) for n in [*results.confirmations, *results.baselines]})
    for number in numbers:
        row = trials[trials["trial"] == number] if len(trials) else trials
        if not len(row):
            continue
        first = row.iloc[0]
        latencies: list[float] = []
        for setting in SETTINGS:
            runs = setting_runs(results, number, setting)
            for epochs, group in _by_epochs(runs, search_epochs).items():
                kept = [
                    r
                    for r in sorted(group, key=lambda r: r["retention"])
                    if (
                        confirmation_dir(results.run_dir, number, setting, epochs, r["seed"])
                        / STUDENT_WEIGHTS
                    ).exists()
                ]
                if setting == SEARCHED and epochs == search_epochs:
                    group = [{k: first[k] for k in ("retention", "int8_accuracy", "latency_ms")}, *group]
                rows.append(
                    {
                        "trial": number,
                        "epochs": epochs,
                        "setting": setting,
                        "method": first.get("method") if setting == SEARCHED else BASELINE_TITLES[setting],
                        "family": first.get("family"),
                        "width": first.get("width"),
                        "depth": first.get("depth"),
                        **over_seeds(group),
                        "compression": float(first["compression"]),
                        "weight_bytes": first.get("weight_bytes"),
                        "latency_ms": float("nan"),  # set below: the architecture's, over all its runs
                        "ship_seed": int(kept[(len(kept) - 1) // 2]["seed"]) if kept else None,
                    }
                )
            latencies += [r["latency_ms"] for r in runs]
        for r in rows:  # every setting of a trial trains the same architecture: one latency for all
            if r["trial"] == number:
                r["latency_ms"] = float(np.median([first["latency_ms"], *latencies]))
    return pd.DataFrame(rows)


def recommend_confirmed(results: StudyResults, settings: pd.DataFrame, floor: float) -> list[Recommendation]:
    """The smallest, the fastest and the best-retention retrained settings whose mean retention over
    their seeds is at or above the floor; each with the ``autokd export`` command of its median run."""
    eligible = settings[settings["retention_mean"] >= floor] if len(settings) else settings
    if not len(eligible):
        return []
    recommendations = []
    for index, reasons in _picks(eligible, "retention_mean").items():
        row = eligible.loc[index]
        command = (
            f"autokd export {results.run_dir} --trial {row['trial']} --setting {row['setting']} "
            f"--epochs {row['epochs']} --seed {int(row['ship_seed'])}"
            if pd.notna(row["ship_seed"])
            else "no weights kept (confirmed before autokd confirm kept them)"
        )
        recommendations.append(Recommendation(reasons=reasons, row=row, export_command=command))
    return recommendations


def _confirmed_decision_rows(recommendations: list[Recommendation]) -> list[dict]:
    """The decision table of retrained settings: one row per recommended setting."""
    return [
        {
            "ship": " / ".join(rec.reasons),
            "trial": int(rec.row["trial"]),
            "student": _student(rec.row),
            "method": rec.row["method"],
            "epochs": int(rec.row["epochs"]),
            "seeds": int(rec.row["seeds"]),
            "retention": mean_std(rec.row["retention_mean"], rec.row["retention_std"], 3),
            "INT8 top-1": mean_std(rec.row["int8_accuracy_mean"], rec.row["int8_accuracy_std"], 4),
            "size": f"{rec.row['weight_bytes'] / 1000:,.1f} KB"
            if pd.notna(rec.row.get("weight_bytes"))
            else "?",
            "x smaller": f"{rec.row['compression']:.0f}x",
            "export": rec.export_command,
        }
        for rec in recommendations
    ]


RETRAINED_LEAD = (
    "Retrained over seeds (autokd confirm; mean ± std over the seeds, stronger evidence than one search run):"
)
SEARCHED_LEAD = "From the search (one run each):"


def _student(row: pd.Series) -> str:
    return (
        f"{row.get('family')} w={row.get('width', float('nan')):.2f} d={row.get('depth', float('nan')):.2f}"
    )


def _decision_rows(recommendations: list[Recommendation], teacher: dict) -> list[dict]:
    """The decision table: one row per recommended student, then the teacher's own numbers."""
    t_lat = teacher.get("latency", {}).get("median_ms")
    rows = []
    for rec in recommendations:
        r = rec.row
        rows.append(
            {
                "ship": " / ".join(rec.reasons),
                "trial": int(r["trial"]),
                "student": _student(r),
                "method": r.get("method"),
                "retention": f"{r['retention']:.3f}",
                "size": f"{r['weight_bytes'] / 1000:,.1f} KB" if pd.notna(r.get("weight_bytes")) else "?",
                "x smaller": f"{r['compression']:.0f}x",
                "latency": f"{r['latency_ms']:.3f} ms",
                "x faster": f"{t_lat / r['latency_ms']:.1f}x" if t_lat else "?",
                "export": rec.export_command,
            }
        )
    rows.append(
        {
            "ship": "teacher (FP32)",
            "trial": "",
            "student": str(teacher.get("model")),
            "method": "",
            "retention": f"1.000 (top-1 {teacher.get('test_accuracy', float('nan')):.4f})",
            "size": f"{teacher.get('weight_bytes', 0) / 1000:,.1f} KB",
            "x smaller": "1x",
            "latency": f"{t_lat:.3f} ms" if t_lat else "?",
            "x faster": "1x",
            "export": "",
        }
    )
    return rows


def _why_nothing_completed(executions: list[dict]) -> str:
    last = executions[-1] if executions else {}
    limit = last.get("time_limit_minutes")
    if last.get("stopped_by") != "time limit":
        return "see the failed trials below"
    prepare = last.get("prepare_seconds")
    spent = (
        f": preparing the data and teacher took {prepare / 60:.1f} min of it" if prepare is not None else ""
    )
    return (
        f"the search reached its time limit{f' of {limit:g} min' if limit else ''} before the first trial "
        f"ended{spent}. Raise budget.time_limit_minutes, or run the same command again: the teacher is "
        "cached and the search resumes"
    )


def _no_recommendation(done: pd.DataFrame, floor: float, executions: list[dict] | None = None) -> str:
    if not len(done):
        return (
            "No trial completed, so there is nothing to ship yet: "
            f"{_why_nothing_completed(executions or [])}."
        )
    best = done.sort_values("retention", ascending=False).iloc[0]
    return (
        f"No completed trial reaches the retention floor {floor:g}; the best is trial {int(best['trial'])} "
        f"({_student(best)}) at {best['retention']:.3f}. Lower the floor, or train longer."
    )


def _format_cell(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if column in INTEGER_COLUMNS and isinstance(value, int | float):
        return f"{int(value):,}"
    if column in ("compression", "speedup_vs_teacher", "parameter_ratio", "int8_speedup_vs_fp32"):
        return f"{value:.1f}x"
    if column == "size_kb":
        return f"{value:,.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def readable(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame``'s ``columns`` as display strings (integers as integers, ratios with an x)."""
    shown = [c for c in columns if c in frame]
    return pd.DataFrame({c: [_format_cell(c, v) for v in frame[c]] for c in shown})


def _markdown(frame: pd.DataFrame) -> str:
    if not len(frame):
        return "(none)"
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def _with_size(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    if "weight_bytes" in frame:
        frame["size_kb"] = frame["weight_bytes"] / 1000
    return frame


def _failures(trials: pd.DataFrame) -> pd.DataFrame:
    if not len(trials) or "error" not in trials:
        return trials.iloc[:0]
    failed = trials[trials["state"] == "FAIL"]
    return failed[["trial", "family", "method", "error"]].fillna("") if len(failed) else failed


def _stopped(trials: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "trial",
        "family",
        "method",
        "stopped_at_epoch",
        "seconds_saved",
        "stopped_by",
        "prescreened_dominated_by",
        "skipped_because",
    ]
    if not len(trials):
        return trials
    pruned = trials[trials["state"] == "PRUNED"]
    return pruned[[c for c in columns if c in pruned]]


def _write(path: Path, text: str) -> None:
    """Write ``text`` beside ``path`` and rename it over ``path``: a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.replace(path)


def summary_markdown(results: StudyResults, done: pd.DataFrame, front: pd.DataFrame, hv: float) -> str:
    """summary.md: what to ship, the front in a few columns, the counts and the definitions."""
    teacher, ref = results.teacher, results.reference_point
    floor = results.settings.get("objectives", {}).get("retention_floor", 0.9)
    trials = results.trials
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    recs = recommend(results, done, floor)
    failures = _failures(trials)
    lines = [f"# autokd report: {results.name}", "", f"## What to ship (retention floor {floor:g})", ""]
    retrained = recommend_confirmed(results, confirmed_settings(results), floor)
    if retrained:
        lines += [
            RETRAINED_LEAD,
            "",
            _markdown(pd.DataFrame(_confirmed_decision_rows(retrained))),
            "",
            SEARCHED_LEAD,
            "",
        ]
    if recs:
        lines.append(_markdown(pd.DataFrame(_decision_rows(recs, teacher))))
    else:
        lines.append(_no_recommendation(done, floor, results.executions))
    lines += [
        "",
        f"## Pareto front ({len(front)} trials)",
        "",
        _markdown(readable(front, SHORT_COLUMNS).rename(columns=DECISION_COLUMNS)),
        "",
        *_confirmed_lines(confirmed_front(results), floor),
        *_baseline_lines(baseline_comparison(results)),
        "",
        "## Trials",
        "- " + (", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())) or "none yet"),
        f"- hypervolume {hv:.4f} against the fixed reference point retention={ref.get('retention')}, "
        f"compression={ref.get('compression')}, latency_ms={ref.get('latency_ms', float('nan')):.3f}",
        *_efficiency_lines(trials, teacher),
    ]
    if len(failures):
        lines += [f"- failed: trial {int(r.trial)}: {r.error}" for r in failures.head(5).itertuples()]
        if len(failures) > 5:
            lines.append(f"- ... {len(failures) - 5} more failed trials in trials.csv")
    lines += [
        "",
        "## INT8 deployment",
        *_deployment_lines(done, teacher.get("latency", {})),
        "",
        "## How latency was measured",
        *latency_method(results),
        "",
        "## Objective definitions",
        DEFINITIONS,
        "",
    ]
    return "\n".join(lines)


def _html_table(frame: pd.DataFrame, columns: dict[str, str] | None = None, classes: str = "") -> str:
    if not len(frame):
        return "<p>(none)</p>"
    if columns:
        frame = frame.rename(columns=columns)
    return frame.to_html(index=False, border=0, escape=True, classes=classes)


# Collects script errors into the page itself, so that a headless browser's DOM shows them.
ERROR_CAPTURE = """<script>
window.autokdErrors = [];
window.addEventListener("error", function (e) {
  window.autokdErrors.push(String(e.message));
  var box = document.getElementById("js-errors");
  if (box) { box.textContent = window.autokdErrors.join("\\n"); box.hidden = false; }
});
</script>"""

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:14px}td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right;
white-space:nowrap}th{background:#f4f4f4}td:last-child{white-space:normal;text-align:left}
.decision{background:#f3f8ff;border:1px solid #bcd;border-radius:6px;padding:0.5em 1em;margin-bottom:1.5em}
.decision code{font-size:13px}.note{color:#555;max-width:70em}#js-errors{color:#b00;white-space:pre}
details{margin:0.5em 0 1.5em}summary{cursor:pointer;color:#246}"""


def _report_folder(run_dir: Path, reports_root: Path, name: object) -> Path:
    """``reports_root/<name>``, refused unless the stored name is a valid study name (a journal is a
    file anyone can edit: a name such as ``../x`` would otherwise write the report elsewhere)."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
        raise ReportError(
            f"{run_dir / JOURNAL}: stored study name {name!r} is not a valid study name ({STUDY_NAME_RULE}); "
            "refusing to write a report for it"
        )
    out = reports_root / name
    if not out.resolve().is_relative_to(reports_root.resolve()):
        raise ReportError(
            f"{out} resolves outside --reports-dir {reports_root}; refusing to write the report there"
        )
    return out


def write_report(run_dir: Path, reports_root: Path) -> Path:
    """Write the report of the study in ``run_dir`` to ``reports_root/<study>/`` and return that folder."""
    from autokd import figures

    results = load_results(run_dir)
    out = _report_folder(Path(run_dir), Path(reports_root), results.name)
    out.mkdir(parents=True, exist_ok=True)
    trials = _with_size(results.trials)
    _write(out / "trials.csv", trials.to_csv(index=False))
    done = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    front = done[done["on_front"]].sort_values("compression", ascending=False) if len(done) else done
    _write(out / "pareto.csv", front.to_csv(index=False))

    ref = results.reference_point
    reference = (ref.get("retention"), ref.get("compression"), ref.get("latency_ms")) if ref else None
    feasible = done[done["feasible"].astype(bool)] if len(done) else done
    hv = (
        hypervolume(feasible[list(OBJECTIVES)].to_numpy(dtype=float), reference)
        if len(feasible) and ref
        else 0.0
    )
    _write(out / "summary.md", summary_markdown(results, done, front, hv))
    confirmed = confirmed_front(results)
    if len(confirmed):
        _write(out / "confirmed.csv", confirmed.to_csv(index=False))
    compared = baseline_comparison(results)
    if len(compared):
        _write(out / "baselines.csv", compared.to_csv(index=False))

    teacher = results.teacher
    floor = results.settings.get("objectives", {}).get("retention_floor", 0.9)
    t_lat = teacher.get("latency", {})
    counts = trials["state"].value_counts().to_dict() if len(trials) else {}
    recs = recommend(results, done, floor)
    if recs:
        decision = pd.DataFrame(_decision_rows(recs, teacher))
        decision["export"] = [f"<code>{html.escape(c)}</code>" if c else "" for c in decision["export"]]
        decision_html = decision.to_html(index=False, border=0, escape=False)
    else:
        decision_html = f"<p>{html.escape(_no_recommendation(done, floor, results.executions))}</p>"
    retrained = recommend_confirmed(results, confirmed_settings(results), floor)
    if retrained:
        table = pd.DataFrame(_confirmed_decision_rows(retrained))
        table["export"] = [f"<code>{html.escape(c)}</code>" for c in table["export"]]
        decision_html = (
            f"<p>{html.escape(RETRAINED_LEAD)}</p>{table.to_html(index=False, border=0, escape=False)}"
            f"<p>{html.escape(SEARCHED_LEAD)}</p>{decision_html}"
        )

    parts = []
    if len(done):
        colours = figures.family_colours(list(done["family"].dropna().unique()))
        batch = f"batch {t_lat.get('batch_size')}, {t_lat.get('threads')} thread(s)"
        plots = [
            figures.front_figure(done, "compression", "compression ratio", "x", floor, colours),
            figures.front_figure(done, "latency_ms", f"INT8 latency, ms ({batch})", " ms", floor, colours),
            figures.objectives_figure(done, t_lat.get("median_ms")),
        ]
        history = figures.hypervolume_history(done, reference) if reference else None
        if history is not None and len(history):
            plots += [
                figures.history_figure(history, "completed"),
                figures.history_figure(history, "minutes"),
            ]
        parts = [
            f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=(i == 0))}</div>'
            for i, fig in enumerate(plots)
        ]
    projections_note = (
        "<p class='note'>The front has three objectives, so in each two-objective view a front star can sit "
        "below or to the right of a dominated circle: it wins on the objective that view leaves out. The "
        "third figure shows all three at once.</p>"
    )
    failures, stopped = _failures(trials), _stopped(trials)
    deployment = "".join(
        f"<li>{html.escape(line[2:].replace('**', ''))}</li>" for line in _deployment_lines(done, t_lat)
    )
    efficiency = "".join(f"<li>{html.escape(line[2:])}</li>" for line in _efficiency_lines(trials, teacher))
    definitions_html = "".join(
        f"<li>{html.escape(line.lstrip('- ').replace('**', ''))}</li>" for line in DEFINITIONS.split("\n- ")
    )
    all_columns = front.drop(columns=["started", "finished"], errors="ignore")
    confirmed_html = (
        f"<h2>Confirmed over seeds ({confirmed['trial'].nunique()} front points)</h2>"
        + _html_table(readable(confirmed, list(confirmed.columns)))
        if len(confirmed)
        else ""
    )
    if len(compared):
        confirmed_html += (
            f"<h2>Searched settings against the usual ones ({compared['trial'].nunique()} front points)</h2>"
            f"<p>{html.escape(BASELINES_NOTE)}</p>" + _html_table(baseline_table(compared))
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>autokd: {html.escape(results.name)}</title>
{ERROR_CAPTURE}<style>{STYLE}</style></head><body>
<div id="js-errors" hidden></div>
<h1>autokd report: {html.escape(results.name)}</h1>
<p>Teacher {html.escape(str(teacher.get("model")))}: test top-1 {teacher.get("test_accuracy", float("nan")):.4f},
{teacher.get("parameters", 0):,} parameters, {teacher.get("weight_bytes", 0) / 1000:,.0f} KB of FP32 weights, FP32 latency
{t_lat.get("median_ms", float("nan")):.3f} ms on {html.escape(str(t_lat.get("runtime")))}.
Trials: {html.escape(", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none")}. Hypervolume {hv:.4f}.</p>
<section class="decision" id="decision"><h2>What to ship (retention floor {floor:g})</h2>{decision_html}</section>
{projections_note}
{"".join(parts) or "<p>No completed trials to plot.</p>"}
<h2>Pareto front ({len(front)} trials)</h2>
{_html_table(readable(front, list(DECISION_COLUMNS)), DECISION_COLUMNS, "front")}
<details><summary>All columns of the front (also in pareto.csv; every trial in trials.csv)</summary>
{_html_table(readable(all_columns, list(all_columns.columns)))}</details>
{confirmed_html}
<h2>INT8 deployment</h2><ul>{deployment}</ul>
<h2>Failed trials ({len(failures)})</h2>{_html_table(failures)}
<h2>Stopped early or skipped ({len(stopped)})</h2><ul>{efficiency}</ul>{_html_table(readable(stopped, list(stopped.columns)))}
<h2>How latency was measured</h2><ul>{"".join(f"<li>{html.escape(line[2:])}</li>" for line in latency_method(results))}
<li>A latency whose interquartile range exceeds {NOISY_IQR_FRACTION:.0%} of its median is flagged "noisy": the cores
were busy while it was measured, so comparisons that rest on it may not hold; measure again on a quiet machine.</li></ul>
<h2>Definitions</h2><ul>{definitions_html}</ul></body></html>"""
    _write(out / "index.html", page)
    return out
