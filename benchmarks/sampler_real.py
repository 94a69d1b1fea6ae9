"""Confirm the sampler table's winner with real searches: the quickstart with its own strategy against
the same study with random search, over several seeds. Run by hand (each search is a few minutes).

Each (strategy, seed) is an ordinary autokd study named ``real-<strategy>-s<seed>`` in ``--runs``
(the quickstart's teacher is reused from there), so an interrupted run continues where it stopped.
``quickstart`` is studies/quickstart.yaml as shipped, with ``seed`` changed; ``random`` is the same
study with a random sampler, no pre-screen and one candidate per trial; ``previous`` is the quickstart
as shipped before (Hinton KD only, TPE, one candidate per trial). ``--trials`` overrides the
trial budget of every search (``--random-trials`` that of the random ones, e.g. 3N). Prints the
completed trials, the search's wall time (teacher cached) and the front's hypervolume per run, and
the median per strategy.

    .venv/bin/python benchmarks/sampler_real.py --seeds 0 1 2
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
    study = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
    study["name"] = f"real-{strategy}-s{seed}"
    study["seed"] = seed
    if trials is not None:
        study["budget"]["trials"] = trials
    if strategy == "random":
        study["sampler"] = {"kind": "random", "startup_trials": 1, "candidates": 1}
        study["prescreen"] = False
    elif strategy == "previous":  # the quickstart as shipped before the strategy: Hinton KD only, TPE
        study["search_space"]["methods"] = ["hinton_kd"]
        study["budget"]["trials"] = 18
        study["sampler"] = {"kind": "tpe", "startup_trials": 8, "candidates": 1}
        study["prescreen"] = False
    return study


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=["quickstart", "random"])
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--random-trials", type=int, default=None)
    parser.add_argument("--runs", default=str(REPO / "runs"))
    args = parser.parse_args()
    rows: dict[str, list[tuple[int, int, float, float]]] = {s: [] for s in args.strategies}
    for seed in args.seeds:  # interleaved: the strategies take turns, seed by seed
        for strategy in args.strategies:
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
            print(
                f"# {strategy} seed {seed}: {result.completed} completed, {seconds / 60:.1f} min, HV {hv:.2f} "
                f"(stopped by {result.stopped_reason})",
                flush=True,
            )
    print("| strategy | seed | completed trials | search minutes (teacher cached) | hypervolume |")
    print("|---|---|---|---|---|")
    for strategy, results in rows.items():
        for seed, completed, seconds, hv in results:
            print(f"| {strategy} | {seed} | {completed} | {seconds / 60:.1f} | {hv:.2f} |")
        print(
            f"| **{strategy}, median** | | {statistics.median(r[1] for r in results)} | "
            f"{statistics.median(r[2] for r in results) / 60:.1f} | **{statistics.median(r[3] for r in results):.2f}** |"
        )


if __name__ == "__main__":
    main()
