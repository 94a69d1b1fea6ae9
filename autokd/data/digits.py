"""scikit-learn's digits (1797 8×8 grey images, 10 classes): ships with scikit-learn, the fast case."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autokd.data import RawDataset, register_dataset


@register_dataset("digits")
def load_digits(data_dir: Path | None, download: bool) -> RawDataset:
    """Digits split 80/20 into train/test with a fixed seed (the dataset has no official split)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(1234).permutation(len(images))
    n_test = len(images) // 5
    test, train = order[:n_test], order[n_test:]
    return RawDataset(images[train], bunch.target[train], images[test], bunch.target[test], num_classes=10)
