"""Fashion-MNIST (60k train / 10k test, 28×28 grey, 10 classes) from the standard IDX .gz files.

Looked for in ``data_dir``, where Debian's ``dataset-fashion-mnist`` installs them, then in ./data; with
``download: true`` torchvision fetches them instead (needs the internet).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from autokd.data import DatasetUnavailableError, RawDataset, register_dataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_DIR = Path("data")  # where torchvision puts it (data/FashionMNIST/raw)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / "raw" / stem):
        if candidate.exists():
            return candidate
    return None


def _torchvision_download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


@register_dataset("fashion_mnist")
def load_fashion_mnist(data_dir: Path | None, download: bool) -> RawDataset:
    """Fashion-MNIST from ``data_dir`` if given (only there), else Debian's package or ./data; with
    ``download``, torchvision fetches what is not found."""
    # A data_dir the user names is the only place looked in: never silently another copy.
    directories = [data_dir] if data_dir is not None else [DEBIAN_DIR, DOWNLOAD_DIR / "FashionMNIST" / "raw"]
    for directory in directories:
        paths = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(paths.values()):
            break
    else:
        if not download and data_dir is not None:
            raise DatasetUnavailableError(
                f"Fashion-MNIST's IDX files are not in data.data_dir = {str(data_dir)!r} (looked for "
                f"{', '.join(FILES.values())}, optionally .gz); point data.data_dir at them, drop it to use "
                "Debian's dataset-fashion-mnist, or set data.download: true to fetch them there"
            )
        if not download:
            looked = ", ".join(str(d) for d in directories)
            raise DatasetUnavailableError(
                f"Fashion-MNIST not found in {looked}; install it with "
                "'sudo apt-get install dataset-fashion-mnist', point data.data_dir at the IDX files, "
                "or set data.download: true to fetch it with torchvision"
            )
        raw = _torchvision_download(data_dir or DOWNLOAD_DIR)
        paths = {key: _find(raw, stem) for key, stem in FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}  # type: ignore[arg-type]
    return RawDataset(
        train_images=(arrays["train_images"][:, None] / 255.0).astype(np.float32),
        train_labels=arrays["train_labels"],
        test_images=(arrays["test_images"][:, None] / 255.0).astype(np.float32),
        test_labels=arrays["test_labels"],
        num_classes=10,
    )
