"""Teacher checkpoints as users have them: plain or wrapped state dicts, DDP prefixes, safetensors,
relative paths; every one that cannot be used is one line, checked before anything is written."""

from __future__ import annotations

import pytest
import timm
import torch

from autokd.config import parse_study
from autokd.resources import load_study_data, prepare_resources
from autokd.teacher import TeacherFileError, check_checkpoint


@pytest.fixture
def study(tiny_study):
    tiny_study["data"]["train_subsample"] = 300
    return tiny_study


@pytest.fixture
def data(study):
    return load_study_data(parse_study(study))


@pytest.fixture
def weights():
    """A resnet10t state dict for the digits (10 classes, one channel), as a user's training made it."""
    torch.manual_seed(3)
    return timm.create_model("resnet10t", num_classes=10, in_chans=1).state_dict()


def _teacher_with(study, data, tmp_path, payload, name="teacher.pt"):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(payload, str(path))
    else:
        torch.save(payload, path)
    study["teacher"]["checkpoint"] = str(path)
    resources = prepare_resources(parse_study(study), runs_root=tmp_path / "runs", log=lambda _: None)
    return resources.teacher.model.state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda w: w, id="state_dict"),
        pytest.param(lambda w: {"state_dict": w, "epoch": 3, "optimizer_states": [{}]}, id="lightning-style"),
        pytest.param(lambda w: {"model": w, "optimizer": {}, "epoch": 90}, id="model-wrapper"),
        pytest.param(lambda w: {f"module.{k}": v for k, v in w.items()}, id="ddp-prefix"),
        pytest.param(
            lambda w: {"state_dict": {f"model.{k}": v for k, v in w.items()}}, id="lightning-attribute"
        ),
    ],
)
def test_a_checkpoint_format_loads_the_same_weights(study, data, tmp_path, weights, wrap):
    loaded = _teacher_with(study, data, tmp_path, wrap(weights))
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_a_safetensors_checkpoint_loads_the_same_weights(study, data, tmp_path, weights):
    loaded = _teacher_with(
        study, data, tmp_path, {k: v.contiguous() for k, v in weights.items()}, "t.safetensors"
    )
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_a_checkpoint_for_another_class_count_says_so(study, data, tmp_path):
    path = tmp_path / "hundred.pt"
    torch.save(timm.create_model("resnet10t", num_classes=100, in_chans=1).state_dict(), path)
    study["teacher"]["checkpoint"] = str(path)
    with pytest.raises(TeacherFileError, match="its classifier has 100 classes and the data have 10"):
        check_checkpoint(parse_study(study), data)


def test_a_checkpoint_of_another_model_names_the_first_keys(study, data, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(timm.create_model("resnet18", num_classes=10, in_chans=1).state_dict(), path)
    study["teacher"]["checkpoint"] = str(path)
    with pytest.raises(
        TeacherFileError, match=r"missing: conv1\.0\.weight, .* and 25 more; unexpected: conv1\.weight"
    ):
        check_checkpoint(parse_study(study), data)


def test_a_pickled_model_is_not_loaded(study, data, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(timm.create_model("resnet10t", num_classes=10, in_chans=1), path)  # the object, not weights
    study["teacher"]["checkpoint"] = str(path)
    with pytest.raises(TeacherFileError, match="is unreadable"):
        check_checkpoint(parse_study(study), data)


def test_a_bad_checkpoint_leaves_no_teacher_folder_behind(study, tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    study["teacher"]["checkpoint"] = str(path)
    with pytest.raises(TeacherFileError):
        prepare_resources(parse_study(study), runs_root=tmp_path / "runs", log=lambda _: None)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_a_relative_checkpoint_is_found_next_to_the_study_file(study, tmp_path, weights, write_study):
    (tmp_path / "project" / "weights").mkdir(parents=True)
    torch.save(weights, tmp_path / "project" / "weights" / "teacher.pt")
    study["teacher"]["checkpoint"] = "weights/teacher.pt"
    study["name"] = "relative"
    path = write_study(tmp_path / "project", study)
    from autokd.config import load_study_file

    assert load_study_file(path).teacher.checkpoint == str(
        (tmp_path / "project" / "weights" / "teacher.pt").resolve()
    )


def test_a_missing_checkpoint_is_one_line_with_exit_code_2(study, tmp_path, write_study, capsys):
    from autokd.cli import main

    study["teacher"]["checkpoint"] = "nowhere/teacher.pt"
    study["name"] = "missing"
    path = write_study(tmp_path, study)
    assert main(["search", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "field 'teacher.checkpoint'" in err and "no such file" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))
