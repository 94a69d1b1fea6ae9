"""The user's own data: ImageFolder, torchvision datasets by name, factories; per-channel normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from autokd.config import StudyFileError, load_study_file, parse_study
from autokd.data import DatasetUnavailableError, load_data
from autokd.data.sources import DataSourceError


def data_of(**fields):
    return parse_study({"name": "own", "data": fields}).data


def test_an_image_folder_keeps_its_class_names_and_rgb_channels(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "test", per_class=4)
    splits = load_data(
        data_of(dataset="image_folder", train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "test"))
    )
    assert splits.classes == ("cat", "dog", "eel") and splits.num_classes == 3
    assert splits.train_x.shape[1:] == (3, 32, 32) and len(splits.test_x) == 12
    assert len(splits.train_x) + len(splits.val_x) == 36


def test_an_image_folder_is_normalised_per_channel_by_the_training_split(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", per_class=20)
    splits = load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "train")))
    assert len(set(np.round(splits.mean, 3))) == 3, "each channel has its own mean"
    per_channel = splits.train_x.mean(dim=(0, 2, 3))
    assert torch.allclose(per_channel, torch.zeros(3), atol=1e-4)


def test_without_a_test_folder_a_stratified_test_split_is_held_out_and_said(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", per_class=10)
    splits = load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "train"), test_fraction=0.2))
    assert torch.bincount(splits.test_y).tolist() == [2, 2, 2]
    assert "held out" in splits.notes[0] and "stratified" in splits.notes[0]


def test_grey_images_stay_one_channel(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", mode="L")
    splits = load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "train")))
    assert splits.in_chans == 1


def test_channels_converts_rgb_images_to_grey(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train")
    splits = load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "train"), channels=1))
    assert splits.in_chans == 1


def test_images_of_several_sizes_are_resized_to_the_image_size(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", classes=("a", "b"), size=20)
    write_image_folder(tmp_path / "train", classes=("c",), size=45)
    splits = load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "train"), image_size=24))
    assert splits.train_x.shape[1:] == (3, 24, 24)


def test_a_validation_folder_with_other_classes_is_one_line(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train")
    write_image_folder(tmp_path / "val", classes=("cat", "dog", "fox"))
    section = data_of(
        dataset="image_folder", train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val")
    )
    with pytest.raises(DataSourceError, match=r"data.val_dir.*missing: eel; not in train: fox"):
        load_data(section)


def test_a_missing_image_folder_names_the_field(tmp_path):
    with pytest.raises(DataSourceError, match=r"field 'data.train_dir' = '.*nowhere': no such folder"):
        load_data(data_of(dataset="image_folder", train_dir=str(tmp_path / "nowhere")))


def test_an_image_folder_needs_a_train_dir():
    with pytest.raises(StudyFileError, match="field 'data.train_dir' is required with dataset image_folder"):
        data_of(dataset="image_folder")


def test_folder_fields_belong_to_image_folder():
    with pytest.raises(StudyFileError, match="field 'data.test_dir' belongs to dataset image_folder"):
        data_of(dataset="fashion_mnist", test_dir="x")


def test_relative_data_paths_are_relative_to_the_study_file(tmp_path, monkeypatch, write_image_folder):
    write_image_folder(tmp_path / "project" / "images")
    study_file = tmp_path / "project" / "own.yaml"
    study_file.write_text(
        yaml.safe_dump({"name": "own", "data": {"dataset": "image_folder", "train_dir": "images"}})
    )
    monkeypatch.chdir(tmp_path)  # somewhere else
    study = load_study_file("project/own.yaml")
    assert study.data.train_dir == str((tmp_path / "project" / "images").resolve())
    assert load_data(study.data).num_classes == 3


def _write_mnist(root, n_train=30, n_test=10):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array in (
            ("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8)),
        ):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (raw / f"{prefix}-{kind}").write_bytes(header + array.tobytes())
    return root


def test_a_torchvision_dataset_by_name_reads_the_users_root(tmp_path):
    _write_mnist(tmp_path)
    splits = load_data(data_of(dataset="torchvision:MNIST", data_dir=str(tmp_path), image_size=28))
    assert splits.train_x.shape[1:] == (1, 28, 28) and len(splits.test_x) == 10
    assert splits.num_classes == 10 and splits.classes[0].startswith("0")


def test_a_torchvision_dataset_missing_from_its_root_says_how_to_fetch_it(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="MNIST not found under data.data_dir.*download: true"):
        load_data(data_of(dataset="torchvision:MNIST", data_dir=str(tmp_path)))


def test_a_misspelt_torchvision_dataset_says_which_are_close(tmp_path):
    with pytest.raises(DataSourceError, match="not a torchvision dataset; close matches: CIFAR10"):
        load_data(data_of(dataset="torchvision:CIFAR01", data_dir=str(tmp_path)))


def test_a_torchvision_dataset_needs_a_root():
    with pytest.raises(
        StudyFileError, match="field 'data.data_dir' is required with dataset 'torchvision:CIFAR10'"
    ):
        data_of(dataset="torchvision:CIFAR10")


FACTORY = """
import torch
from torch.utils.data import TensorDataset

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 16, 16, generator=g)
    y = torch.arange(40) % 4
    train = TensorDataset(x, y)
    train.classes = ["a", "b", "c", "d"]
    return {"train": train, "test": TensorDataset(x[:8], y[:8])}

