"""How much a trial costs, and whether the sampler earns its keep. Run by hand, not in CI.

Prints, in one run on this machine:
  (a) seconds per epoch of one student: hard labels only, KD through the teacher-output cache, and KD
      with the teacher run on the fly;
  (b) images/s of autokd's training step vs a bare PyTorch loop on the same student and tensors;
  (c) the share of trial wall time spent in quantization and latency measurement, in a quickstart run
      (read from runs/quickstart: run `make quickstart` first);
  (d) hypervolume after N trials for the configured sampler vs random sampling at N and at 3N, three
      seeds, on studies/smoke.yaml's setting (digits).

    .venv/bin/python benchmarks/fast_trials.py [--skip-sampler] [--n 10]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

import autokd
from autokd.config import load_study_file
from autokd.methods import METHODS, load_methods
from autokd.pareto import OBJECTIVES, hypervolume
from autokd.reporting import load_results
from autokd.resources import load_study_data
from autokd.students import STEM_CHOICES, build_student, stem_for
from autokd.teacher import prepare_teacher
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import TrainSettings, WeightedMethod, train

REPO = Path(__file__).resolve().parents[1]


def benchmark_student(args, data) -> torch.nn.Module:
    """The student every part of this benchmark trains: --family/--width/--depth/--stem on the study's data."""
    stem = stem_for(args.family, data.image_size, args.stem)
    return build_student(
        args.family, args.width, args.depth, num_classes=data.num_classes, in_chans=data.in_chans, stem=stem
    )


def epoch_seconds(args, study, data, teacher) -> None:
    settings = TrainSettings(
        args.epochs, study.training.batch_size, study.training.lr, study.training.weight_decay
    )
    cached = build_teacher_outputs(teacher.model, data.train_x, teacher.directory, teacher.key)
    live = build_teacher_outputs(teacher.model, data.train_x, teacher.directory, teacher.key, enabled=False)
    rows: dict[str, float] = {}
    configs = (
        ("hard labels only", None),
        ("KD, teacher-output cache", cached),
        ("KD, teacher on the fly", live),
    )
    # Rounds interleave the three so that a slow spell on a shared machine hits them alike; best of each.
    for _round, (label, outputs) in itertools.product(range(args.rounds), configs):
        torch.manual_seed(0)
        student = benchmark_student(args, data)
        methods = [WeightedMethod(METHODS.get("hinton_kd")(), 1.0)] if outputs is not None else []
        start = time.perf_counter()
        train(student, data.train_x, data.train_y, settings, methods=methods, teacher=outputs)
        seconds = (time.perf_counter() - start) / args.epochs
        rows[label] = min(seconds, rows.get(label, seconds))
    base = rows["hard labels only"]
    print(
        f"(a) seconds per epoch, {args.family} w={args.width} d={args.depth}, {len(data.train_x)} images, "
        f"{torch.get_num_threads()} threads, best of {args.rounds} interleaved rounds"
    )
    for label, seconds in rows.items():
        print(f"    {label:<28} {seconds:6.2f} s/epoch  ({seconds / base:.2f}x hard labels)")


def throughput(args, study, data) -> None:
    """Bare loop: the textbook PyTorch loop on the same tensors, optimizer and schedule."""
    settings = TrainSettings(
        args.epochs, study.training.batch_size, study.training.lr, study.training.weight_decay
    )

    def bare() -> float:
        torch.manual_seed(0)
        model = benchmark_student(args, data)
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        steps = -(-len(data.train_x) // settings.batch_size) * settings.epochs
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.lr, total_steps=steps, pct_start=0.2
        )
        model.train()
        start = time.perf_counter()
        for _ in range(settings.epochs):
            order = torch.randperm(len(data.train_x))
            for i in range(0, len(order), settings.batch_size):
                idx = order[i : i + settings.batch_size]
                loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        return time.perf_counter() - start

    def ours() -> float:
        torch.manual_seed(0)
        model = benchmark_student(args, data)
        start = time.perf_counter()
        train(model, data.train_x, data.train_y, settings)
        return time.perf_counter() - start

    images = len(data.train_x) * settings.epochs
    bare_s = min(bare() for _ in range(2))
    ours_s = min(ours() for _ in range(2))
    print(
        f"(b) training throughput, hard labels, best of 2: bare loop {images / bare_s:,.0f} img/s, "
        f"autokd {images / ours_s:,.0f} img/s ({bare_s / ours_s:.2f}x the bare loop)"
    )


