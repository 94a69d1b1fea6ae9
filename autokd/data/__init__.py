"""Datasets behind one registry, served as in-memory tensors.

A dataset is a provider function in its own file in this package, decorated with
:func:`register_dataset`; every module here is imported the first time the registry is used.

A provider returns the official train and test splits as uint8/float arrays; :func:`load_splits`
subsamples train, carves the validation split from it (for model selection and early stopping; the
test split is only used for final numbers), normalises and resizes, and returns tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autokd.registry import Registry


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class RawDataset:
    """What a provider returns: images as (N, C, H, W) arrays with values in [0, 1], integer labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int


@dataclass
class DataSplits:
    """Normalised tensors for the three splits; the test split is only for the final numbers."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


DatasetProvider = Callable[[Path | None, bool], RawDataset]
DATASETS: Registry[DatasetProvider] = Registry("dataset", builtins="autokd.data")


def register_dataset(name: str) -> Callable[[DatasetProvider], DatasetProvider]:
    """Register a provider ``fn(data_dir, download) -> RawDataset`` under ``name``."""
    return DATASETS.register(name)


def _to_tensor(images: np.ndarray, mean: float, std: float, image_size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = (x - mean) / std
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous()


def load_splits(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    train_subsample: int | None = None,
    val_fraction: float = 0.1,
    image_size: int = 32,
    seed: int = 0,
) -> DataSplits:
    """Load ``name`` and return normalised train/val/test tensors.

    ``train_subsample`` draws that many training images (stratified by nothing but the seed) before
    the validation split is carved out of them; the test split is always complete.
    """
    provider = DATASETS.get(name)
    raw = provider(Path(data_dir) if data_dir else None, download)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(raw.train_labels))
    if train_subsample is not None:
        order = order[: min(train_subsample, len(order))]
    n_val = max(1, int(round(len(order) * val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) < raw.num_classes:
        from autokd.config import StudyFileError

        raise StudyFileError(
            f"field 'data.train_subsample' = {train_subsample}: leaves {len(train_idx)} training image(s) "
            f"after the validation split (val_fraction {val_fraction:g}); {name} has {raw.num_classes} "
            f"classes: use at least {int(np.ceil(raw.num_classes / (1 - val_fraction))) + 1}"
        )
    train_images = raw.train_images[train_idx]
    # Statistics from the training split only, so nothing about val/test leaks into preprocessing.
    mean = float(train_images.mean())
    std = float(train_images.std()) or 1.0

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return DataSplits(
        train_x=_to_tensor(train_images, mean, std, image_size),
        train_y=labels(raw.train_labels[train_idx]),
        val_x=_to_tensor(raw.train_images[val_idx], mean, std, image_size),
        val_y=labels(raw.train_labels[val_idx]),
        test_x=_to_tensor(raw.test_images, mean, std, image_size),
        test_y=labels(raw.test_labels),
        num_classes=raw.num_classes,
    )
