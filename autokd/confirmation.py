"""Retrain a study's front with new seeds: is a front point its settings' doing, or one seed's luck?

``autokd confirm RUN --top K --seeds S`` takes the K front points that add the most hypervolume (all
of them by default), and trains each configuration again with S new seeds, exactly as the search
trained it (same data, teacher, epochs, quantization and latency measurement) except for the seed.
Each run is stored as it finishes in the study's own storage, as the study attribute
``confirmations`` (``{trial number: [run, ...]}``): never a trial, so never counted in the search's
budget nor seen by its sampler. Running the command again continues where it stopped; a larger
``--seeds`` adds seeds. The report then shows each confirmed point as mean ± std over all its seeds
(the search's own run included), the front recomputed on those means, and marks a point whose
confirmation fell below the retention floor.

``--epochs N`` retrains the chosen points for N epochs instead of the search's budget: search with a
short budget, then train the finalists as long as you would before shipping. The search's own seed is
trained again too (its run had the other budget), and every run records its ``epochs``, so the report
keeps each budget's mean ± std, and its front of means, apart.

``--baselines`` answers whether the search was worth it: each chosen point's architecture (same
student, epochs, quantization) is also trained (a) on hard labels alone and (b) with the literature's
defaults, Hinton KD at T = 4 with 0.9 distillation / 0.1 task weighting, each over the same seeds as
the searched setting (the search's own seed and the confirmation seeds), stored as the study attribute
``baselines`` (``{trial number: {variant: [run, ...]}}``) and shown beside the confirmed points.

Runs go seed by seed: every setting (the searched one, then each baseline) on one seed before the next
seed, so a confirmation stopped part-way has compared them all on the seeds it finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from autokd.pareto import OBJECTIVES, hypervolume
from autokd.record import run_epochs

CONFIRMATIONS = "confirmations"
BASELINES = "baselines"
# What a user would train without autokd: the config fields each baseline replaces.
BASELINE_VARIANTS = {
    "hard_labels": {"methods": (), "distillation_share": 0.0, "method_weights": {}, "method_params": {}},
    "literature_kd": {
        "methods": ("hinton_kd",),
        "distillation_share": 0.9,
        "method_weights": {},
        "method_params": {"hinton_kd": {"temperature": 4.0}},
    },
}
BASELINE_TITLES = {"hard_labels": "hard labels only", "literature_kd": "Hinton KD, T = 4, 0.9 / 0.1"}
SEARCHED = "searched"  # the setting name of a confirmation run of the searched setting itself
SETTINGS = (SEARCHED, *BASELINE_VARIANTS)
SEED_STRIDE = 7919  # confirmation seed k of a trial: its own seed + k * SEED_STRIDE


class ConfirmError(ValueError):
    """The run cannot be confirmed as asked (no front, bad --top/--seeds); the message is one line."""


def contributions(points: np.ndarray, reference) -> np.ndarray:
    """Each point's exclusive hypervolume: what the front loses without it."""
    total = hypervolume(points, reference)
    return np.array(
        [total - hypervolume(np.delete(points, i, axis=0), reference) for i in range(len(points))]
    )


def front_to_confirm(records, top: int | None, only: list[int] | None = None) -> list:
    """The front's trials (feasible, completed), the ``top`` largest hypervolume contributions first;
    with ``only``, those front points alone (ConfirmError naming any that is not on the front)."""
    from autokd.reporting import load_results

    trials = load_results(records.run_dir).trials
    if not len(trials) or not trials["on_front"].any():
        raise ConfirmError(f"study '{records.name}' has no completed trial on its front to confirm")
    front = trials[trials["on_front"]]
    ref = records.reference_point
    reference = tuple(ref[k] for k in OBJECTIVES)
    gains = contributions(front[list(OBJECTIVES)].to_numpy(dtype=float), reference)
    order = np.argsort(-gains, kind="stable")
    numbers = [int(front["trial"].iloc[i]) for i in order]
    if only:
        off_front = [n for n in only if n not in numbers]
        if off_front:
            raise ConfirmError(
                f"--trial {off_front[0]}: not on the front of study '{records.name}'; its front points are "
                f"trials {', '.join(map(str, sorted(numbers)))}"
            )
        numbers = [n for n in numbers if n in only]
    return [records.trial(n) for n in (numbers[:top] if top else numbers)]


def confirmation_seeds(seed: int, count: int) -> list[int]:
    """The ``count`` new seeds of a trial whose own seed is ``seed`` (the same on every rerun)."""
    return [(seed + k * SEED_STRIDE) % 2**31 for k in range(1, count + 1)]


def baseline_config(config, variant: str, seed: int):
    """``config``'s architecture and training budget with the loss of baseline ``variant``."""
    return replace(config, seed=seed, **BASELINE_VARIANTS[variant])


def setting_runs(records, number: int, setting: str) -> list[dict]:
    """The stored runs of trial ``number`` trained with ``setting`` (``searched`` or a baseline's name)."""
    if setting == SEARCHED:
        return list(records.confirmations.get(str(number), []))
    return list(records.baselines.get(str(number), {}).get(setting, []))


def setting_config(searched, setting: str, epochs: int, seed: int):
    """The config a confirmation run of ``setting`` trained: the searched one's architecture and loss (or
    the baseline's loss) at ``epochs`` with ``seed``."""
    config = replace(searched, epochs=epochs, seed=seed)
    return config if setting == SEARCHED else baseline_config(config, setting, seed)