def deploy_share(runs_dir: Path) -> None:
    run = runs_dir / "quickstart"
    try:
        trials = load_results(run).trials
    except Exception as exc:  # noqa: BLE001 - the benchmark reports what is missing and goes on
        print(f"(c) skipped: {exc}")
        return
    done = trials[trials["state"] == "COMPLETE"]
    deploy = (done["quantize_seconds"] + done["latency_seconds"]).sum()
    total = done["wall_seconds"].sum()
    evals = done["eval_seconds"].sum() if "eval_seconds" in done else float("nan")
    print(
        f"(c) quickstart ({len(done)} completed trials): quantization + latency = {deploy:.1f} s of {total:.1f} s "
        f"trial wall time ({100 * deploy / total:.1f}%); test-set evaluation FP32+INT8 {100 * evals / total:.1f}%"
    )


def sampler_hypervolume(args) -> None:
    base = load_study_file(REPO / "studies" / "smoke.yaml")
    runs = Path(args.runs_dir)
    results: dict[str, list[float]] = {}
    n = args.n
    for seed in args.seeds:
        for label, kind, trials in (
            (f"{base.sampler.kind} @N", base.sampler.kind, n),
            ("random @N", "random", n),
            ("random @3N", "random", 3 * n),
        ):
            doc = base.model_dump()
            doc.update(name=f"hv-{kind}-{trials}-{seed}-{int(time.time())}", seed=seed)
            doc["budget"].update(trials=trials, time_limit_minutes=None)
            doc["sampler"].update(kind=kind, startup_trials=args.startup)
            study = type(base).model_validate(doc)
            # the teacher is shared through runs/_teachers; the study itself is thrown away afterwards
            outcome = autokd.search(
                study, runs_dir=runs, log=lambda _: None, progress=False, reports_dir=None
            )
            res = load_results(outcome.run_dir)
            done = res.trials[res.trials["state"] == "COMPLETE"]
            ref = res.reference_point
            hv = hypervolume(
                done[list(OBJECTIVES)].to_numpy(dtype=float),
                (ref["retention"], ref["compression"], ref["latency_ms"]),
            )
            results.setdefault(label, []).append(hv)
            shutil.rmtree(outcome.run_dir, ignore_errors=True)
            print(f"    seed {seed} {label:<12} hypervolume {hv:10.2f}", flush=True)
    print(
        f"(d) hypervolume after N={n} trials (startup {args.startup}), smoke setting, {len(args.seeds)} seeds "
        "(median; runs):"
    )
    for label, values in results.items():
        print(
            f"    {label:<12} median {statistics.median(values):10.2f}   {' '.join(f'{v:.2f}' for v in values)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(REPO / "studies" / "quickstart.yaml"))
    parser.add_argument("--family", default="resnet")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument(
        "--stem", choices=STEM_CHOICES, default="auto", help="ResNet stem, as search_space.stem"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats in (a); the best counts")
    parser.add_argument("--runs-dir", default=str(REPO / "runs"))
    parser.add_argument("--n", type=int, default=10, help="trials for the sampler comparison (d)")
    parser.add_argument("--startup", type=int, default=4, help="random startup trials of the sampler in (d)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study seeds compared in (d)")
    parser.add_argument("--skip-sampler", action="store_true", help="skip (d), the slow part")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_methods()
    study = load_study_file(args.study)
    data = load_study_data(study)
    teacher = prepare_teacher(study, data, Path(args.runs_dir), log=lambda _: None)
    epoch_seconds(args, study, data, teacher)
    throughput(args, study, data)
    deploy_share(Path(args.runs_dir))
    if not args.skip_sampler:
        sampler_hypervolume(args)


if __name__ == "__main__":
    main()
