"""A teacher that is not a timm model: any nn.Module from a Python file, its features through
torchvision's feature extractor, response methods needing nothing but its logits."""

from __future__ import annotations

import json

import pytest
import torch

from autokd.config import StudyFileError, parse_study
from autokd.resources import prepare_resources
from autokd.space import check_study
from autokd.teacher import TEACHERS_DIR, TeacherFileError, is_study_teacher, teacher_directory

MY_CNN = """
import torch
from torch import nn


class MyCNN(nn.Module):
    def __init__(self, classes, channels):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(32, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU())
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(x)))
        return self.head(x.mean(dim=(2, 3)))


def make(num_classes, in_chans):
    return MyCNN(num_classes, in_chans)


def not_a_model():
    return "a string"
"""


@pytest.fixture
def own_teacher(tiny_study, tmp_path):
    (tmp_path / "my_teacher.py").write_text(MY_CNN)
    tiny_study["name"] = "own-teacher"
    tiny_study["data"]["train_subsample"] = 400
    tiny_study["teacher"] = {
        "factory": f"{tmp_path / 'my_teacher.py'}:make",
        "epochs": 6,
        "batch_size": 32,
        "lr": 0.01,
    }
    tiny_study["search_space"]["families"] = ["resnet"]
    tiny_study["budget"]["trials"] = 1
    return tiny_study


def test_a_factory_teacher_is_trained_and_measured_on_the_data(own_teacher, tmp_path):
    resources = prepare_resources(parse_study(own_teacher), runs_root=tmp_path / "runs", log=lambda _: None)
    assert type(resources.teacher.model).__name__ == "MyCNN"
    assert resources.teacher.test_accuracy > 0.3, "six epochs on the digits teach it something"
    assert resources.teacher.model_name.endswith("my_teacher.py:make")


def test_feature_nodes_give_a_factory_teacher_timms_feature_interface(own_teacher, tmp_path):
    own_teacher["teacher"]["feature_nodes"] = ["block1", "block2", "block3"]
    resources = prepare_resources(parse_study(own_teacher), runs_root=tmp_path / "runs", log=lambda _: None)
    model = resources.teacher.model
    assert [i["num_chs"] for i in model.feature_info] == [16, 32, 48]
    assert [i["reduction"] for i in model.feature_info] == [1, 2, 4]
    x = resources.data.train_x[:3]
    final, features = model.forward_intermediates(x, indices=[2])
    assert torch.allclose(model.forward_head(final), model(x)) and features[0].shape == (3, 48, 8, 8)


def test_a_feature_method_without_feature_nodes_is_refused_at_load(own_teacher):
    own_teacher["search_space"]["methods"] = ["hinton_kd", "fitnets"]
    with pytest.raises(
        StudyFileError, match=r"fitnets read\(s\) the teacher's features.*teacher.feature_nodes"
    ):
        check_study(parse_study(own_teacher))


def test_an_unknown_feature_node_says_which_are_close(own_teacher, tmp_path):
    own_teacher["teacher"]["feature_nodes"] = ["block_2"]
    with pytest.raises(
        TeacherFileError, match=r"node 'block_2' is not in the model's graph; close matches: block2"
    ):
        prepare_resources(parse_study(own_teacher), runs_root=tmp_path / "runs", log=lambda _: None)


def test_a_factory_returning_no_model_is_one_line(own_teacher, tmp_path):
    own_teacher["teacher"]["factory"] = own_teacher["teacher"]["factory"].replace(":make", ":not_a_model")
    with pytest.raises(TeacherFileError, match="returned str, not a torch nn.Module"):
        prepare_resources(parse_study(own_teacher), runs_root=tmp_path / "runs", log=lambda _: None)


def test_feature_nodes_belong_to_a_factory_teacher():
    with pytest.raises(
        StudyFileError, match="field 'teacher.feature_nodes' belongs to a teacher.factory model"
    ):
        parse_study({"name": "a", "teacher": {"model": "resnet18", "feature_nodes": ["layer1"]}})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["hinton_kd", "fitnets"])
def test_a_search_distils_a_factory_teacher(own_teacher, tmp_path, method):
    import autokd

    own_teacher["teacher"]["feature_nodes"] = ["block1", "block2", "block3"]
    own_teacher["search_space"]["methods"] = [method]
    own_teacher["search_space"].pop("method_params")
    result = autokd.search(
        own_teacher, runs_dir=tmp_path / "runs", reports_dir=None, log=lambda _: None, progress=False
    )
    (trial,) = [t for t in result.records.trials if t.completed]
    assert tuple(trial.config["methods"]) == (method,)
    assert trial.result.compression > 0


def _factory_study(own_teacher, folder, code=MY_CNN):
    folder.mkdir(exist_ok=True)
    (folder / "my_teacher.py").write_text(code)
    teacher = {**own_teacher["teacher"], "factory": f"{folder / 'my_teacher.py'}:make"}
    return parse_study({**own_teacher, "teacher": teacher})


def test_a_factory_teachers_key_does_not_depend_on_where_its_file_lies(own_teacher, tmp_path):
    here, moved = (
        _factory_study(own_teacher, tmp_path / "here"),
        _factory_study(own_teacher, tmp_path / "moved"),
    )
    assert here.teacher_key() == moved.teacher_key()
    assert here.legacy_teacher_key() != moved.legacy_teacher_key()  # autokd 0.3 keyed the path


def test_a_factory_teachers_key_changes_with_its_code(own_teacher, tmp_path):
    before = _factory_study(own_teacher, tmp_path / "code").teacher_key()
    wider = MY_CNN.replace("16, 3", "24, 3").replace("(16)", "(24)")
    assert _factory_study(own_teacher, tmp_path / "code", wider).teacher_key() != before


def test_a_teacher_folder_stored_under_its_old_key_is_moved_and_its_stale_caches_dropped(
    own_teacher, tmp_path
):
    study, runs = _factory_study(own_teacher, tmp_path / "code"), tmp_path / "runs"
    old = runs / TEACHERS_DIR / study.legacy_teacher_key()
    (old / "outputs-0123456789abcdef").mkdir(parents=True)
    (old / "teacher.pt").write_bytes(b"weights")
    (old / "metrics.json").write_text(json.dumps({"key": old.name, "test_accuracy": 0.5}))
    moved = teacher_directory(study, runs, log=lambda _: None)
    assert moved.name == study.teacher_key() and not old.exists()
    assert (moved / "teacher.pt").read_bytes() == b"weights" and not list(moved.glob("outputs-*"))
    assert json.loads((moved / "metrics.json").read_text()) == {"key": moved.name, "test_accuracy": 0.5}


def test_a_run_recorded_under_the_old_teacher_key_has_the_same_teacher(own_teacher, tmp_path):
    study = _factory_study(own_teacher, tmp_path / "code")
    key = study.teacher_key()
    assert is_study_teacher(study.legacy_teacher_key(), study, key) and is_study_teacher(key, study, key)
    assert not is_study_teacher("0123456789abcdef", study, key) and not is_study_teacher(None, study, key)
