"""The user's own images: an ImageFolder, a torchvision dataset by name, or a factory of Datasets.

Each is read through torchvision (``ImageFolder``, the ``torchvision.datasets`` classes) with a
``transforms.v2`` pipeline (channel conversion, resize to the study's ``image_size``, [0, 1] floats).
Where all splits fit under ``data.in_memory_max_gb`` (as float32 at the study's size) they are read
once through a ``DataLoader`` and held in memory as arrays; otherwise (or with ``in_memory: false``)
they stay on disk as :class:`~autokd.data.stream.StreamedImages`, read batch by batch by DataLoader
workers (:func:`stream_or_load`). Normalisation and splitting are
:func:`autokd.data.split_and_normalise`'s either way.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autokd.config import StudyFileError
from autokd.data import DATASETS, DatasetUnavailableError, RawDataset
from autokd.data.stream import StreamedImages
from autokd.registry import load_callable

LOAD_BATCH = 256


class DataSourceError(StudyFileError):
    """The study's data cannot be read as it says; the message is one line naming the field."""


def image_transform(image_size: int | None, channels: int | None):
    """torchvision v2 pipeline from a PIL image, array or tensor to a (C, size, size) float in [0, 1]."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if channels == 1:
        steps.append(v2.Grayscale(num_output_channels=1))
    elif channels == 3:
        steps.append(v2.RGB())
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(steps)


class _Transformed(Dataset):
    """``dataset``'s (image, label) pairs with ``transform`` applied to the image."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        image, label = self.dataset[index][:2]
        return self.transform(image), int(label)


