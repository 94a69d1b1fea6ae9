"""Fashion-MNIST through the built-in loader against the same images as a PNG ImageFolder. Run by hand.

Writes a ``--images`` subsample of Fashion-MNIST's training split (and its whole test split) as PNG
files in torchvision's ImageFolder layout (one folder per class name), then runs the same study twice
from study files: once on ``dataset: fashion_mnist`` with ``train_subsample``, once on
``dataset: image_folder`` over the PNGs. The two draw different (equally sized) training subsets and
validation splits, so their figures should agree within seed noise, not exactly. Prints, per source:
data loading time, teacher test top-1, and the completed students' test top-1 and retention.

    .venv/bin/python benchmarks/image_folder.py --images 12000 --trials 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import autokd
from autokd.config import load_study_file
from autokd.data import DATASETS
from autokd.resources import load_study_data

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        pixels = np.round(image[0] * 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(root / CLASSES[int(label)] / f"{i:05d}.png")


def study(name: str, data: dict, args: argparse.Namespace) -> dict:
    return {
        "name": name,
        "seed": 0,
        "data": {**data, "image_size": 32},
        "teacher": {"model": "resnet18", "epochs": args.teacher_epochs},
        "search_space": {
            "families": ["resnet"],
            "width": [0.125, 0.375],
            "depth": [0.5, 1.0],
            "methods": ["hinton_kd"],
        },
        "budget": {"trials": args.trials, "epochs": args.epochs},
        "early_stopping": {"enabled": False},
        "sampler": {"kind": "random", "startup_trials": args.trials},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=12000, help="training images of each source")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=int, default=5)
    args = parser.parse_args()

    raw = DATASETS.get("fashion_mnist")(None, False)
    pick = np.random.default_rng(1).permutation(len(raw.train_labels))[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        write_folder(root / "pngs" / "train", raw.train_images[pick], raw.train_labels[pick])
        write_folder(root / "pngs" / "test", raw.test_images, raw.test_labels)
        print(f"# wrote {args.images} + {len(raw.test_labels)} PNGs in {time.perf_counter() - start:.0f} s")
        sources = {
            "fashion_mnist": {"dataset": "fashion_mnist", "train_subsample": args.images},
            "image_folder": {"dataset": "image_folder", "train_dir": "pngs/train", "test_dir": "pngs/test"},
        }
        print(
            "| source | load s | teacher test top-1 | students | student test top-1 (median, range) | retention (median) |"
        )
        print("|---|---|---|---|---|---|")
        for source, data in sources.items():
            path = root / f"{source}.yaml"
            path.write_text(yaml.safe_dump(study(f"folder-bench-{source}", data, args), sort_keys=False))
            start = time.perf_counter()
            load_study_data(load_study_file(path))
            load_s = time.perf_counter() - start
            result = autokd.search(
                path, runs_dir=root / "runs", reports_dir=None, progress=False, log=lambda _: None
            )
            done = [t for t in result.records.trials if t.completed]
            tops = [t.result.int8_accuracy for t in done]
            retention = statistics.median(t.result.retention for t in done)
            print(
                f"| {source} | {load_s:.1f} | {result.records.teacher['test_accuracy']:.4f} | {len(done)} | "
                f"{statistics.median(tops):.4f} ({min(tops):.4f}-{max(tops):.4f}) | {retention:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
