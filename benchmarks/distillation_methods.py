"""Do the distillation methods matter? One fixed student, equal epochs, three seeds per method.

Trains the same small student on the quickstart's Fashion-MNIST split with hard labels only, with
Hinton KD, with one feature method and with one relation method, and prints mean ± std test top-1.
The teacher is the quickstart's (trained once and cached under runs/_teachers/).

    .venv/bin/python benchmarks/distillation_methods.py [--epochs 5] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from autokd.config import load_study_file
from autokd.methods import METHODS as METHOD_REGISTRY
from autokd.methods import load_methods
from autokd.resources import load_study_data
from autokd.students import STEM_CHOICES, build_student, stem_for
from autokd.teacher import prepare_teacher
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import TrainSettings, evaluate, train
from autokd.trial import TrialConfig, build_methods

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "hard labels only": (),
    "hinton_kd (response)": ("hinton_kd",),
    "fitnets (feature)": ("fitnets",),
    "rkd (relation)": ("rkd",),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(REPO / "studies" / "quickstart.yaml"))
    parser.add_argument("--family", default="resnet")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument(
        "--stem", choices=STEM_CHOICES, default="auto", help="ResNet stem, as search_space.stem"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=4.0, help="for the methods that soften logits")
    parser.add_argument(
        "--distillation-share", type=float, default=0.7, help="loss = (1 - share) CE + share x distillation"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    load_methods()
    study = load_study_file(args.study)
    data = load_study_data(study)
    teacher = prepare_teacher(study, data, args.runs_dir)
    stages = sorted({s for m in ("fitnets", "rkd") for s in _teacher_stages(m, teacher.model)})
    outputs = build_teacher_outputs(
        teacher.model, data.train_x, teacher.directory, teacher.identity, stages=stages
    )
    print(
        f"teacher {teacher.model_name}: test top-1 {teacher.test_accuracy:.4f}; student {args.family} "
        f"w={args.width} d={args.depth}, {args.epochs} epochs, {len(data.train_x)} training images, seeds {args.seeds}"
    )
    print(f"{'method':<24} {'test top-1 (mean ± std)':>24} {'runs':>28} {'s/run':>7}")
    for label, methods in METHODS.items():
        accuracies, seconds = [], []
        for seed in args.seeds:
            config = TrialConfig(
                family=args.family,
                width=args.width,
                depth=args.depth,
                stem=stem_for(args.family, data.image_size, args.stem),
                methods=methods,
                distillation_share=args.distillation_share if methods else 0.0,
                method_params={
                    name: {"temperature": args.temperature}
                    for name in methods
                    if "temperature" in METHOD_REGISTRY.get(name).hyperparameters
                },
                epochs=args.epochs,
                seed=seed,
            )
            torch.manual_seed(seed)
            student = build_student(
                args.family,
                args.width,
                args.depth,
                num_classes=data.num_classes,
                in_chans=data.in_chans,
                stem=stem_for(args.family, data.image_size, args.stem),
            )
            weighted = build_methods(config, student, teacher.model, data.num_classes)
            start = time.perf_counter()
            train(
                student,
                data.train_x,
                data.train_y,
                TrainSettings(
                    args.epochs,
                    study.training.batch_size,
                    study.training.lr,
                    study.training.weight_decay,
                    seed,
                ),
                methods=weighted,
                distillation_share=config.distillation_share,
                teacher=outputs if weighted else None,
            )
            seconds.append(time.perf_counter() - start)
            accuracies.append(evaluate(student, data.test_x, data.test_y))
        mean, std = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        runs = " ".join(f"{a:.4f}" for a in accuracies)
        print(
            f"{label:<24} {mean:>15.4f} ± {std:.4f} {runs:>28} {statistics.mean(seconds):>7.1f}", flush=True
        )


def _teacher_stages(method: str, model: torch.nn.Module) -> list[int]:
    from autokd.features import feature_stage_indices
    from autokd.methods import METHODS

    return feature_stage_indices(model, METHODS.get(method).needs_features)


if __name__ == "__main__":
    main()
