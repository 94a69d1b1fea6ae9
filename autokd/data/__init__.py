"""Datasets, served as in-memory tensors or, where they do not fit, streamed from disk.

Where the images come from (:func:`load_data`, from a study's ``data`` section):

- a registered provider: a function in its own file in this package (or an extension), decorated
  with :func:`register_dataset` (the built-ins: ``fashion_mnist``, ``digits``);
- ``image_folder``, ``torchvision:NAME`` and ``factory``: the user's own images, through torchvision's
  ``ImageFolder``, its dataset classes, or a function returning torch Datasets
  (:mod:`autokd.data.sources`).

Each gives train and (usually) test images with values in [0, 1]. :func:`split_and_normalise`
subsamples train, holds out a stratified test split when there is none, carves the validation
split from train (for model selection and early stopping; the test split is only used for final
numbers), normalises per channel (the training split's statistics unless the study states the
teacher's), resizes, and returns tensors; images too large for memory stay on disk as
:class:`~autokd.data.stream.StreamedImages` (same splits, same normalisation, read by DataLoader
workers), which training, evaluation and the teacher cache read through :func:`batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autokd.data.stream import StreamedImages, batches, chunked
from autokd.registry import Registry

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetUnavailableError",
    "RawDataset",
    "StreamedImages",
    "batches",
    "channel_statistics",
    "chunked",
    "load_data",
    "load_splits",
    "register_dataset",
    "split_and_normalise",
]


class DatasetUnavailableError(RuntimeError):
    """The dataset's files are not on this machine; the message says how to get them."""


@dataclass(frozen=True)
class RawDataset:
    """What a provider returns: images as (N, C, H, W) arrays with values in [0, 1] (or the same as
    :class:`StreamedImages`, left on disk), integer labels.

    ``test_images`` may be None (no test split: one is held out); ``val_images`` is a validation split
    of the data's own (else one is carved from train); ``classes`` the class names, if known.
    """

    train_images: np.ndarray | StreamedImages
    train_labels: np.ndarray
    test_images: np.ndarray | StreamedImages | None
    test_labels: np.ndarray | None
    num_classes: int
    classes: tuple[str, ...] = ()
    val_images: np.ndarray | StreamedImages | None = None
    val_labels: np.ndarray | None = None
    notes: tuple[str, ...] = ()


@dataclass
class DataSplits:
    """Normalised images for the three splits (tensors, or :class:`StreamedImages` read batch by batch)
    and their labels (tensors); the test split is only for the final numbers."""

    train_x: torch.Tensor | StreamedImages
    train_y: torch.Tensor
    val_x: torch.Tensor | StreamedImages
    val_y: torch.Tensor
    test_x: torch.Tensor | StreamedImages
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()  # per channel, applied to [0, 1] pixels: (x - mean) / std
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # how the splits were made, where that is not obvious (e.g. held out)

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


def _to_tensor(images, mean: np.ndarray, std: np.ndarray, image_size: int) -> torch.Tensor | StreamedImages:
    if isinstance(images, StreamedImages):  # resized by its source's transform already
        from torchvision.transforms import v2

        return images.then(v2.Normalize(mean.tolist(), std.tolist()))
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = (x - torch.from_numpy(mean).view(1, -1, 1, 1)) / torch.from_numpy(std).view(1, -1, 1, 1)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.contiguous()


