"""Confirm the sampler table's winner with real searches: studies/all_kinds.yaml with autokd's strategy
against the same study with random search, over several seeds, and the quickstart beside them. Run by
hand (each search is a few minutes).

Each (strategy, seed) is an ordinary autokd study named ``real-<strategy>-s<seed>`` in ``--runs``
(the quickstart's teacher is reused from there), so an interrupted run continues where it stopped.
``all_kinds`` is studies/all_kinds.yaml as shipped (autokd's strategy), with ``seed`` changed;
``random`` is the same study with a random sampler, no pre-screen and one candidate per trial;
``all_kinds_bf16`` is all_kinds with ``training.cpu_bf16: true`` (bfloat16 autocast, README "Fast
trials"); ``quickstart`` is studies/quickstart.yaml as shipped (all kinds, autokd's strategy,
bfloat16); ``hinton_tpe`` is the quickstart until autokd 0.3 (Hinton KD only, TPE, 18 trials, FP32).
``--trials`` overrides the
trial budget of the all_kinds searches (``--random-trials`` that of the random ones, e.g. 3N). Prints the
completed trials, the search's wall time (teacher cached) and the front's hypervolume per run, and
the median per strategy.

    .venv/bin/python benchmarks/sampler_real.py --seeds 0 1 2 --strategies quickstart hinton_tpe
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

import autokd
from autokd.pareto import OBJECTIVES, hypervolume

REPO = Path(__file__).resolve().parents[1]


def document(strategy: str, seed: int, trials: int | None) -> dict:
    if strategy in ("quickstart", "hinton_tpe"):  # their own trial budgets
        study = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
        study.update(name=f"real-{strategy}-s{seed}", seed=seed)
        if strategy == "hinton_tpe":  # the quickstart until autokd 0.3
            study["search_space"]["methods"] = ["hinton_kd"]
            study["training"]["cpu_bf16"] = False
            study["budget"]["trials"] = 18
            study["sampler"] = {"kind": "tpe", "startup_trials": 8, "candidates": 1}
            study["prescreen"] = False
        return study
    study = yaml.safe_load((REPO / "studies" / "all_kinds.yaml").read_text())
    study.update(name=f"real-{strategy}-s{seed}", seed=seed)
    if trials is not None:
        study["budget"]["trials"] = trials
    if strategy == "all_kinds_bf16":
        study.setdefault("training", {})["cpu_bf16"] = True
    if strategy == "random":
        study["sampler"] = {"kind": "random", "startup_trials": 1, "candidates": 1}
        study["prescreen"] = False
    return study


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["quickstart", "hinton_tpe"])
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--random-trials", type=int, default=None)
    parser.add_argument(
        "--first-seed-only", nargs="*", default=[], help="strategies run for the first seed only"
    )
    parser.add_argument("--runs", default=str(REPO / "runs"))
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, int, float, float]]] = {s: [] for s in args.strategies}
    fronts: dict[str, list] = {s: [] for s in args.strategies}
    teacher_ms = []
    for seed in args.seeds:  # interleaved: the strategies take turns, seed by seed
        for strategy in args.strategies:
            if strategy in args.first_seed_only and seed != args.seeds[0]:
                continue
            trials = args.random_trials if strategy == "random" and args.random_trials else args.trials
            start = time.perf_counter()
            result = autokd.search(
                document(strategy, seed, trials), runs_dir=Path(args.runs), reports_dir=None, progress=False
            )
            seconds = time.perf_counter() - start
            ref = result.records.reference_point
            front = result.front
            hv = hypervolume(front[list(OBJECTIVES)].to_numpy(dtype=float), tuple(ref[k] for k in OBJECTIVES))
            rows[strategy].append((seed, result.completed, seconds, hv))
            fronts[strategy].append(front[list(OBJECTIVES)].to_numpy(dtype=float))
            teacher_ms.append(ref["latency_ms"])
            print(
                f"# {strategy} seed {seed}: {result.completed} completed, {seconds / 60:.1f} min, HV {hv:.2f} "
                f"(stopped by {result.stopped_reason})",
                flush=True,
            )
    # Each run measures its own teacher latency, which bounds its hypervolume: compare the runs
    # against one reference point too (the median of those latencies).
    common = (0.9, 1.0, statistics.median(teacher_ms))
    print(f"common reference point: retention 0.9, compression 1, latency {common[2]:.3f} ms")
    print(
        "| strategy | seed | completed trials | search minutes (teacher cached) | HV (own reference) | HV (common) |"
    )
    print("|---|---|---|---|---|---|")
    for strategy, results in rows.items():
        shared = [hypervolume(points, common) for points in fronts[strategy]]
        for (seed, completed, seconds, hv), hv_common in zip(results, shared, strict=True):
            print(f"| {strategy} | {seed} | {completed} | {seconds / 60:.1f} | {hv:.2f} | {hv_common:.2f} |")
        print(
            f"| **{strategy}, median** | | {statistics.median(r[1] for r in results)} | "
            f"{statistics.median(r[2] for r in results) / 60:.1f} | {statistics.median(r[3] for r in results):.2f} | "
            f"**{statistics.median(shared):.2f}** |"
        )


if __name__ == "__main__":
    main()
