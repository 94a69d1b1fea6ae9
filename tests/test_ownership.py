"""One owner per study, a dead worker's trial failed so the search ends, a changed study refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import autokd
from autokd.budget import StopReason
from autokd.cli import main
from autokd.config import StudyFileError, parse_study
from autokd.runner import check_unchanged
from autokd.storage import StorageLocation, StudyBusyError, StudyOwner, journal_storage


def quiet(_: str) -> None:
    pass


def _holder(run_dir: Path, how: str) -> subprocess.Popen:
    """A real process that owns (``acquire``) or joins as a worker (``join``) the study's lock."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from autokd.storage import StudyOwner
        StudyOwner(Path({str(run_dir)!r}), "held").{how}()
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def test_a_second_search_on_an_owned_study_is_refused_naming_the_holder(
    tmp_path, tiny_study, write_study, capsys
):
    tiny_study["name"] = "held"
    holder = _holder(tmp_path / "runs" / "held", "acquire")
    try:
        code = main(["search", str(write_study(tmp_path, tiny_study)), "--runs-dir", str(tmp_path / "runs")])
    finally:
        _stop(holder)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"pid {holder.pid}" in err and "'held'" in err
    assert not (tmp_path / "runs" / "_teachers").exists(), "nothing should be prepared for a refused search"


def test_a_stopped_owner_still_owns_its_study(tmp_path):
    holder = _holder(tmp_path, "acquire")
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StudyBusyError):
            StudyOwner(tmp_path, "held").acquire()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        _stop(holder)


def test_a_killed_owner_leaves_no_lock_behind(tmp_path):
    holder = _holder(tmp_path, "acquire")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    owner = StudyOwner(tmp_path, "held").acquire()
    owner.release()
    assert json.loads((tmp_path / "owner.lock").read_text())["pid"] == os.getpid()


def test_an_orphaned_worker_keeps_a_new_search_out(tmp_path):
    worker = _holder(tmp_path, "join")  # its owner is gone; it still runs a trial
    try:
        with pytest.raises(StudyBusyError, match="being searched"):
            StudyOwner(tmp_path, "held").acquire()
    finally:
        _stop(worker)


def test_workers_join_their_owner(tmp_path):
    with StudyOwner(tmp_path, "held"):
        worker = _holder(tmp_path, "join")
        _stop(worker)


def _stored(tmp_path: Path, document: dict) -> StorageLocation:
    location = StorageLocation(tmp_path / document["name"])
    study = optuna.create_study(study_name=document["name"], storage=journal_storage(location.run_dir))
    study.set_user_attr("study", json.loads(parse_study(document).model_dump_json()))
    return location


def test_resuming_with_other_training_settings_is_refused_naming_them(tmp_path, tiny_study):
    location = _stored(tmp_path, tiny_study)
    tiny_study["budget"]["epochs"] = 4
    tiny_study["objectives"]["latency_batch_size"] = 8
    with pytest.raises(StudyFileError) as error:
        check_unchanged(parse_study(tiny_study), location)
    message = str(error.value)
    assert "budget.epochs: 1 -> 4" in message and "objectives.latency_batch_size: 1 -> 8" in message


def test_resuming_with_another_search_space_list_is_refused(tmp_path, tiny_study):
    location = _stored(tmp_path, tiny_study)
    tiny_study["search_space"]["families"] = ["resnet"]
    with pytest.raises(StudyFileError, match="search_space.families"):
        check_unchanged(parse_study(tiny_study), location)


def test_a_larger_budget_or_time_limit_resumes(tmp_path, tiny_study):
    location = _stored(tmp_path, tiny_study)
    tiny_study["budget"]["trials"] = 10
    tiny_study["budget"]["time_limit_minutes"] = 5
    tiny_study["training"]["threads"] = 2
    check_unchanged(parse_study(tiny_study), location)


def test_a_changed_study_is_refused_by_the_cli_before_any_work(tmp_path, tiny_study, write_study, capsys):
    tiny_study["name"] = "changed"
    _stored(tmp_path / "runs", tiny_study)
    tiny_study["search_space"]["width"] = [0.125, 0.5]
    code = main(["search", str(write_study(tmp_path, tiny_study)), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "search_space.width" in err and "new name" in err
    assert not (tmp_path / "runs" / "_teachers").exists()


KILLER = '''
import os, signal
from pathlib import Path
import torch.nn.functional as F
from autokd.methods import Method, register_method

MARK = Path(__file__).with_name("killed-once")


@register_method("autokd_test_kill_once")
class KillOnce(Method):
    """Kills the worker process that first uses it, once per test: a worker dying mid-trial."""

    kind = "response"

    def forward(self, inputs):
        if not MARK.exists():
            MARK.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return F.mse_loss(inputs.student_logits, inputs.teacher_logits.detach())
'''


@pytest.mark.slow
def test_a_dead_workers_trial_is_failed_and_the_search_still_finishes(
    tiny_study, shared_runs, tmp_path, trials_of, clean_registry
):
    (tmp_path / "killer.py").write_text(KILLER)
    tiny_study["name"] = "dead-worker"
    tiny_study["budget"]["trials"] = 3
    tiny_study["extensions"] = [str(tmp_path / "killer.py")]
    tiny_study["search_space"]["methods"] = ["autokd_test_kill_once"]
    del tiny_study["search_space"]["method_params"]
    outcome = autokd.search(
        tiny_study, runs_dir=shared_runs, workers=2, log=quiet, progress=False, reports_dir=None
    )
    trials = trials_of(outcome.run_dir)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert outcome.stopped_reason == StopReason.BUDGET and outcome.completed == 3
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len(failed) == 1 and "died" in outcome.records.trial(failed[0].number).error
    assert failed[0].user_attrs["worker"].endswith(":" + (tmp_path / "killed-once").read_text())
