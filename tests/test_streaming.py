"""Data too large for memory: streamed from disk by DataLoader workers, the same images as in memory."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from autokd.augment import CropFlip
from autokd.config import StudyFileError, parse_study
from autokd.data import StreamedImages, load_data
from autokd.methods import METHODS
from autokd.students import build_student
from autokd.teacher_cache import build_teacher_outputs
from autokd.train import TrainSettings, WeightedMethod, evaluate, train

METHODS.load()


def data_of(**fields):
    return parse_study({"name": "own", "data": fields}).data


@pytest.fixture
def folder(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", per_class=14)
    write_image_folder(tmp_path / "test", per_class=4)
    return {
        "dataset": "image_folder",
        "train_dir": str(tmp_path / "train"),
        "test_dir": str(tmp_path / "test"),
    }


def both(folder, **fields):
    """The same study's data, held in memory and streamed (workers as given)."""
    memory = load_data(data_of(**folder, in_memory=True, **fields))
    streamed = load_data(data_of(**folder, in_memory=False, **fields))
    return memory, streamed


def test_streamed_images_are_the_in_memory_images(folder):
    memory, streamed = both(folder, loader_workers=0)
    assert isinstance(streamed.train_x, StreamedImages) and isinstance(memory.train_x, torch.Tensor)
    for split in ("train", "val", "test"):
        x_mem, x_str = getattr(memory, f"{split}_x"), getattr(streamed, f"{split}_x")
        assert x_str.shape == x_mem.shape
        assert torch.allclose(x_str[torch.arange(len(x_str))], x_mem, atol=1e-5), split
        assert torch.equal(getattr(memory, f"{split}_y"), getattr(streamed, f"{split}_y"))
    assert memory.mean == pytest.approx(streamed.mean, abs=1e-5)
    assert memory.std == pytest.approx(streamed.std, abs=1e-5)


def test_streaming_is_said_in_the_data_notes(folder):
    _, streamed = both(folder, loader_workers=0)
    assert any("streamed from disk (data.in_memory is false)" in note for note in streamed.notes)


def test_auto_streams_only_over_the_memory_limit(folder):
    assert isinstance(load_data(data_of(**folder)).train_x, torch.Tensor)
    over = load_data(data_of(**folder, in_memory_max_gb=1e-6, loader_workers=0))
    assert isinstance(over.train_x, StreamedImages)
    assert any("over data.in_memory_max_gb = 1e-06" in note for note in over.notes)


def test_a_held_out_test_split_streams_too(tmp_path, write_image_folder):
    write_image_folder(tmp_path / "train", per_class=10)
    memory, streamed = both(
        {"dataset": "image_folder", "train_dir": str(tmp_path / "train")}, loader_workers=0
    )
    assert isinstance(streamed.test_x, StreamedImages)
    assert torch.allclose(streamed.test_x[torch.arange(len(streamed.test_x))], memory.test_x, atol=1e-5)


FACTORY = """
import torch
from torch.utils.data import TensorDataset

def make():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 3, 12, 12, generator=g)
    return {"train": TensorDataset(x, torch.arange(30) % 3), "test": TensorDataset(x[:6], torch.arange(6) % 3)}
"""


def test_a_factory_without_a_label_list_streams_its_labels(tmp_path):
    (tmp_path / "mine.py").write_text(FACTORY)
    fields = {"dataset": "factory", "factory": f"{tmp_path / 'mine.py'}:make", "image_size": 12}
    memory, streamed = both(fields, loader_workers=0)
    assert streamed.num_classes == 3
    assert torch.equal(memory.train_y, streamed.train_y)


def test_a_builtin_dataset_cannot_be_told_to_stream():
    with pytest.raises(StudyFileError, match=r"field 'data.in_memory' = false: dataset 'digits'"):
        parse_study({"name": "s", "data": {"dataset": "digits", "in_memory": False}})


def test_where_the_images_live_is_not_part_of_the_teachers_key(folder):
    def key(**fields):
        return parse_study({"name": "s", "data": {**folder, **fields}}).teacher_key()

    assert key() == key(in_memory=False, loader_workers=3) == key(in_memory_max_gb=0.5)


def test_streamed_images_survive_pickling_for_worker_processes(folder):
    _, streamed = both(folder, loader_workers=0)
    copy = pickle.loads(pickle.dumps(streamed.train_x))
    assert torch.equal(copy[3], streamed.train_x[3])


def test_the_teacher_cache_over_streamed_images_equals_the_in_memory_one(folder, tmp_path):
    memory, streamed = both(folder, loader_workers=1)
    teacher = build_student("resnet", 0.25, 0.5, num_classes=3, in_chans=3).eval()
    aug = CropFlip(padding=2)
    a, b = (
        build_teacher_outputs(
            teacher, x, tmp_path / where, "t", augmentation=aug, views=2, log=lambda _: None
        )
        for x, where in ((memory.train_x, "m"), (streamed.train_x, "s"))
    )
    assert torch.equal(a.views, b.views)
    assert np.allclose(a.logits, b.logits, atol=1e-4)


def test_training_on_streamed_images_matches_training_in_memory(folder, tmp_path):
    memory, streamed = both(folder, loader_workers=1)
    teacher = build_student("resnet", 0.25, 0.5, num_classes=3, in_chans=3).eval()
    aug = CropFlip(padding=2)
    trained = []
    for splits, where in ((memory, "m"), (streamed, "s")):
        outputs = build_teacher_outputs(
            teacher, splits.train_x, tmp_path / where, "t", augmentation=aug, views=2, log=lambda _: None
        )
        torch.manual_seed(1)
        student = build_student("resnet", 0.25, 0.25, num_classes=3, in_chans=3)
        method = WeightedMethod(METHODS.get("hinton_kd")(temperature=4.0), 1.0)
        train(
            student,
            splits.train_x,
            splits.train_y,
            TrainSettings(epochs=2, batch_size=8),
            methods=[method],
            teacher=outputs,
        )
        trained.append(student)
    for (name, p_mem), p_str in zip(
        trained[0].state_dict().items(), trained[1].state_dict().values(), strict=True
    ):
        assert torch.allclose(p_mem.float(), p_str.float(), atol=1e-4), name
    assert evaluate(trained[1], streamed.val_x, streamed.val_y) == evaluate(
        trained[0], memory.val_x, memory.val_y
    )
