"""Dataset registry, Fashion-MNIST IDX loading, splits and preprocessing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from autokd.data import DATASETS, DatasetUnavailableError, fashion_mnist, load_splits
from autokd.data.fashion_mnist import read_idx


def write_idx(path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for stem, n in (("train", 200), ("t10k", 50)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_registry_holds_both_datasets():
    assert {"fashion_mnist", "digits"} <= set(DATASETS.names())


def test_read_idx_round_trips_shape_and_values(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)


def test_fashion_mnist_loads_from_data_dir_with_subsample_and_val_split(fake_fashion):
    splits = load_splits("fashion_mnist", data_dir=fake_fashion, train_subsample=100, val_fraction=0.2)
    assert splits.train_x.shape == (80, 1, 32, 32) and splits.val_x.shape == (20, 1, 32, 32)
    assert splits.test_x.shape == (50, 1, 32, 32) and splits.num_classes == 10


def test_train_val_and_test_do_not_overlap(fake_fashion):
    splits = load_splits("fashion_mnist", data_dir=fake_fashion, image_size=28, val_fraction=0.25)
    train = {t.numpy().tobytes() for t in splits.train_x}
    assert not train & {v.numpy().tobytes() for v in splits.val_x}
    assert len(splits.train_x) + len(splits.val_x) == 200


def test_normalisation_uses_training_statistics(fake_fashion):
    splits = load_splits("fashion_mnist", data_dir=fake_fashion, image_size=28)
    assert abs(float(splits.train_x.mean())) < 1e-4 and abs(float(splits.train_x.std()) - 1) < 1e-2


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.setattr(fashion_mnist, "DOWNLOAD_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_splits("fashion_mnist")


def test_a_data_dir_without_fashion_mnist_is_refused_not_replaced_by_debians(
    tmp_path, fake_fashion, monkeypatch
):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", fake_fashion)  # a copy elsewhere must not be used
    with pytest.raises(DatasetUnavailableError, match=r"not in data.data_dir = '.*empty'"):
        load_splits("fashion_mnist", data_dir=tmp_path / "empty")


def test_digits_is_resized_and_split():
    splits = load_splits("digits", image_size=32, val_fraction=0.1)
    assert splits.train_x.shape[1:] == (1, 32, 32)
    assert len(splits.train_x) + len(splits.val_x) + len(splits.test_x) == 1797


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="available: digits, fashion_mnist"):
        load_splits("cifar99")


def test_a_training_subsample_that_leaves_too_few_images_is_one_line():
    from autokd.config import StudyFileError
    from autokd.data import load_splits

    with pytest.raises(StudyFileError, match=r"field 'data.train_subsample' = 3: leaves 2 training image"):
        load_splits("digits", train_subsample=3, val_fraction=0.2)