def materialise(dataset: Dataset, transform, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, label) of ``dataset`` through ``transform``, stacked: (N, C, H, W) floats, labels."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataSourceError(f"{what}: holds no images")
    images, labels = [], []
    try:
        for batch, label in DataLoader(_Transformed(dataset, transform), batch_size=LOAD_BATCH):
            images.append(batch.numpy())
            labels.append(label.numpy())
    except RuntimeError as exc:  # images of several sizes cannot be stacked
        if "stack" in str(exc) or "size" in str(exc):
            raise DataSourceError(
                f"{what}: its images differ in size or channels ({str(exc).splitlines()[0][:120]}); "
                "set data.channels to 1 or 3"
            ) from None
        raise
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def default_loader_workers() -> int:
    """DataLoader workers when the study does not say: half the cores (training uses the rest), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _labels_of(dataset: Dataset) -> np.ndarray:
    """The labels of ``dataset`` without decoding its images where it lists them (``targets``/``labels``,
    as torchvision's datasets do); otherwise read item by item."""
    for attribute in ("targets", "labels"):
        labels = getattr(dataset, attribute, None)
        if labels is not None and len(labels) == len(dataset):  # type: ignore[arg-type]
            return np.asarray(labels, dtype=np.int64).reshape(-1)
    return np.fromiter((int(dataset[i][1]) for i in range(len(dataset))), dtype=np.int64)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Split:
    """One split of a source before it is read: the Dataset, its transform, and how errors name it."""

    dataset: Dataset
    transform: object
    what: str


def stream_or_load(section, splits: dict[str, Split]) -> tuple[dict[str, tuple], str | None]:
    """Each split's (images, labels): in memory, or streamed when the splits together would take more
    than ``data.in_memory_max_gb`` as float32 (or ``data.in_memory: false``); and a note saying why
    they stream (None in memory)."""
    for split in splits.values():
        if len(split.dataset) == 0:  # type: ignore[arg-type]
            raise DataSourceError(f"{split.what}: holds no images")
    train = splits["train"]
    try:
        shape = tuple(train.transform(train.dataset[0][0]).shape)
    except (TypeError, ValueError, OSError) as exc:
        raise DataSourceError(f"{train.what}: its first image cannot be read ({exc})") from None
    images = sum(len(s.dataset) for s in splits.values())  # type: ignore[arg-type]
    needed = images * int(np.prod(shape)) * 4
    limit = section.in_memory_max_gb * 1e9
    stream = section.in_memory is False or (section.in_memory == "auto" and needed > limit)
    if not stream:
        return {name: materialise(s.dataset, s.transform, s.what) for name, s in splits.items()}, None
    workers = section.loader_workers if section.loader_workers is not None else default_loader_workers()
    out = {
        name: (
            StreamedImages(s.dataset, s.transform, workers=workers, item_shape=shape),
            _labels_of(s.dataset),
        )
        for name, s in splits.items()
    }
    why = (
        "data.in_memory is false"
        if section.in_memory is False
        else f"{needed / 1e9:.1f} GB as float32 is over data.in_memory_max_gb = {section.in_memory_max_gb:g}"
    )
    return out, (
        f"streamed from disk ({why}): {images} images read batch by batch by {workers} DataLoader "
        f"worker(s) each epoch"
    )


def _channels_of(section, default: int | None) -> int | None:
    return section.channels if section.channels is not None else default


def _load_image(path: str):
    """The image as stored (ImageFolder's own loader would make every image RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image if image.mode in ("1", "L", "RGB") else image.convert("RGB")


def _first_image_channels(folder) -> int:
    from PIL import Image

    with Image.open(folder.samples[0][0]) as image:
        return 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3


def _image_folder_split(directory: str, field: str, section, classes: Sequence[str] | None):
    from torchvision.datasets import ImageFolder

    path = Path(directory)
    if not path.is_dir():
        raise DataSourceError(f"field 'data.{field}' = {directory!r}: no such folder")
    try:
        folder = ImageFolder(str(path), loader=_load_image)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataSourceError(
            f"field 'data.{field}' = {directory!r}: not an ImageFolder ({str(exc).splitlines()[0][:160]}); "
            "put each class's images in a sub-folder named after the class"
        ) from None
    if classes is not None and list(folder.classes) != list(classes):
        missing = sorted(set(classes) - set(folder.classes))
        extra = sorted(set(folder.classes) - set(classes))
        raise DataSourceError(
            f"field 'data.{field}' = {directory!r}: its classes differ from data.train_dir's "
            f"(missing: {', '.join(missing[:5]) or 'none'}; not in train: {', '.join(extra[:5]) or 'none'})"
        )
    # Grey if the first image is grey, else RGB (every image is converted to that); data.channels decides.
    transform = image_transform(section.image_size, _channels_of(section, _first_image_channels(folder)))
    return Split(folder, transform, f"field 'data.{field}' = {directory!r}"), tuple(folder.classes)


def load_image_folder(section) -> RawDataset:
    """``train_dir`` (and ``val_dir``/``test_dir``) in torchvision's ImageFolder layout."""
    train, classes = _image_folder_split(section.train_dir, "train_dir", section, None)
    splits = {"train": train}
    for name in ("val", "test"):
        directory = getattr(section, f"{name}_dir")
        if directory:
            splits[name] = _image_folder_split(directory, f"{name}_dir", section, classes)[0]
    return _raw(section, splits, len(classes), classes)


def _raw(section, splits: dict[str, Split], num_classes: int | None, classes: tuple[str, ...]) -> RawDataset:
    """The RawDataset of ``splits`` (in memory or streamed); ``num_classes`` None: from the labels."""
    arrays, note = stream_or_load(section, splits)
    if num_classes is None:
        labels = np.concatenate([y for _, y in arrays.values()])
        if labels.min() < 0:
            raise DataSourceError(f"{splits['train'].what}: labels must be 0, 1, ...; got {labels.min()}")
        num_classes = len(classes) or int(labels.max()) + 1
    test = arrays.get("test", (None, None))
    val = arrays.get("val", (None, None))
    return RawDataset(
        *arrays["train"],
        test[0],
        test[1],
        num_classes=num_classes,
        classes=classes,
        val_images=val[0],
        val_labels=val[1],
        notes=(note,) if note else (),
    )


def _split_kwargs(cls, train: bool) -> dict:
    parameters = inspect.signature(cls).parameters
    if "train" in parameters:
        return {"train": train}
    if "split" in parameters:
        return {"split": "train" if train else "test"}
    return {}


def load_torchvision(section) -> RawDataset:
    """``torchvision:NAME``: the class NAME of ``torchvision.datasets``, its train and test splits."""
    import torchvision.datasets

    name = section.dataset.split(":", 1)[1]
    cls = getattr(torchvision.datasets, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, Dataset)):
        known = sorted(
            n for n, c in vars(torchvision.datasets).items() if inspect.isclass(c) and issubclass(c, Dataset)
        )
        import difflib

        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; close matches: {', '.join(close)}" if close else f"; e.g. {', '.join(known[:6])}"
        raise DataSourceError(f"field 'data.dataset' = {section.dataset!r}: not a torchvision dataset{hint}")
    root = Path(section.data_dir)
    splits = {}
    for train in (True, False):
        kwargs = _split_kwargs(cls, train)
        if not train and not kwargs:
            break  # a dataset with one split: the test split is held out of it
        try:
            splits[train] = cls(str(root), download=section.download, **kwargs)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            advice = "" if section.download else "; set data.download: true to fetch it (needs the internet)"
            raise DatasetUnavailableError(
                f"{name} not found under data.data_dir = {str(root)!r} ({str(exc).splitlines()[0][:120]}){advice}"
            ) from None
    grey = getattr(splits[True], "data", None)
    default_channels = 1 if getattr(grey, "ndim", 0) == 3 else None  # MNIST-style (N, H, W) tensors
    transform = image_transform(section.image_size, _channels_of(section, default_channels))
    parts = {"train": Split(splits[True], transform, section.dataset + " (train)")}
    if False in splits:
        parts["test"] = Split(splits[False], transform, section.dataset + " (test)")
    classes = tuple(str(c) for c in getattr(splits[True], "classes", ()) or ())
    return _raw(section, parts, len(classes) or None, classes)