def wrong():
    return [1, 2, 3, 4]
"""


def test_a_factory_file_returns_the_datasets(tmp_path):
    (tmp_path / "my_data.py").write_text(FACTORY)
    splits = load_data(data_of(dataset="factory", factory=f"{tmp_path / 'my_data.py'}:make", image_size=16))
    assert splits.classes == ("a", "b", "c", "d") and len(splits.test_x) == 8
    assert splits.train_x.shape[1:] == (3, 16, 16)


def test_a_factory_returning_something_else_is_one_line(tmp_path):
    (tmp_path / "my_data.py").write_text(FACTORY)
    with pytest.raises(DataSourceError, match=r"returned list; return a dict"):
        load_data(data_of(dataset="factory", factory=f"{tmp_path / 'my_data.py'}:wrong"))


def test_a_factory_without_that_function_is_one_line(tmp_path):
    (tmp_path / "my_data.py").write_text(FACTORY)
    with pytest.raises(DataSourceError, match=r"has no function 'nope'"):
        load_data(data_of(dataset="factory", factory=f"{tmp_path / 'my_data.py'}:nope"))


def test_a_stated_mean_and_std_replace_the_computed_statistics(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train")
    section = data_of(
        dataset="image_folder",
        train_dir=str(tmp_path / "train"),
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
    )
    assert load_data(section).mean == (0.5, 0.5, 0.5)


def test_a_mean_for_other_channels_than_the_images_is_one_line(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train")
    section = data_of(dataset="image_folder", train_dir=str(tmp_path / "train"), mean=[0.5], std=[0.25])
    with pytest.raises(StudyFileError, match=r"'data.mean' has 1 value\(s\) but the images have 3 channel"):
        load_data(section)


def test_mean_without_std_is_refused():
    with pytest.raises(StudyFileError, match="field 'data.mean' needs 'data.std' too"):
        data_of(mean=[0.5])


def test_new_data_fields_leave_existing_teacher_keys_alone():
    """Teachers trained before the new data fields existed keep their folders."""
    # Both keys as autokd computed them before data.train_dir, factory, channels, mean and std existed.
    assert parse_study({"name": "a"}).teacher_key() == "0c9a7beffdce0f92"
    tiny = {"dataset": "digits", "image_size": 32}
    assert parse_study(
        {"name": "a", "data": tiny, "teacher": {"model": "resnet10t", "epochs": 3}}
    ).teacher_key() == ("b9cc6361a417b6b9")


def test_stated_normalisation_is_part_of_the_teachers_key():
    stated = parse_study({"name": "c", "data": {"mean": [0.3], "std": [0.3]}})
    assert stated.teacher_key() != parse_study({"name": "c"}).teacher_key()


@pytest.mark.slow
def test_the_model_card_of_own_data_carries_classes_and_per_channel_normalisation(own_data_export):
    _, export = own_data_export
    assert export.card["output"]["classes"] == ["cat", "dog", "eel"]
    assert export.card["input"]["shape"][1:] == [3, 32, 32] and len(export.card["input"]["mean"]) == 3


@pytest.mark.slow
def test_predict_on_image_files_preprocesses_them_as_the_study_did(own_data_export):
    """The card's preprocessing of the raw files gives the accuracy export measured on the study's tensors."""
    import autokd

    root, export = own_data_export
    rows = autokd.predict(export.directory, [root / "project" / "photos" / "test"])
    assert len(rows) == 18 and set(rows["class"]) <= {"cat", "dog", "eel"}
    truth = rows["path"].map(lambda p: p.split("/")[-2])
    assert (rows["class"] == truth).mean() == pytest.approx(export.accuracy)


@pytest.mark.slow
def test_predict_on_pixels_in_0_1_matches_predict_on_the_files(own_data_export):
    from PIL import Image

    import autokd

    root, export = own_data_export
    files = sorted((root / "project" / "photos" / "test" / "dog").glob("*.png"))
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float32).transpose(2, 0, 1) / 255 for f in files])
    from_files = autokd.predict(export.directory, files)
    from_pixels = autokd.predict(export.directory, pixels)
    assert from_files["class"].tolist() == from_pixels["class"].tolist()


@pytest.mark.slow
def test_export_evaluates_own_data_from_any_working_directory(own_data_export, tmp_path, monkeypatch):
    from autokd.deploy import evaluate_export

    _, export = own_data_export
    monkeypatch.chdir(tmp_path)
    accuracy, _ = evaluate_export(export.directory)
    assert accuracy == pytest.approx(export.accuracy)


@pytest.mark.slow
def test_a_loaded_export_takes_numpy_arrays(own_data_export):
    import autokd

    _, export = own_data_export
    student = autokd.load(export.directory)
    logits = student(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert tuple(logits.shape) == (2, 3)


def test_predict_on_a_missing_file_is_one_line(tmp_path):
    from autokd.deploy import ExportError, image_files

    with pytest.raises(ExportError, match="nothing.png: no such file or folder"):
        image_files([tmp_path / "nothing.png"])


@pytest.mark.slow
def test_the_predict_command_prints_each_images_class(own_data_export, capsys):
    from autokd.cli import main

    root, export = own_data_export
    image = next((root / "project" / "photos" / "test" / "eel").glob("*.png"))
    assert main(["predict", str(export.directory), str(image)]) == 0
    path, name, probability = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and name in {"cat", "dog", "eel"} and 0 < float(probability) <= 1
