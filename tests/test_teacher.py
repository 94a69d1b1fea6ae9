"""The teacher: seeded, bound by checksum to its cached outputs, one preparer at a time, and every
unusable stored file named in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autokd.config import parse_study
from autokd.resources import load_study_data
from autokd.teacher import PROXY_VARIABLES, TeacherFileError, prepare_teacher, teacher_lock
from autokd.teacher_cache import build_teacher_outputs


def quiet(_: str) -> None:
    pass


@pytest.fixture
def quick(tiny_study) -> dict:
    """The tiny study with a one-epoch teacher on a few hundred images."""
    tiny_study["teacher"]["epochs"] = 1
    tiny_study["data"]["train_subsample"] = 300
    return tiny_study


@pytest.fixture
def quick_data(quick):
    return load_study_data(parse_study(quick))


def test_the_same_settings_train_the_same_teacher(quick, quick_data, tmp_path):
    study = parse_study(quick)
    torch.manual_seed(1)  # whatever the caller's random state
    first = prepare_teacher(study, quick_data, tmp_path / "a", quiet)
    torch.manual_seed(2)
    second = prepare_teacher(study, quick_data, tmp_path / "b", quiet)
    assert first.weights_sha256 == second.weights_sha256
    assert first.val_accuracy == second.val_accuracy


def test_a_teacher_with_other_weights_gets_its_own_cache(quick, quick_data, tmp_path):
    teacher = prepare_teacher(parse_study(quick), quick_data, tmp_path, quiet)
    x = quick_data.train_x
    one = build_teacher_outputs(teacher.model, x, teacher.directory, teacher.identity, log=quiet)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.mul_(0.5)
    other = build_teacher_outputs(teacher.model, x, teacher.directory, f"{teacher.key}:other", log=quiet)
    assert one.directory != other.directory
    assert not np.array_equal(np.asarray(one.logits), np.asarray(other.logits))


def test_a_zeroed_cache_file_is_detected_and_computed_again(quick, quick_data, tmp_path):
    teacher = prepare_teacher(parse_study(quick), quick_data, tmp_path, quiet)
    x = quick_data.train_x
    good = np.array(
        build_teacher_outputs(teacher.model, x, teacher.directory, teacher.identity, log=quiet).logits
    )
    logits_file = next(teacher.directory.glob("outputs-*/logits.npy"))
    size = logits_file.stat().st_size
    logits_file.write_bytes(logits_file.read_bytes()[:128] + bytes(size - 128))  # header kept, data zeroed
    messages: list[str] = []
    again = build_teacher_outputs(teacher.model, x, teacher.directory, teacher.identity, log=messages.append)
    assert any("damaged" in m for m in messages)
    np.testing.assert_array_equal(np.asarray(again.logits), good)


def _prepared(quick, quick_data, tmp_path):
    study = parse_study(quick)
    teacher = prepare_teacher(study, quick_data, tmp_path, quiet)
    return study, teacher.directory


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("teacher.pt", b"not a checkpoint"),
        ("metrics.json", b'{"test_accuracy": '),
        ("metrics.json", b"\xff\xfe"),
    ],
)
def test_a_corrupt_teacher_file_is_one_line_naming_it_and_the_folder_to_delete(
    quick, quick_data, tmp_path, name, content
):
    study, directory = _prepared(quick, quick_data, tmp_path)
    (directory / name).write_bytes(content)
    with pytest.raises(TeacherFileError) as error:
        prepare_teacher(study, quick_data, tmp_path, quiet)
    message = str(error.value)
    assert name in message and f"delete the folder {directory}" in message and "\n" not in message


def test_teacher_weights_changed_under_their_checksum_are_refused(quick, quick_data, tmp_path):
    study, directory = _prepared(quick, quick_data, tmp_path)
    state = torch.load(directory / "teacher.pt", weights_only=True)
    torch.save({k: v * 0 if v.is_floating_point() else v for k, v in state.items()}, directory / "teacher.pt")
    with pytest.raises(TeacherFileError, match="checksum"):
        prepare_teacher(study, quick_data, tmp_path, quiet)


def test_a_checkpoint_of_another_architecture_is_one_line(quick, quick_data, tmp_path):
    checkpoint = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), checkpoint)
    quick["teacher"]["checkpoint"] = str(checkpoint)
    with pytest.raises(TeacherFileError, match="does not fit the teacher model"):
        prepare_teacher(parse_study(quick), quick_data, tmp_path / "runs", quiet)


def test_stale_partial_files_of_a_dead_writer_are_removed_under_the_lock(tmp_path):
    (tmp_path / "teacher.pt.partial-12345").write_bytes(b"x" * 100)
    (tmp_path / "outputs-abc.partial").mkdir()
    with teacher_lock(tmp_path, quiet):
        pass
    assert not list(tmp_path.glob("*.partial*"))


def test_pretrained_weights_that_cannot_be_had_are_one_line(quick, quick_data, monkeypatch):
    # A host that never resolves: nothing is downloaded, whatever network this machine has.
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.autokd-test.invalid")
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    quick["teacher"]["pretrained"] = True
    with pytest.raises(TeacherFileError) as error:
        prepare_teacher(parse_study(quick), quick_data, Path("unused"), quiet)
    message = str(error.value)
    assert "teacher.pretrained" in message and "cannot be reached" in message and "\n" not in message


PREPARE = """
import json, sys
from pathlib import Path
from autokd.config import parse_study
from autokd.resources import prepare_resources
study = parse_study(json.loads(sys.argv[1]))
r = prepare_resources(study, runs_root=Path(sys.argv[2]), log=lambda line: print(line, flush=True))
print("IDENTITY", r.teacher.identity, r.outputs.directory.name, flush=True)
"""


def test_searches_started_together_on_one_teacher_share_one_teacher(quick, tmp_path):
    runs = tmp_path / "runs"
    args = [sys.executable, "-c", PREPARE, json.dumps(quick), str(runs)]
    processes = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    identities = {line for out in outputs for line in out.splitlines() if line.startswith("IDENTITY")}
    assert len(identities) == 1, identities
    trained = [out for out in outputs if "training 1 epochs" in out]
    assert len(trained) == 1, "exactly one process should train the teacher; the other reuses it"
    assert len(list((runs / "_teachers").iterdir())) == 1
    assert not list(Path(runs).rglob("*.partial*"))
