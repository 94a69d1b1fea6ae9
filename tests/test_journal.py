"""The journal survives torn writes: a torn or garbled tail is cut off, every complete record kept."""

from __future__ import annotations

import optuna
import pytest

from autokd.storage import JOURNAL, journal_storage, repair_journal


def _study_with_trials(run_dir, n: int = 3) -> None:
    study = optuna.create_study(study_name="s", storage=journal_storage(run_dir), directions=["maximize"])
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(value=float(i)))


def _values(run_dir) -> list[float]:
    return [t.value for t in optuna.load_study(study_name="s", storage=journal_storage(run_dir)).trials]


@pytest.mark.parametrize(
    "tail",
    [
        b'{"op_code": 6, "worker_id": "x", "trial_id"',
        b"\x00\x00\x00\x00\n",
        b"\n\x00\x00garbage",
    ],
    ids=["cut-mid-record", "nul-bytes-line", "empty-line-then-garbage"],
)
def test_a_torn_tail_is_cut_and_every_complete_record_kept(tmp_path, tail):
    _study_with_trials(tmp_path)
    journal = tmp_path / JOURNAL
    intact = journal.read_bytes()
    journal.write_bytes(intact + tail)
    assert _values(tmp_path) == [0.0, 1.0, 2.0] and journal.read_bytes().startswith(intact)


def test_appending_after_a_torn_tail_keeps_the_journal_readable(tmp_path):
    _study_with_trials(tmp_path)
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes() + b'{"op_code": 4, "trial')
    study = optuna.load_study(study_name="s", storage=journal_storage(tmp_path))
    study.add_trial(optuna.trial.create_trial(value=9.0))
    assert _values(tmp_path) == [0.0, 1.0, 2.0, 9.0]


def test_the_cut_bytes_are_kept_beside_the_journal(tmp_path):
    _study_with_trials(tmp_path)
    journal = tmp_path / JOURNAL
    journal.write_bytes(journal.read_bytes() + b"torn bytes")
    kept = repair_journal(journal)
    assert kept is not None and kept.read_bytes() == b"torn bytes" and kept.parent == tmp_path


def test_an_intact_journal_is_left_alone(tmp_path):
    _study_with_trials(tmp_path)
    before = (tmp_path / JOURNAL).read_bytes()
    assert repair_journal(tmp_path / JOURNAL) is None and (tmp_path / JOURNAL).read_bytes() == before