def load_factory(section) -> RawDataset:
    """``factory``: a function returning ``{"train": Dataset, "test": Dataset[, "val": Dataset]}`` or
    ``(train, test)``; each item an (image, label) pair, the image a PIL image, array or tensor."""
    spec = section.factory
    returned = load_callable(spec, "data.factory", DataSourceError)()
    if isinstance(returned, tuple | list) and len(returned) in (1, 2, 3):
        returned = dict(zip(("train", "test", "val"), returned, strict=False))
    if not isinstance(returned, dict) or not isinstance(returned.get("train"), Dataset):
        raise DataSourceError(
            f"field 'data.factory' = {spec!r}: returned {type(returned).__name__}; return a dict "
            '{"train": Dataset, "test": Dataset} (test and "val" optional) or a tuple (train, test)'
        )
    unknown = set(returned) - {"train", "test", "val"}
    if unknown:
        raise DataSourceError(
            f"field 'data.factory' = {spec!r}: unknown split(s) {', '.join(sorted(unknown))}"
        )
    transform = image_transform(section.image_size, section.channels)
    parts = {
        split: Split(dataset, transform, f"field 'data.factory' = {spec!r} ({split})")
        for split, dataset in returned.items()
        if dataset is not None
    }
    classes = tuple(str(c) for c in getattr(returned["train"], "classes", ()) or ())
    return _raw(section, parts, None, classes)


def load_raw(section) -> RawDataset:
    """The raw arrays of a study's ``data`` section, whatever the source."""
    from autokd.config import FACTORY, IMAGE_FOLDER, TORCHVISION_PREFIX

    if section.dataset == IMAGE_FOLDER:
        return load_image_folder(section)
    if section.dataset == FACTORY:
        return load_factory(section)
    if section.dataset.startswith(TORCHVISION_PREFIX):
        return load_torchvision(section)
    provider = DATASETS.get(section.dataset)
    raw = provider(Path(section.data_dir) if section.data_dir else None, section.download)
    return _with_channels(raw, section.channels)


def _with_channels(raw: RawDataset, channels: int | None) -> RawDataset:
    """``raw`` with its images converted to ``channels`` (grey <-> RGB, torchvision's conversions)."""
    if channels is None or raw.train_images.shape[1] == channels:
        return raw
    from dataclasses import replace

    from torchvision.transforms.v2 import functional as TF

    def convert(images):
        if images is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = TF.rgb_to_grayscale(x, 1) if channels == 1 else TF.grayscale_to_rgb(x)
        return x.numpy()

    return replace(
        raw,
        train_images=convert(raw.train_images),
        test_images=convert(raw.test_images),
        val_images=convert(raw.val_images),
    )