def channel_statistics(images: np.ndarray | StreamedImages) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, C, H, W) images (a zero deviation becomes 1);
    streamed images in one pass over them."""
    if isinstance(images, StreamedImages):
        from autokd.data.stream import channel_statistics as streamed_statistics

        return streamed_statistics(images)
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    std = images.std(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    return mean, np.where(std > 0, std, 1.0).astype(np.float32)


def _take(images: np.ndarray | StreamedImages, idx: np.ndarray):
    """The images at ``idx``: a copy of an array, a (lazy) subset of streamed images."""
    return images.subset(idx) if isinstance(images, StreamedImages) else images[idx]


def split_and_normalise(
    raw: RawDataset,
    *,
    name: str,
    train_subsample: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> DataSplits:
    """Subsample, split, normalise and resize ``raw`` (see the module docstring)."""
    from sklearn.model_selection import train_test_split

    notes = list(raw.notes)
    train_images, train_labels = raw.train_images, np.asarray(raw.train_labels)
    test_images, test_labels = raw.test_images, raw.test_labels
    if test_images is None:
        counts = np.bincount(train_labels, minlength=raw.num_classes)
        stratify = train_labels if counts.min() >= 2 else None
        train_idx, test_idx = train_test_split(
            np.arange(len(train_labels)), test_size=test_fraction, random_state=seed, stratify=stratify
        )
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        test_images, test_labels = _take(train_images, test_idx), train_labels[test_idx]
        train_images, train_labels = _take(train_images, train_idx), train_labels[train_idx]
        notes.append(
            f"no test split: {len(test_idx)} images ({test_fraction:.0%}{', stratified by class' if stratify is not None else ''}) "
            "held out of the training images as the test split"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train_labels))
    if train_subsample is not None:
        order = order[: min(train_subsample, len(order))]
    if raw.val_images is not None:
        val_images, val_labels = raw.val_images, np.asarray(raw.val_labels)
        train_idx = order
    else:
        n_val = max(1, int(round(len(order) * val_fraction)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        val_images, val_labels = _take(train_images, val_idx), train_labels[val_idx]
    if len(train_idx) < raw.num_classes:
        from autokd.config import StudyFileError

        need = int(np.ceil(raw.num_classes / (1 - val_fraction))) + 1
        what = f"field 'data.train_subsample' = {train_subsample}" if train_subsample else f"dataset {name}"
        raise StudyFileError(
            f"{what}: leaves {len(train_idx)} training image(s) after the validation split (val_fraction "
            f"{val_fraction:g}); {name} has {raw.num_classes} classes: use at least {need}"
        )
    train_part = _take(train_images, train_idx)
    channels = train_part.shape[1]
    if mean is not None:
        if len(mean) != channels:
            from autokd.config import StudyFileError

            raise StudyFileError(
                f"field 'data.mean' has {len(mean)} value(s) but the images have {channels} channel(s): "
                "give one per channel (or set data.channels)"
            )
        mean_a, std_a = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    else:
        # Statistics from the training split only, so nothing about val/test leaks into preprocessing.
        mean_a, std_a = channel_statistics(train_part)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.int64))

    return DataSplits(
        train_x=_to_tensor(train_part, mean_a, std_a, image_size),
        train_y=labels(train_labels[train_idx]),
        val_x=_to_tensor(val_images, mean_a, std_a, image_size),
        val_y=labels(val_labels),
        test_x=_to_tensor(test_images, mean_a, std_a, image_size),
        test_y=labels(test_labels),
        num_classes=raw.num_classes,
        mean=tuple(float(v) for v in mean_a),
        std=tuple(float(v) for v in std_a),
        classes=tuple(raw.classes),
        notes=tuple(notes),
    )


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
    """A registered dataset's normalised train/val/test tensors (:func:`split_and_normalise`).

    ``train_subsample`` draws that many training images (stratified by nothing but the seed) before
    the validation split is carved out of them; the test split is always complete.
    """
    provider = DATASETS.get(name)
    raw = provider(Path(data_dir) if data_dir else None, download)
    return split_and_normalise(
        raw,
        name=name,
        train_subsample=train_subsample,
        val_fraction=val_fraction,
        image_size=image_size,
        seed=seed,
    )


def load_data(section, seed: int = 0) -> DataSplits:
    """The tensors a study's ``data`` section (:class:`autokd.config.DataSection`) describes."""
    from autokd.data.sources import load_raw

    raw = load_raw(section)
    return split_and_normalise(
        raw,
        name=section.dataset,
        train_subsample=section.train_subsample,
        val_fraction=section.val_fraction,
        test_fraction=section.test_fraction,
        image_size=section.image_size,
        mean=section.mean,
        std=section.std,
        seed=seed,
    )
