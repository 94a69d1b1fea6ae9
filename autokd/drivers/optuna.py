"""The Optuna driver: trials run one after another in this process, or in N worker processes.

Each trial goes through ``Study.optimize`` (one trial at a time) so that a database storage records
its heartbeat; what the trial is and how it is recorded is :class:`autokd.runner.TrialRunner`'s.
Worker processes share the study's storage (the run folder's journal, or PostgreSQL across
machines), each with its own sampler seed.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from autokd.budget import Budget, StopReason
from autokd.config import Study
from autokd.record import fail_interrupted
from autokd.resources import load_extensions, prepare_resources, quiet_optuna, torch_threads, training_threads
from autokd.runner import (
    WAIT_POLL_SECONDS,
    ProposalFailed,
    TrialRunner,
    check_unchanged,
    completed_count,
    fail_dead_trials,
    open_study,
    record_end,
    record_execution,
    running_count,
)
from autokd.space import make_sampler
from autokd.storage import StorageLocation, StudyOwner


def run_one_trial(runner: TrialRunner) -> TrialState:
    """Ask the study for one trial, run it, and tell the study how it ended."""
    finished: list[optuna.trial.FrozenTrial] = []
    runner.choose_candidate()

    def objective(trial: optuna.Trial) -> list[float]:
        try:
            config = runner.propose(trial)
        except ProposalFailed as exc:
            raise TrialFailed(str(exc)) from None
        if config is None:
            raise optuna.TrialPruned()
        try:
            outcome = runner.run(trial.number, config)
        except KeyboardInterrupt:
            runner.record_interrupted(trial)
            raise
        values = runner.record(trial, config, outcome)
        if outcome.state == TrialState.PRUNED:
            raise optuna.TrialPruned()
        if outcome.state == TrialState.FAIL:
            raise TrialFailed(outcome.error)
        return values

    runner.optuna_study.optimize(
        objective, n_trials=1, catch=(TrialFailed,), callbacks=[lambda _, trial: finished.append(trial)]
    )
    return finished[-1].state


class TrialFailed(Exception):
    """A trial ended FAIL (its error is already recorded)."""


def run_trials(
    runner: TrialRunner,
    budget: Budget,
    *,
    on_completed: Callable[[int], None] | None = None,
    on_wait: Callable[[], None] | None = None,
) -> tuple[int, StopReason]:
    """Run trials in this process until the study is done; return (trials failed here, why it stopped).

    Several processes may run this loop on one study. A worker with nothing to start (the running
    trials would fill the budget) waits, in case one of them fails.
    """
    study = runner.optuna_study
    failed = 0
    while True:
        completed = completed_count(study)
        if on_completed is not None:
            on_completed(completed)
        reason = budget.stop_reason(completed)
        if reason is not None:
            return failed, reason
        if not budget.may_start(completed, running_count(study)):
            if on_wait is not None:
                on_wait()  # e.g. fail a dead machine's trial by its heartbeat, so its place frees up
            time.sleep(WAIT_POLL_SECONDS)
            continue
        state = run_one_trial(runner)
        budget.count(failed=state == TrialState.FAIL, skipped=runner.last_skipped)
        failed += state == TrialState.FAIL


def _heartbeat_check(optuna_study: optuna.Study, location: StorageLocation) -> Callable[[], None] | None:
    if not location.heartbeats:
        return None
    return lambda: fail_dead_trials(optuna_study, location, log=lambda _: None)


@dataclass(frozen=True)
class _WorkerTask:
    """What a worker process needs: plain data, from which it reopens data, teacher and cache from disk."""

    index: int
    study: Study
    runs_root: Path
    study_path: Path | None
    location: StorageLocation
    deadline: float | None
    threads: int


def _worker_main(task: _WorkerTask, outcomes) -> None:
    """Entry point of a worker process: run trials of the shared study until it is done."""
    prefix = f"[worker {task.index}] "

    def emit(line: str) -> None:
        print(prefix + line, flush=True)

    try:
        owner = (
            StudyOwner(task.location.run_dir, task.study.name).join()
            if not task.location.heartbeats
            else contextlib.nullcontext()
        )
        with owner, quiet_optuna(), torch_threads(task.threads):
            # The parent built the teacher and its output cache: here they are only read from disk.
            # Worker i trains on GPU i modulo their number when there are several (autokd.devices).
            resources = prepare_resources(
                task.study,
                runs_root=task.runs_root,
                study_path=task.study_path,
                log=lambda _: None,
                worker=task.index,
            )
            storage = task.location.open()
            study = task.study
            previous = len(
                optuna.load_study(study_name=study.name, storage=storage).get_trials(deepcopy=False)
            )
            # Every worker draws its own random sequence: same-seeded workers would propose the same
            # settings. (Spread the pid out: consecutive pids plus trial counts one apart would collide.)
            sampler = make_sampler(study, offset=previous + 65_537 * os.getpid())
            optuna_study = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
            budget = Budget.of(study)
            budget.deadline = task.deadline
            runner = TrialRunner(resources, optuna_study, emit=emit)
            failed, reason = run_trials(runner, budget, on_wait=_heartbeat_check(optuna_study, task.location))
        outcomes.put((task.index, failed, reason.value))
    except KeyboardInterrupt:
        outcomes.put((task.index, 0, StopReason.INTERRUPTED.value))
    except Exception as exc:  # noqa: BLE001 - one line to the parent, not a traceback per worker
        emit(f"stopped: {type(exc).__name__}: {exc}")
        outcomes.put((task.index, 0, StopReason.WORKER_STOPPED.value))


def _run_workers(
    optuna_study: optuna.Study,
    study: Study,
    runs_root: Path,
    study_path: Path | None,
    location: StorageLocation,
    workers: int,
    deadline: float | None,
    log: Callable[[str], None],
) -> tuple[int, StopReason]:
    context = torch.multiprocessing.get_context("spawn")
    outcomes = context.SimpleQueue()
    threads = training_threads(study, log, processes=workers)
    processes = [
        context.Process(
            target=_worker_main,
            args=(_WorkerTask(i, study, runs_root, study_path, location, deadline, threads), outcomes),
            name=f"autokd-worker-{i}",
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        running = {process.sentinel: process for process in processes}
        while running:
            for sentinel in multiprocessing.connection.wait(list(running)):
                process = running.pop(sentinel)
                process.join()
                if process.exitcode != 0:
                    # Its trial would stay RUNNING for ever and hold a place in the budget: fail it,
                    # so that the other workers run another in its place and the search can end.
                    lost = fail_interrupted(
                        optuna_study,
                        f"interrupted: worker {process.name} died (exit code {process.exitcode})",
                        worker=f"{socket.gethostname()}:{process.pid}",
                    )
                    log(
                        f"worker {process.name} died (exit code {process.exitcode}); "
                        f"{lost} trial(s) it was running marked FAILED"
                    )
    finally:
        for process in processes:  # after Ctrl-C: give workers time to fail their trial, then stop them
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
    reports = []
    while not outcomes.empty():
        reports.append(outcomes.get())
    failed = sum(report[1] for report in reports)
    reasons = {StopReason(report[2]) for report in reports}
    if any(p.exitcode != 0 for p in processes) or len(reports) < workers:
        reasons.add(StopReason.WORKER_STOPPED)
    for reason in (StopReason.BUDGET, StopReason.TIME_LIMIT, StopReason.FAILURES, StopReason.INTERRUPTED):
        if reason in reasons:
            return failed, reason
    return failed, StopReason.WORKER_STOPPED


@dataclass(frozen=True)
class DriverOutcome:
    """What one search run did: its run folder, completed trials, failures in this run and why it ended."""

    run_dir: Path
    completed: int
    failed_now: int
    stopped_reason: StopReason


def run(
    study: Study,
    *,
    runs_root: Path,
    study_path: Path | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    workers: int = 1,
    storage_url: str | None = None,
    heartbeat_interval: int = 60,
) -> DriverOutcome:
    """Run (or resume) ``study`` until its budget of completed trials or its time limit is reached.

    ``workers`` > 1 runs that many processes on the study's storage; ``storage_url`` (PostgreSQL) puts
    the study in a database that workers on several machines share, with heartbeats every
    ``heartbeat_interval`` seconds so that a dead worker's trial is failed and run again.
    """
    from autokd.storage import JOURNAL, copy_to_journal

    load_extensions(study, study_path)  # a study that cannot run is refused before its run folder exists
    budget = Budget.of(study)
    location = StorageLocation(runs_root / study.name, storage_url, heartbeat_interval)
    # On a database several machines share the study (heartbeats find dead workers); on the journal
    # one search at a time owns it.
    owner = StudyOwner(location.run_dir, study.name) if storage_url is None else contextlib.nullcontext()
    with quiet_optuna(), owner:
        check_unchanged(study, location)
        started = time.monotonic()
        threads = training_threads(study, log)
        resources = prepare_resources(
            study, runs_root=runs_root, study_path=study_path, log=log, threads=threads
        )
        optuna_study = open_study(resources, location, log=log)
        fail_dead_trials(optuna_study, location, log)
        record_execution(
            optuna_study,
            backend="optuna",
            concurrent_trials=workers,
            storage="database" if storage_url else "journal",
            worker_processes=workers,
            early_stopping="median rule" if study.early_stopping.enabled else "off",
        )
        done = completed_count(optuna_study)
        if done:
            log(f"resuming '{study.name}': {done}/{budget.trials} trials already complete")
        prepare_seconds = time.monotonic() - started
        if workers == 1:
            with (
                torch_threads(threads),
                tqdm(
                    total=budget.trials,
                    initial=done,
                    desc=study.name,
                    unit="trial",
                    disable=not progress,
                    dynamic_ncols=True,
                ) as bar,
            ):
                runner = TrialRunner(resources, optuna_study, emit=bar.write if progress else log)
                failed_now, reason = run_trials(
                    runner,
                    budget,
                    on_completed=lambda completed: bar.update(completed - bar.n),
                    on_wait=_heartbeat_check(optuna_study, location),
                )
        else:
            log(f"{workers} worker processes on {location.describe()}")
            failed_now, reason = _run_workers(
                optuna_study, study, runs_root, study_path, location, workers, budget.deadline, log
            )
        record_end(
            optuna_study,
            reason,
            prepare_seconds=prepare_seconds,
            threads=threads,
            time_limit_minutes=study.budget.time_limit_minutes,
        )
        if storage_url:
            copy_to_journal(optuna_study, resources.run_dir)
            log(
                f"copied the study from {location.describe()} into {resources.run_dir / JOURNAL} for the report"
            )
        return DriverOutcome(resources.run_dir, completed_count(optuna_study), failed_now, reason)
