"""Where a study's trials live: the run folder's journal, or a database that several machines share.

The run folder always ends up holding ``optuna-journal.log``, because the report reads only that file:
with the journal it is the live storage (JournalStorage with a file backend, safe for several processes
on one machine); with a database URL the database is the live storage and the journal a copy of it
written when a search ends.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import importlib.util
import io
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import TrialState

JOURNAL = "optuna-journal.log"
TRIALS_DIR = "trials"
CONFIRMATIONS_DIR = "confirmations"  # autokd confirm: each run's weights, as TRIALS_DIR holds each trial's
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


def confirmation_dir(run_dir: Path, number: int, setting: str, epochs: int, seed: int) -> Path:
    """Where one ``autokd confirm`` run of trial ``number`` keeps its FP32 student weights and INT8
    artifact: ``setting`` is ``searched`` or a baseline's name."""
    return run_dir / CONFIRMATIONS_DIR / str(number) / f"{setting}-{epochs}-epochs-seed-{seed}"


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
        return _cut_torn_tail(path)
    finally:
        lock.release()


class DiskFullError(OSError):
    """A write failed for lack of space (or quota); what was stored before it is intact."""


def disk_full_message(exc: OSError, path: str | Path | None = None) -> str:
    """One line for a full disk: where, and that rerunning the same command resumes."""
    where = path or exc.filename or "the runs folder"
    return (
        f"no space left on the device writing {where}: free some space, then run the same command "
        "again (everything stored before this point is kept and the search resumes)"
    )


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's journal file (which fsyncs every append) that never appends onto a torn record.

    A write that fails (a full disk) is cut back to the last complete record at once, under the
    journal's lock; a tail torn by a process killed mid-write is cut (and kept beside the journal)
    before the next append, so no record is ever glued onto half of another.
    """

    def __init__(self, file_path: str) -> None:
        self._journal_lock = JournalFileSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=self._journal_lock)
        self._journal_path = Path(file_path)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._journal_lock.acquire()
        try:
            size = self._journal_path.stat().st_size
            if size and not _ends_with_newline(self._journal_path, size):
                _cut_torn_tail(self._journal_path)
                size = self._journal_path.stat().st_size
            text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            try:
                with open(self._journal_path, "ab") as journal:
                    journal.write(text.encode("utf-8"))
                    journal.flush()
                    os.fsync(journal.fileno())
            except OSError as exc:
                with open(self._journal_path, "r+b") as journal:  # truncating needs no space
                    journal.truncate(size)
                    os.fsync(journal.fileno())
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFullError(exc.errno, os.strerror(exc.errno), str(self._journal_path)) from exc
                raise
        finally:
            self._journal_lock.release()


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as journal:
        journal.seek(size - 1)
        return journal.read(1) == b"\n"


def _cut_torn_tail(path: Path) -> Path | None:
    """Cut everything after the last complete record (the caller holds the journal's lock)."""
    data = path.read_bytes()
    keep = _complete_length(data)
    if keep == len(data):
        return None
    kept = path.with_name(f"{path.name}.torn-{int(time.time())}-{os.getpid()}")
    try:
        kept.write_bytes(data[keep:])
    except OSError:  # no room to keep the torn bytes (a full disk): they are half a record anyway
        kept.unlink(missing_ok=True)
        kept = None
    with open(path, "r+b") as journal:
        journal.truncate(keep)
        journal.flush()
        os.fsync(journal.fileno())
    return kept


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (what stored teachers and caches are checked against)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_atomically(obj: object, path: Path) -> None:
    """Write ``obj`` (text, or anything ``torch.save`` takes) to ``path`` so that no reader ever sees half
    of it: written beside it, fsynced, renamed over it. A full disk is an ``OSError`` (ENOSPC) and
    leaves nothing behind."""
    import torch

    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    if isinstance(obj, str):
        payload = obj.encode()
    else:  # serialised in memory: torch.save onto a full disk fails with a RuntimeError, not ENOSPC
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        payload = buffer.getvalue()
    try:
        with open(partial, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)  # after a failed write (a full disk): never leave it behind


def journal_storage(run_dir: Path) -> JournalStorage:
    """The study's storage: a journal file that several processes on one machine may share.

    A torn tail left by a full disk or a kill is cut off first (see :func:`repair_journal`), and
    appends never glue a record onto a torn one (see :class:`RepairingJournalBackend`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    repair_journal(run_dir / JOURNAL)
    return JournalStorage(RepairingJournalBackend(str(run_dir / JOURNAL)))


OWNER_LOCK = "owner.lock"


class StudyBusyError(Exception):
    """Another search owns this study's run folder (one line naming the holder)."""


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another autokd process"
    return (
        f"pid {info.get('pid')} on {info.get('host')} (started {info.get('started')}: {info.get('command')})"
    )


class StudyOwner:
    """The lock that makes one search at a time the owner of a study's run folder (journal storage).

    The owning search holds ``<run>/owner.lock`` with ``flock`` and writes who it is into it; its
    worker processes join it with shared locks, so a second search is refused while the owner or any
    of its workers (even orphaned ones) is alive. The kernel drops the lock when a process dies, so a
    killed search never leaves it behind.
    """

    def __init__(self, run_dir: Path, study_name: str) -> None:
        self.path = run_dir / OWNER_LOCK
        self.study_name = study_name
        self._fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def _busy(self) -> StudyBusyError:
        return StudyBusyError(
            f"study '{self.study_name}' in {self.path.parent} is being searched by {_holder(self.path)}; "
            "wait for that search to end (or stop it), then run this command again"
        )

    def acquire(self) -> StudyOwner:
        """Become the owner, or raise :class:`StudyBusyError` at once naming the holder."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:200],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        # Shared from now on, so that this search's workers can join; another owner needs it exclusive.
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # someone took it in the instant of the downgrade
            os.close(fd)
            raise self._busy() from None
        self._fd = fd
        return self

    def join(self) -> StudyOwner:
        """Join the owner's lock from a worker process (shared; never refused while the owner lives)."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._busy() from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StudyOwner:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
