"""Per-family, per-backend INT8 against FP32: top-1 agreement, accuracy, and speed-ups at batch 1 and 64.

Trains one small student per family (plain cross-entropy, no teacher), optionally a second one whose
last epoch is quantization-aware, quantizes each with every backend and measures, on each backend's
own runtime, the INT8 and the FP32 student (speed-up = FP32 / INT8 on the same runtime). The torch
eager FP32 latency is printed too, as the common reference. Run from the repository root:

    .venv/bin/python benchmarks/quantization.py                        # fashion_mnist, all backends
    .venv/bin/python benchmarks/quantization.py --backends onnxruntime --qat

Other jobs on the same cores distort the latencies: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autokd.data import load_splits  # noqa: E402
from autokd.measure import cpu_model, latency_example, measure_latency  # noqa: E402
from autokd.quantize import AGREEMENT_THRESHOLD, BACKENDS, calibration_batches, predict  # noqa: E402
from autokd.quantize.qat import copy_weights_back, prepare_qat  # noqa: E402
from autokd.students import STEM_CHOICES, build_student, count_parameters, stem_for  # noqa: E402
from autokd.train import TrainSettings, predict_logits, train  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-subsample", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--families", nargs="+", default=["resnet", "mobilenetv3", "convnext"])
    parser.add_argument("--backends", nargs="+", default=["onnxruntime", "pt2e_x86"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument(
        "--stem", choices=STEM_CHOICES, default="auto", help="ResNet stem, as search_space.stem"
    )
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--latency-batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1, help="threads for latency")
    parser.add_argument("--train-threads", type=int, default=1, help="threads for training and evaluation")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--qat", action="store_true", help="also a student whose last epoch is QAT")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def trained_student(args: argparse.Namespace, data, family: str, qat: bool) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    student = build_student(
        family,
        args.width,
        args.depth,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        stem=stem_for(family, data.image_size, args.stem),
    )
    fp32_epochs = args.epochs - 1 if qat else args.epochs
    settings = TrainSettings(fp32_epochs, args.batch_size, args.lr, seed=args.seed)
    train(student, data.train_x, data.train_y, settings)
    if qat:
        qat_student = prepare_qat(student, data.train_x[: args.batch_size])
        train(qat_student, data.train_x, data.train_y, TrainSettings(1, args.batch_size, args.lr * 0.1))
        copy_weights_back(qat_student, student)
    return student.eval()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.train_threads)
    data = load_splits(args.dataset, train_subsample=args.train_subsample, image_size=32, seed=args.seed)
    print(
        f"# {args.dataset}: {len(data.train_x)} train / {len(data.test_x)} test images; students width "
        f"{args.width}, depth {args.depth}, ResNet stem {stem_for('resnet', data.image_size, args.stem)}, {args.epochs} "
        f"epochs; {args.calibration_batches} calibration "
        f"batches of {args.batch_size}; latency with {args.threads} thread(s), min run time {args.min_run_time} s"
    )
    import onnxruntime
    import torchao

    print(
        f"# {cpu_model()} ({os.cpu_count()} cores), {platform.python_version()}, torch {torch.__version__}, "
        f"torchao {torchao.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    sizes = args.latency_batch_sizes
    header = (
        ["family", "qat", "fp32 acc", "backend", "int8 acc", "agree", "quant s"]
        + [f"int8 ms b{b}" for b in sizes]
        + [f"fp32 ms b{b}" for b in sizes]
        + [f"speed-up b{b}" for b in sizes]
        + [f"eager fp32 ms b{b}" for b in sizes]
    )
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    examples = {b: latency_example(data.test_x, b) for b in sizes}
    timing = {"threads": args.threads, "min_run_time_s": args.min_run_time}
    for family in args.families:
        for qat in [False, True] if args.qat else [False]:
            start = time.perf_counter()
            student = trained_student(args, data, family, qat)
            train_s = time.perf_counter() - start
            fp32_predictions = predict_logits(student, data.test_x).argmax(1)
            fp32_accuracy = float((fp32_predictions == data.test_y).float().mean())
            eager = {b: measure_latency(student, examples[b], **timing).median_ms for b in sizes}
            calibration = calibration_batches(data.train_x, args.batch_size, args.calibration_batches)
            for name in args.backends:
                backend = BACKENDS.get(name)
                start = time.perf_counter()
                int8, fp32 = backend.quantize_with_fp32(student, calibration)
                predictions = predict(int8, data.test_x).argmax(1)
                quant_s = time.perf_counter() - start
                agreement = float((predictions == fp32_predictions).float().mean())
                accuracy = float((predictions == data.test_y).float().mean())
                int8_ms = {b: measure_latency(int8, examples[b], **timing).median_ms for b in sizes}
                fp32_ms = {b: measure_latency(fp32, examples[b], **timing).median_ms for b in sizes}
                mark = "" if agreement >= AGREEMENT_THRESHOLD else " (<0.98)"
                row = (
                    [family, "yes" if qat else "no", f"{fp32_accuracy:.4f}", name, f"{accuracy:.4f}"]
                    + [f"{agreement:.4f}{mark}", f"{quant_s:.1f}"]
                    + [f"{int8_ms[b]:.3f}" for b in sizes]
                    + [f"{fp32_ms[b]:.3f}" for b in sizes]
                    + [f"{fp32_ms[b] / int8_ms[b]:.2f}x" for b in sizes]
                    + [f"{eager[b]:.3f}" for b in sizes]
                )
                print("| " + " | ".join(row) + " |", flush=True)
            print(
                f"#   {family} (qat={qat}): {count_parameters(student):,} parameters, trained in {train_s:.0f} s",
                flush=True,
            )
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
