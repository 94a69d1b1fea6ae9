"""training.cpu_bf16: how much faster a training step is in bfloat16 on this CPU, and whether the
student learns as well. Run by hand on a quiet machine:

    .venv/bin/python benchmarks/cpu_bf16.py              # step times, then accuracy over 3 seeds
    .venv/bin/python benchmarks/cpu_bf16.py --rounds 5 --seeds 5

Step times: autokd's own training loop (:func:`autokd.train.train`, batch 128, Fashion-MNIST-sized
random images) for a narrow student and the reference teacher's architecture, FP32 and bfloat16
rounds interleaved; median and range over the rounds, each round's first three steps (warm-up)
excluded. Accuracy: the narrow student trained on a 5,000-image Fashion-MNIST subsample (Debian's
package or data/) in each precision with the same seeds, test top-1 mean ± std. The speed-up needs a
CPU with native bfloat16 (AVX512-BF16 or AMX); elsewhere expect a slow-down.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from autokd.data import load_splits
from autokd.students import build_student
from autokd.train import TrainSettings, evaluate, train

ARCHITECTURES = {  # name: (width, depth, stem stride)
    "ResNet w0.125 d0.5 (83K parameters)": (0.125, 0.5, 2),
    "ResNet-18 half width (2.8M, the reference study's teacher)": (0.5, 1.0, 1),
}


def model(width: float, depth: float, stride: int) -> torch.nn.Module:
    net = build_student("resnet", width, depth, num_classes=10, in_chans=1, stem="small")
    net.conv1.stride = (stride, stride)
    return net


def step_ms(net: torch.nn.Module, cpu_bf16: bool, steps: int, size: int) -> float:
    """Milliseconds per training step over ``steps`` steps, after a three-step warm-up (oneDNN builds
    its kernels and the allocator grows during the first steps)."""
    x, y = torch.randn(128 * steps, 1, size, size), torch.randint(0, 10, (128 * steps,))
    train(net, x[: 3 * 128], y[: 3 * 128], TrainSettings(epochs=1, cpu_bf16=cpu_bf16))
    started = time.perf_counter()
    train(net, x, y, TrainSettings(epochs=1, cpu_bf16=cpu_bf16))
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved FP32/bf16 rounds per model")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the accuracy comparison")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the accuracy comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=28)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{args.threads} threads, batch 128, {args.image_size} px\n"
    )
    print("| model | FP32 ms/step | bfloat16 ms/step | speed-up |\n|---|---|---|---|")
    for name, (width, depth, stride) in ARCHITECTURES.items():
        timed: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                torch.manual_seed(0)
                timed[bf16].append(step_ms(model(width, depth, stride), bf16, args.steps, args.image_size))
        fp32, bf16 = (statistics.median(timed[k]) for k in (False, True))
        spread = {k: f"{min(v):.0f}-{max(v):.0f}" for k, v in timed.items()}
        print(f"| {name} | {fp32:.0f} ({spread[False]}) | {bf16:.0f} ({spread[True]}) | {fp32 / bf16:.2f}x |")

    if args.seeds < 1:
        return
    data = load_splits("fashion_mnist", train_subsample=5000, val_fraction=0.1, image_size=args.image_size)
    accuracy: dict[bool, list[float]] = {False: [], True: []}
    for seed in range(args.seeds):
        for bf16 in (False, True):
            torch.manual_seed(seed)
            net = model(*ARCHITECTURES["ResNet w0.125 d0.5 (83K parameters)"])
            settings = TrainSettings(epochs=args.epochs, seed=seed, cpu_bf16=bf16)
            train(net, data.train_x, data.train_y, settings)
            accuracy[bf16].append(evaluate(net, data.test_x, data.test_y))
    print(
        f"\nResNet w0.125 d0.5, {len(data.train_x)} training images, {args.epochs} epochs, "
        f"{args.seeds} seeds: test top-1"
    )
    for bf16, label in ((False, "FP32"), (True, "bfloat16")):
        values = accuracy[bf16]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"  {label}: {statistics.mean(values):.4f} ± {std:.4f}  ({', '.join(f'{v:.4f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
