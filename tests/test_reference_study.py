"""The reference study (studies/fashion_mnist.yaml) stays runnable: it parses, and one short trial of
it trains on a subsample. The full study (about 3 hours) is kept out of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

import autokd
from autokd.config import load_study_file
from autokd.space import methods_of

REFERENCE = Path(__file__).resolve().parents[1] / "studies" / "fashion_mnist.yaml"


def test_the_reference_study_uses_the_full_data_and_searches_every_kind_of_distillation():
    from autokd.methods import METHODS

    study = load_study_file(REFERENCE)
    assert study.data.dataset == "fashion_mnist" and study.data.train_subsample is None
    kinds = {METHODS.get(m).kind for choice in study.search_space.methods for m in methods_of(choice)}
    assert kinds == {"response", "feature", "relation", "self"}
    assert "none" in study.search_space.methods  # the task loss alone is searched too
    assert Path(study.teacher.factory.rsplit(":", 1)[0]).is_file()


@pytest.mark.slow
def test_one_epoch_of_one_trial_of_the_reference_study_trains_on_a_subsample(tmp_path):
    document = load_study_file(REFERENCE).model_dump(mode="json")
    document["data"]["train_subsample"] = 300
    document["teacher"]["epochs"] = 1
    document["budget"].update(trials=1, epochs=1, time_limit_minutes=None)
    document["quantization"].update(qat=[False], qat_epochs=1)
    document["sampler"]["candidates"] = 2  # the study's strategy, with fewer candidates measured
    result = autokd.search(
        document, runs_dir=tmp_path / "runs", reports_dir=None, progress=False, log=lambda _: None
    )
    assert result.completed == 1
    (trial,) = (t for t in result.records.trials if t.completed)
    assert trial.config["family"] == "resnet" and trial.config["epochs"] == 1
    assert 0 < trial.result.int8_accuracy <= 1


def test_the_committed_teacher_is_the_one_the_reference_study_finds_wherever_it_is_checked_out():
    # CI checks the repository out in another folder: the teacher's key must not hold the path
    import json

    from autokd.storage import file_sha256, load_run_study

    study = load_study_file(REFERENCE)
    folder = REFERENCE.parents[1] / "runs" / "_teachers" / study.teacher_key()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert file_sha256(folder / "teacher.pt") == metrics["weights_sha256"]
    journal = load_run_study(REFERENCE.parents[1] / "runs" / "fashion_mnist")
    assert journal.user_attrs["teacher"]["key"] == study.teacher_key() == metrics["key"]
