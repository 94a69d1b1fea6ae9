"""Tell samplers apart: train a table of configurations once, then replay samplers against it. By hand.

``build``: runs studies/all_kinds.yaml's setting (data, teacher, search space, epochs, backend) as the
study ``sampler-table``, with a random sampler, no early stopping, no time limit and ``--trials``
completed trials, into ``--runs`` (default runs/). It is an ordinary autokd study: interrupt it and run
the same command to continue it. This is the only part that trains (about 15 s a trial here).

``replay``: for each strategy and each of ``--seeds`` seeds, an in-memory Optuna study samples configs
through autokd's own search space (:func:`autokd.space.sample_config`, the same define-by-run code a
search runs); each sampled config is answered by the table's nearest trial (same family and method,
then the nearest width, depth, share and method parameters, each scaled to [0, 1] of its range). The
front's hypervolume (autokd's, against the table study's reference point) is recorded after every
trained student and against the training seconds the table says those students took. A strategy
that skips a candidate before training (``screen``) pays the candidate's size and latency measurement
(``--screen-seconds``) and no training; the skipped candidate is not counted as a trained student.

Prints the median and range of the hypervolume over the seeds at N, 2N and 3N trained students and at
equal wall time, per strategy.

    .venv/bin/python benchmarks/sampler_table.py build --trials 200
    .venv/bin/python benchmarks/sampler_table.py replay --n 12 --seeds 20
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
TABLE_STUDY = "sampler-table"


def table_document(trials: int) -> dict:
    document = yaml.safe_load((REPO / "studies" / "all_kinds.yaml").read_text())
    document["name"] = TABLE_STUDY
    document["budget"] = {**document["budget"], "trials": trials, "time_limit_minutes": None}
    document["early_stopping"] = {"enabled": False}
    document["sampler"] = {"kind": "random", "startup_trials": 1}
    document.pop("strategy", None)
    document.pop("budgets", None)
    return document


def build(args) -> None:
    import autokd

    path = Path(args.runs) / f"{TABLE_STUDY}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = table_document(args.trials)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = autokd.search(path, runs_dir=Path(args.runs), reports_dir=None, progress=False)
    done = [t for t in result.records.trials if t.completed]
    print(f"# table: {len(done)} completed trials in {Path(args.runs) / TABLE_STUDY}")


@dataclass
class Row:
    params: dict
    values: tuple[float, float, float]  # retention, compression, latency_ms
    seconds: float  # training and measuring this student, as the trial took


def load_table(runs: Path) -> tuple[list[Row], dict, object]:
    from autokd.config import parse_study
    from autokd.pareto import OBJECTIVES
    from autokd.storage import StorageLocation

    location = StorageLocation(runs / TABLE_STUDY)
    study = optuna.load_study(study_name=TABLE_STUDY, storage=location.open())
    rows = [
        Row(dict(t.params), tuple(t.values), float(t.user_attrs.get("wall_seconds") or 0.0))
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]
    autokd_study = parse_study(study.user_attrs["study"])
    reference = tuple(study.user_attrs["reference_point"][k] for k in OBJECTIVES)
    return rows, reference, autokd_study


class Table:
    """Nearest-configuration lookup over the trained table."""

    def __init__(self, rows: list[Row], study) -> None:
        self.rows = rows
        self.ranges: dict[str, tuple[float, float]] = {}
        for row in rows:
            for key, value in row.params.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    low, high = self.ranges.get(key, (value, value))
                    self.ranges[key] = (min(low, value), max(high, value))

    def nearest(self, params: dict) -> Row:
        same = [
            r
            for r in self.rows
            if r.params.get("family") == params.get("family")
            and r.params.get("method") == params.get("method")
        ]
        pool = same or [r for r in self.rows if r.params.get("family") == params.get("family")] or self.rows

        def distance(row: Row) -> float:
            total = 0.0
            for key, value in params.items():
                other = row.params.get(key)
                if isinstance(value, bool) or not isinstance(value, int | float):
                    total += 0.0 if other == value else 1.0
                    continue
                if other is None:
                    total += 1.0
                    continue
                low, high = self.ranges.get(key, (0.0, 1.0))
                total += ((value - other) / ((high - low) or 1.0)) ** 2
            return total

        return min(pool, key=distance)


def samplers(seed: int, startup: int) -> dict[str, Callable[[], optuna.samplers.BaseSampler]]:
    return {
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "tpe multivariate": lambda: optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=startup,
            multivariate=True,
            group=True,
            warn_independent_sampling=False,
        ),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup)),
    }


def replay(
    table: Table,
    study,
    reference: tuple,
    make_sampler: Callable[[], optuna.samplers.BaseSampler],
    trained: int,
    screen: bool,
    screen_seconds: float,
    candidates: int = 1,
    predictor: str = "bound",
) -> list[tuple[int, float, float]]:
    """(trained students, seconds so far, hypervolume) after each trained student.

    With ``candidates`` > 1, each step samples that many students, measures each (``screen_seconds``
    apiece), and trains the one with the largest expected hypervolume gain (:mod:`autokd.strategy`);
    the others are told PRUNED. With ``screen``, a step whose best candidate cannot extend the front
    trains nothing.
    """
    from autokd.pareto import hypervolume
    from autokd.space import sample_config
    from autokd.strategy import could_extend_front, expected_gain

    optuna_study = optuna.create_study(
        directions=["maximize", "maximize", "minimize"], sampler=make_sampler()
    )
    points: list[tuple[float, float, float]] = []
    curve = []
    seconds, count, proposals = 0.0, 0, 0
    while count < trained and proposals < 50 * trained:
        proposals += 1
        asked = []
        for _ in range(candidates if points else 1):
            trial = optuna_study.ask()
            sample_config(trial, study)
            asked.append((trial, table.nearest(trial.params)))
        measuring = screen or len(asked) > 1
        seconds += screen_seconds * len(asked) if measuring else 0.0
        gains = [
            expected_gain(r.values[1], r.values[2], points, points, reference, predictor) for _, r in asked
        ]
        best = int(np.argmax(gains))
        for i, (trial, _) in enumerate(asked):
            if i != best:
                optuna_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        trial, row = asked[best]
        if screen and not could_extend_front(row.values[1], row.values[2], points, reference):
            optuna_study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        optuna_study.tell(trial, list(row.values))
        points.append(row.values)
        seconds += row.seconds
        count += 1
        curve.append((count, seconds, hypervolume(points, reference)))
    return curve


def at_wall_time(curve: list[tuple[int, float, float]], seconds: float) -> float:
    reached = [hv for _, s, hv in curve if s <= seconds]
    return reached[-1] if reached else 0.0


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def replay_all(args) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    from autokd.methods import METHODS

    METHODS.load()
    rows, reference, study = load_table(Path(args.runs))
    table = Table(rows, study)
    print(f"# table: {len(rows)} trained configurations; N = {args.n}; {args.seeds} seeds")
    strategies: dict[str, tuple[str, bool, int, str]] = {}
    for name in args.samplers:
        strategies[name] = (name, False, 1, "bound")
        strategies[f"{name} + screen"] = (name, True, 1, "bound")
        for m in args.candidates:
            for predictor in args.predictors:
                strategies[f"{name} + best of {m} ({predictor})"] = (name, True, m, predictor)
    if "random" not in strategies:
        strategies["random"] = ("random", False, 1, "bound")
    curves: dict[str, list] = {name: [] for name in strategies}
    for seed in range(args.seeds):
        for name, (kind, screen, m, predictor) in strategies.items():
            make = samplers(seed, args.startup)[kind]
            curves[name].append(
                replay(table, study, reference, make, 3 * args.n, screen, args.screen_seconds, m, predictor)
            )
    # Equal wall time: what random search spends on N students, median over seeds.
    budget_s = statistics.median(c[args.n - 1][1] for c in curves["random"] if len(c) >= args.n)
    print(
        f"| strategy | HV at N={args.n} | HV at 2N | HV at 3N | HV at random's N-student time ({budget_s:.0f} s) |"
    )
    print("|---|---|---|---|---|")
    for name, runs in curves.items():
        cells = []
        for k in (args.n, 2 * args.n, 3 * args.n):
            cells.append(summary([c[k - 1][2] if len(c) >= k else c[-1][2] for c in runs]))
        cells.append(summary([at_wall_time(c, budget_s) for c in runs]))
        print(f"| {name} | " + " | ".join(cells) + " |")
    random_3n = statistics.median(c[-1][2] for c in curves["random"])
    print(f"\nrandom search at 3N = {3 * args.n}: median HV {random_3n:.2f}")
    for name, runs in curves.items():
        at_n = [c[args.n - 1][2] for c in runs if len(c) >= args.n]
        wins = sum(hv >= random_3n for hv in at_n)
        print(
            f"{name}: median at N {statistics.median(at_n):.2f}; seeds at or above random's 3N median: {wins}/{len(at_n)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--trials", type=int, default=200)
    b.add_argument("--runs", default=str(REPO / "runs"))
    r = sub.add_parser("replay")
    r.add_argument("--n", type=int, default=12, help="trained students per search")
    r.add_argument("--seeds", type=int, default=20)
    r.add_argument("--startup", type=int, default=8)
    r.add_argument("--screen-seconds", type=float, default=1.0, help="cost of measuring an untrained student")
    r.add_argument("--candidates", type=int, nargs="*", default=[4, 8], help="best-of-M variants")
    r.add_argument("--predictors", nargs="+", default=["bound", "knn"], help="retention predictors")
    r.add_argument(
        "--samplers", nargs="+", default=["random", "tpe", "tpe multivariate", "nsga2"], help="base samplers"
    )
    r.add_argument("--runs", default=str(REPO / "runs"))
    args = parser.parse_args()
    if args.command == "build":
        build(args)
    else:
        replay_all(args)


if __name__ == "__main__":
    main()
