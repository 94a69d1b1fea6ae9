"""Where a study's trials live: the run folder's journal, or a database that several machines share.

The run folder always ends up holding ``optuna-journal.log``, because the report reads only that file:
with the journal it is the live storage (JournalStorage with a file backend, safe for several processes
on one machine); with a database URL the database is the live storage and the journal a copy of it
written when a search ends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

JOURNAL = "optuna-journal.log"
TRIALS_DIR = "trials"
# A trial whose worker died is failed after this many silent heartbeat intervals, then run again.
GRACE_INTERVALS = 3
MAX_RETRIES = 2
SCHEMA_ATTEMPTS = 4
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 when only it is installed."""
    scheme, rest = url.split("://", 1) if "://" in url else (url, "")
    if (
        scheme == "postgresql"
        and not importlib.util.find_spec("psycopg")
        and importlib.util.find_spec("psycopg2")
    ):
        return f"postgresql+psycopg2://{rest}"
    return url


def trial_dir(run_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its FP32 student weights and INT8 artifact."""
    return run_dir / TRIALS_DIR / str(number)


def _complete_length(data: bytes) -> int:
    """Bytes of ``data`` up to and including its last complete, parseable JSON line."""
    end = len(data)
    while end:
        newline = data.rfind(b"\n", 0, end)
        if newline == -1:
            return 0
        if newline + 1 < end and end == len(data) and not data.endswith(b"\n"):
            end = newline + 1  # a last line without its newline: torn
            continue
        start = data.rfind(b"\n", 0, newline) + 1
        try:
            json.loads(data[start:newline])
            return newline + 1
        except ValueError:  # a garbled line (a full disk writes NUL bytes, say)
            end = start
    return 0


def repair_journal(path: Path) -> Path | None:
    """Cut a torn or garbled tail off the journal at ``path``, keeping every complete record.

    A full disk or a kill mid-write leaves a last line without its newline (or garbage); Optuna skips
    it when reading but appends the next record onto it, after which every read fails. The cut bytes
    are kept beside the journal (returned), never thrown away. Runs under the journal's own lock, so a
    process appending at that moment is never cut.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        keep = _complete_length(data)
        if keep == len(data):
            return None
        kept = path.with_name(f"{path.name}.torn-{int(time.time())}-{os.getpid()}")
        kept.write_bytes(data[keep:])
        with open(path, "r+b") as journal:
            journal.truncate(keep)
            journal.flush()
            os.fsync(journal.fileno())
        return kept
    finally:
        lock.release()


def journal_storage(run_dir: Path) -> JournalStorage:
    """The study's storage: a journal file that several processes on one machine may share.

    A torn tail left by a full disk or a kill is cut off first (see :func:`repair_journal`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    repair_journal(run_dir / JOURNAL)
    return JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))


@dataclass(frozen=True)
class StorageLocation:
    """The run folder of a study and, for several machines, the database URL its trials live in.

    Plain data, so that worker processes can open their own connection from it.
    """

    run_dir: Path
    url: str | None = None
    heartbeat_interval: int = 60

    @property
    def heartbeats(self) -> bool:
        """Whether dead workers are detected by heartbeat (database) rather than by the caller."""
        return self.url is not None

    def describe(self) -> str:
        """Where the trials are, for log lines (without the database password)."""
        if self.url is None:
            return str(self.run_dir / JOURNAL)
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    def open(self) -> BaseStorage:
        """A new connection to the storage (each process opens its own)."""
        if self.url is None:
            return journal_storage(self.run_dir)
        from sqlalchemy.exc import IntegrityError, ProgrammingError

        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return RDBStorage(
                        with_installed_driver(self.url),
                        engine_kwargs={"pool_pre_ping": True},
                        heartbeat_interval=self.heartbeat_interval,
                        grace_period=GRACE_INTERVALS * self.heartbeat_interval,
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                            max_retry=MAX_RETRIES
                        ),
                    )
            except (IntegrityError, ProgrammingError):
                # Machines that start together on an empty database race to create Optuna's tables;
                # the loser finds them created a moment later.
                if attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")


def load_run_study(run_dir: Path) -> optuna.Study:
    """The study in ``run_dir``'s journal (the one named after the folder, else the only one).

    Raises ``FileNotFoundError`` when there is no journal and ``LookupError`` when it holds no study;
    callers turn both into their own one-line errors.
    """
    if not (run_dir / JOURNAL).exists():
        raise FileNotFoundError(f"{run_dir} holds no study ({JOURNAL} not found)")
    storage = journal_storage(run_dir)
    names = optuna.get_all_study_names(storage)
    if not names:
        raise LookupError(f"{run_dir / JOURNAL} holds no study")
    name = run_dir.name if run_dir.name in names else names[0]
    return optuna.load_study(study_name=name, storage=storage)


def copy_to_journal(source: optuna.Study, run_dir: Path) -> Path:
    """Write the study's attributes and finished trials into ``run_dir``'s journal, replacing it.

    This is how a database-backed study reaches the report, which reads only the run folder. The copy
    is written beside the journal and renamed over it, so a reader never sees half a file.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    partial = run_dir / f"{JOURNAL}.partial-{os.getpid()}"
    partial.unlink(missing_ok=True)
    target = optuna.create_study(
        study_name=source.study_name,
        storage=JournalStorage(JournalFileBackend(str(partial))),
        directions=source.directions,
    )
    for key, value in source.user_attrs.items():
        target.set_user_attr(key, value)
    target.add_trials(source.get_trials(deepcopy=False, states=FINISHED_STATES))
    final = run_dir / JOURNAL
    partial.replace(final)
    return final
