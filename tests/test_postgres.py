"""Optuna workers on several machines: a study in a real PostgreSQL server, with heartbeats.

The server is Debian's PostgreSQL (``make test`` installs it), started here as a private cluster on
127.0.0.1 with a free port and stopped at the end. A missing PostgreSQL fails these tests: the
database route is part of what autokd promises.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from autokd.cli import main
from autokd.config import parse_study
from autokd.resources import prepare_resources
from autokd.storage import JOURNAL, with_installed_driver


def _postgres_program(name: str) -> str:
    """Debian keeps the server programs in /usr/lib/postgresql/<version>/bin, off the PATH."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda path: int(path.parts[-3])
    )
    if not candidates:
        pytest.fail(
            f"PostgreSQL's {name} is not installed: run `make test` (it installs Debian's postgresql) "
            "or apt-get install postgresql"
        )
    return str(candidates[-1])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 for this module; its URL (trust auth, user autokd)."""
    initdb, pg_ctl = _postgres_program("initdb"), _postgres_program("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="autokd-pg-"))
    as_server_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as Debian's postgres user
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user that Debian's postgresql package creates")
        os.chown(root, server_user.pw_uid, server_user.pw_gid)
        as_server_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_server_user, *command], check=True, capture_output=True, timeout=120)

    run(initdb, "-D", str(data), "-U", "autokd", "--auth=trust", "--no-sync", "-E", "UTF8")
    server_options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    run(
        pg_ctl,
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        server_options,
        "start",
    )
    try:
        yield f"postgresql://autokd@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _search_command(study_path: Path, runs: Path, reports: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autokd.cli",
        "search",
        str(study_path),
        "--runs-dir",
        str(runs),
        "--reports-dir",
        str(reports),
        "--no-progress",
        "--storage",
        url,
        *extra,
    ]


def _database_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=with_installed_driver(url)).get_trials()
    except KeyError:  # not created yet
        return []


@pytest.mark.slow
def test_two_machines_share_one_postgresql_study_and_the_report_reads_it(
    tiny_study, shared_runs, tmp_path, postgres_url, write_study, trials_of
):
    tiny_study["name"] = "pg-shared"
    tiny_study["budget"]["trials"] = 3
    study_path = write_study(tmp_path, tiny_study)
    command = _search_command(study_path, shared_runs, tmp_path / "reports", postgres_url)
    prepare_resources(parse_study(tiny_study), runs_root=shared_runs, log=lambda _: None)  # teacher first
    # Two "machines": two independent searches on the same database, at the same time.
    machines = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert all(machine.returncode == 0 for machine in machines), "\n----\n".join(o[-2500:] for o in outputs)

    in_database = _database_trials(postgres_url, "pg-shared")
    complete = [t for t in in_database if t.state == TrialState.COMPLETE]
    # Two searches may start the last trial at the same moment: one trial over budget at most.
    assert 3 <= len(complete) <= 4 and not any(t.state == TrialState.RUNNING for t in in_database)
    assert len({t.user_attrs["worker"] for t in complete}) == 2, outputs
    copied = trials_of(shared_runs / "pg-shared", "pg-shared")
    assert [t.state for t in copied] == [t.state for t in in_database]
    trials = pd.read_csv(tmp_path / "reports" / "pg-shared" / "trials.csv")
    assert (trials["state"] == "COMPLETE").sum() == len(complete)
    summary = (tmp_path / "reports" / "pg-shared" / "summary.md").read_text()
    assert "database storage shared with other machines" in summary


@pytest.mark.slow
def test_a_trial_whose_worker_died_is_failed_by_heartbeat_and_run_again(
    tiny_study, shared_runs, tmp_path, postgres_url, write_study, trials_of
):
    tiny_study["name"] = "pg-heartbeat"
    tiny_study["budget"]["trials"] = 2
    study_path = write_study(tmp_path, tiny_study)
    command = _search_command(
        study_path, shared_runs, tmp_path / "reports", postgres_url, "--heartbeat-interval", "1"
    )
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while True:  # kill it while its second trial runs (its settings all sampled and stored)
            trials = _database_trials(postgres_url, "pg-heartbeat")
            states = [t.state for t in trials]
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if states.count(TrialState.COMPLETE) == 1 and running and "config" in running[0].user_attrs:
                break
            assert worker.poll() is None, "the search finished before its worker could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        killed = next(t for t in trials if t.state == TrialState.RUNNING)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()

    # Another worker (here: a new process) fails it once its heartbeat is 3 intervals old, and runs it again.
    assert main(command[3:]) == 0
    trials = _database_trials(postgres_url, "pg-heartbeat")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert [t.number for t in failed] == [killed.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert (shared_runs / "pg-heartbeat" / JOURNAL).exists()
