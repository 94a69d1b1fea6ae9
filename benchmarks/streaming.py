"""Epoch time of the in-memory path against the streamed path, on the same PNG ImageFolder. Run by hand.

Writes a ``--images`` subsample of Fashion-MNIST's training split (and ``--test`` test images) as PNG
files in torchvision's ImageFolder layout, then loads the folder held in memory (``in_memory: true``)
and streamed from disk (``in_memory: false``) with each ``--workers`` count. For each path it times,
in interleaved rounds (the paths take turns, so drift on a shared machine hits them alike):

- load: reading the study's data (in memory: decoding every image once; streamed: the pass that
  computes the per-channel statistics);
- cache: computing the teacher-output cache (one view) over the training split;
- epoch: one distillation epoch of a student (Hinton KD from that cache), as a trial trains it;
- eval: one pass over the validation split.

Prints the median and range of each over ``--rounds`` rounds, and checks that both paths give the
student the same accuracy (they read the same images in the same order).

    .venv/bin/python benchmarks/streaming.py --images 12000 --workers 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autokd.config import parse_study
from autokd.data import DATASETS, load_data
from autokd.methods import METHODS
from autokd.students import build_student
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import TrainSettings, WeightedMethod, evaluate, train

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8), "L").save(
            root / CLASSES[int(label)] / f"{i:05d}.png"
        )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def one_round(name: str, fields: dict, root: Path, teacher: torch.nn.Module, args) -> dict:
    section = parse_study({"name": "bench", "data": fields}).data
    row = {}
    row["load"], splits = timed(lambda: load_data(section, seed=0))
    row["cache"], outputs = timed(
        lambda: build_teacher_outputs(
            teacher, splits.train_x, root / "cache" / name / str(time.time_ns()), "t", log=lambda _: None
        )
    )
    torch.manual_seed(0)
    student = build_student("resnet", 0.25, 0.5, num_classes=10, in_chans=1)
    method = WeightedMethod(METHODS.get("hinton_kd")(temperature=4.0), 1.0)
    settings = TrainSettings(epochs=1, batch_size=128)
    row["epoch"], _ = timed(
        lambda: train(student, splits.train_x, splits.train_y, settings, methods=[method], teacher=outputs)
    )
    row["eval"], accuracy = timed(lambda: evaluate(student, splits.val_x, splits.val_y))
    row["accuracy"] = accuracy
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=12000, help="training images written as PNGs")
    parser.add_argument("--test", type=int, default=2000, help="test images written as PNGs")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="DataLoader workers (streamed)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    METHODS.load()

    raw = DATASETS.get("fashion_mnist")(None, False)
    pick = np.random.default_rng(1).permutation(len(raw.train_labels))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root / "train", raw.train_images[pick], raw.train_labels[pick])
        write_folder(root / "test", raw.test_images[: args.test], raw.test_labels[: args.test])
        folder = {"dataset": "image_folder", "train_dir": str(root / "train"), "test_dir": str(root / "test")}
        paths = {"in memory": {**folder, "in_memory": True}}
        for w in args.workers:
            paths[f"streamed, {w} worker(s)"] = {**folder, "in_memory": False, "loader_workers": w}
        teacher = build_student("resnet", 1.0, 1.0, num_classes=10, in_chans=1).eval()  # resnet18's shape
        rows: dict[str, list[dict]] = {name: [] for name in paths}
        for r in range(args.rounds):
            for name, fields in paths.items():
                rows[name].append(one_round(name, fields, root, teacher, args))
                print(
                    f"# round {r + 1}: {name}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in rows[name][-1].items()),
                    flush=True,
                )
        n_train = int(round(args.images * 0.9))
        print(
            f"\n{args.images} PNGs (28x28 grey, read at 32 px): {n_train} train / {args.images - n_train} val, "
            f"{args.rounds} rounds, {args.threads} torch threads; median (range) seconds"
        )
        print(
            "| path | load | teacher cache | student epoch | val pass | student val top-1 (teacher untrained) |"
        )
        print("|---|---|---|---|---|---|")
        for name, results in rows.items():
            cells = []
            for key in ("load", "cache", "epoch", "eval"):
                values = [row[key] for row in results]
                cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
            accuracy = {round(row["accuracy"], 4) for row in results}
            print(f"| {name} | " + " | ".join(cells) + f" | {', '.join(map(str, sorted(accuracy)))} |")


if __name__ == "__main__":
    main()
