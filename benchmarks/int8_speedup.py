"""Does INT8 pay? FP32 / INT8 latency of each family's students on a backend's runtime, by width.

Latency depends on the architecture only, so the students are untrained (as the pre-screen measures
them): each family x width is built, quantized (calibrated on a few training batches) and timed in
INT8 and FP32 on the same runtime, at the batch size given. The configurations are interleaved over
``--reps`` rounds so that drifting machine load hits them alike; the median speed-up and its range
over the rounds are printed. Run from the repository root with nothing else running:

    .venv/bin/python benchmarks/int8_speedup.py --families efficientnet_lite mobilenetv4 resnet --widths 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autokd.data import load_splits  # noqa: E402
from autokd.measure import cpu_model, latency_example, measure_latency  # noqa: E402
from autokd.quantize import BACKENDS, calibration_batches  # noqa: E402
from autokd.students import build_student, stem_for  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", nargs="+", default=["efficientnet_lite", "mobilenetv4", "resnet"])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="threads for latency")
    parser.add_argument("--min-run-time", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = load_splits("fashion_mnist", train_subsample=2000, image_size=args.image_size, seed=0)
    calibration = calibration_batches(data.train_x, 128, 2)
    example = latency_example(data.test_x, args.batch_size)
    backend = BACKENDS.get(args.backend)
    print(
        f"# {cpu_model()} ({os.cpu_count()} cores); {args.backend}, batch {args.batch_size}, {args.threads} "
        f"thread(s), depth {args.depth}, {args.image_size}-pixel Fashion-MNIST, {args.reps} interleaved rounds"
    )
    configs = list(itertools.product(args.families, args.widths))
    models = {}
    for family, width in configs:
        torch.manual_seed(0)
        student = build_student(
            family,
            width,
            args.depth,
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            stem=stem_for(family, data.image_size),
        ).eval()
        models[family, width] = backend.quantize_with_fp32(student, calibration)
    timing = {"threads": args.threads, "min_run_time_s": args.min_run_time}
    runs: dict[tuple, list[tuple[float, float]]] = {config: [] for config in configs}
    for _ in range(args.reps):
        for config in configs:
            int8, fp32 = models[config]
            runs[config].append(
                (
                    measure_latency(int8, example, **timing).median_ms,
                    measure_latency(fp32, example, **timing).median_ms,
                )
            )
    print(
        "| family | width | int8 ms | fp32 ms | speed-up (median) | speed-up range |\n|---|---|---|---|---|---|"
    )
    for (family, width), pairs in runs.items():
        ups = [fp32 / int8 for int8, fp32 in pairs]
        print(
            f"| {family} | {width:g} | {statistics.median(p[0] for p in pairs):.3f} | "
            f"{statistics.median(p[1] for p in pairs):.3f} | {statistics.median(ups):.2f}x | "
            f"{min(ups):.2f}-{max(ups):.2f}x |"
        )
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
