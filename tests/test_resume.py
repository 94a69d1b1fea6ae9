"""A search killed mid-trial resumes: completed trials kept, the killed one failed with its reason."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autokd.record import load_records
from autokd.storage import JOURNAL


def _count(trials_of, run_dir: Path, state: TrialState) -> int:
    if not (run_dir / JOURNAL).exists():
        return 0
    try:
        return sum(t.state == state for t in trials_of(run_dir))
    except KeyError:  # study not created yet
        return 0


@pytest.mark.slow
def test_resume_after_sigkill_keeps_completed_and_fails_the_killed_trial(
    tiny_study, shared_runs, tmp_path, write_study, trials_of
):
    tiny_study["name"] = "killed"
    tiny_study["budget"]["trials"] = 3
    study_path = write_study(tmp_path, tiny_study)
    run_dir = shared_runs / "killed"
    command = [
        sys.executable,
        "-m",
        "autokd.cli",
        "search",
        str(study_path),
        "--runs-dir",
        str(shared_runs),
        "--reports-dir",
        str(tmp_path / "reports"),
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Kill it while a trial runs after at least one has completed.
        while not (
            _count(trials_of, run_dir, TrialState.COMPLETE) >= 1
            and _count(trials_of, run_dir, TrialState.RUNNING) == 1
        ):
            assert process.poll() is None, "the search finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    completed_before = _count(trials_of, run_dir, TrialState.COMPLETE)
    assert _count(trials_of, run_dir, TrialState.RUNNING) == 1

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = load_records(run_dir).trials
    assert sum(t.state == "COMPLETE" for t in records) == 3
    assert not any(t.state == "RUNNING" for t in records)
    killed = [t for t in records if t.state == "FAIL"]
    assert len(killed) == 1 and "killed" in killed[0].error
    assert completed_before >= 1 and "interrupted trial(s) marked FAILED" in result.stdout