def confirm(
    run_dir: str | Path,
    *,
    top: int | None = None,
    seeds: int = 2,
    baselines: bool = False,
    trials: list[int] | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict]]:
    """Train the front's configurations (or the front points ``trials``) with ``seeds`` new seeds each
    (and, with ``baselines``, their architectures' baselines over the same seeds), for ``epochs``
    (default: the search's own budget); return every confirmation run stored so far, by trial number
    (see the module docstring)."""
    import optuna

    from autokd.config import parse_study
    from autokd.measure import machine_latency_lock
    from autokd.record import load_records
    from autokd.registry import load_extension_files
    from autokd.resources import prepare_resources
    from autokd.storage import StudyOwner, confirmation_dir, load_run_study
    from autokd.teacher import is_study_teacher
    from autokd.trial import TrialConfig, run_trial

    if seeds < 1:
        raise ConfirmError(f"--seeds {seeds}: give at least 1 new seed per front point")
    if epochs is not None and epochs < 1:
        raise ConfirmError(f"--epochs {epochs}: give at least 1 epoch (or leave it out for the search's own)")
    if top is not None and top < 1:
        raise ConfirmError(f"--top {top}: give at least 1 front point (or leave it out for all)")
    run_dir = Path(run_dir)
    try:
        records = load_records(run_dir)
    except (FileNotFoundError, LookupError) as exc:
        raise ConfirmError(f"{exc}; run 'autokd search STUDY' first") from None
    chosen = front_to_confirm(records, top, trials)
    load_extension_files(records.extensions)
    study = parse_study(records.settings, f"{run_dir} (stored study)")
    with StudyOwner(run_dir, study.name):
        resources = prepare_resources(study, runs_root=run_dir.parent, log=log)
        if not is_study_teacher(records.teacher.get("key"), study, resources.teacher.key):
            raise ConfirmError(
                f"the teacher prepared now ({resources.teacher.key}) is not the one study '{study.name}' "
                f"searched with ({records.teacher.get('key')}): its data or teacher files changed"
            )
        optuna_study = load_run_study(run_dir)
        stored: dict[str, list[dict]] = {
            k: list(v) for k, v in optuna_study.user_attrs.get(CONFIRMATIONS, {}).items()
        }
        teacher, lock = resources.teacher_reference(), machine_latency_lock()
        stored_baselines: dict[str, dict[str, list[dict]]] = {
            k: {variant: list(runs) for variant, runs in v.items()}
            for k, v in optuna_study.user_attrs.get(BASELINES, {}).items()
        }
        todo = []  # (record, config to train, variant or None for the searched setting)
        for record in chosen:
            searched = TrialConfig.from_dict(record.config)
            config = replace(searched, epochs=epochs or searched.epochs)

            def done(runs: list[dict], searched=searched, config=config) -> set[int]:
                return {run["seed"] for run in runs if run_epochs(run, searched.epochs) == config.epochs}

            done_searched = done(stored.get(str(record.number), []))
            # The search's own run counts for its own budget only: at another, its seed is trained too.
            if config.epochs == searched.epochs:
                done_searched.add(config.seed)
            variants = list(BASELINE_VARIANTS) if baselines else []
            done_baselines = {
                v: done(stored_baselines.get(str(record.number), {}).get(v, [])) for v in variants
            }
            # Seed by seed, every setting on one seed before the next seed: a confirmation stopped
            # part-way has still compared the searched setting and its baselines on the same seeds.
            for s in [config.seed, *confirmation_seeds(config.seed, seeds)]:
                if s not in done_searched:
                    todo.append((record, setting_config(config, SEARCHED, config.epochs, s), None))
                todo += [
                    (record, setting_config(config, v, config.epochs, s), v)
                    for v in variants
                    if s not in done_baselines[v]
                ]
        what = " and their baselines (hard labels; Hinton KD, T = 4, 0.9)" if baselines else ""
        budget = f", {epochs} epochs each" if epochs else ""
        log(
            f"confirming {len(chosen)} front point(s) of '{study.name}' with {seeds} new seed(s) each{what}"
            f"{budget}: {len(todo)} run(s) to train"
        )
        for i, (record, config, variant) in enumerate(todo, 1):
            start = time.perf_counter()
            result = run_trial(
                config,
                resources.data,
                teacher,
                latency_lock=lock,
                device=resources.device,
                amp=study.training.amp,
                cpu_bf16=study.training.cpu_bf16,
                # kept, so that a confirmed setting can be exported (autokd export --setting)
                artifact_dir=confirmation_dir(
                    run_dir, record.number, variant or SEARCHED, config.epochs, config.seed
                ),
            )
            run = {
                "seed": config.seed,
                "epochs": config.epochs,
                "retention": result.retention,
                "int8_accuracy": result.int8_accuracy,
                "fp32_accuracy": result.fp32_accuracy,
                "compression": result.compression,
                "latency_ms": result.latency_ms,
                "wall_seconds": time.perf_counter() - start,
            }
            with _quiet_optuna(optuna):  # after every run: nothing is lost
                if variant is None:
                    stored.setdefault(str(record.number), []).append(run)
                    optuna_study.set_user_attr(CONFIRMATIONS, stored)
                else:
                    stored_baselines.setdefault(str(record.number), {}).setdefault(variant, []).append(run)
                    optuna_study.set_user_attr(BASELINES, stored_baselines)
            label = "" if variant is None else f" {BASELINE_TITLES[variant]}"
            log(
                f"confirm {i}/{len(todo)}: trial {record.number}{label} seed {config.seed}, {config.epochs} "
                f"epochs: retention "
                f"{result.retention:.3f} (search: {record.result.retention:.3f}), INT8 top-1 "
                f"{result.int8_accuracy:.4f}, {run['wall_seconds']:.0f} s"
            )
    return stored


class _quiet_optuna:
    def __init__(self, optuna) -> None:
        self.optuna = optuna

    def __enter__(self):
        self.level = self.optuna.logging.get_verbosity()
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)

    def __exit__(self, *exc) -> None:
        self.optuna.logging.set_verbosity(self.level)
