"""Latency: what a record holds, and the lock that keeps training off the cores while one is measured."""

from __future__ import annotations

import os
import stat
import tempfile
import threading
import time

import pytest
import torch
from torch import nn

from autokd.measure import (
    LOCK_DIR_VARIABLE,
    LatencyLockError,
    SharedCores,
    exclusive,
    latency_example,
    machine_latency_lock,
    measure_latency,
)
from autokd.quantize import quantize


def test_latency_records_runtime_precision_conditions_and_enough_repeats():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    example = torch.randn(2, 1, 8, 8)
    int8 = quantize(model, [torch.randn(8, 1, 8, 8)], "onnxruntime")
    latency = measure_latency(int8, example, threads=1, min_run_time_s=0.01, min_repeats=12)
    assert (latency.runtime, latency.precision, latency.batch_size, latency.threads) == (
        "onnxruntime",
        "int8",
        2,
        1,
    )
    assert latency.runtime_version and latency.cpu and latency.torch_version == torch.__version__
    assert latency.repeats >= 12 and latency.median_ms > 0 and latency.iqr_ms >= 0


def test_a_plain_module_is_timed_in_fp32_torch_eager():
    latency = measure_latency(nn.Linear(4, 2), torch.randn(1, 4), min_run_time_s=0.01)
    assert (latency.runtime, latency.precision) == ("torch-eager", "fp32")


def test_latency_example_repeats_rows_of_a_small_split():
    images = torch.arange(3.0).view(3, 1, 1, 1)
    assert latency_example(images, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]


def _hold_training(lock, started: threading.Event, seconds: float) -> None:
    with SharedCores(lock):
        started.set()
        time.sleep(seconds)


def test_measurement_waits_until_training_on_the_cores_stops(tmp_path):
    lock, started = tmp_path / "latency.lock", threading.Event()
    trainer = threading.Thread(target=_hold_training, args=(lock, started, 0.5))
    trainer.start()
    started.wait()
    start = time.perf_counter()
    with exclusive(lock):
        waited = time.perf_counter() - start
    trainer.join()
    assert waited >= 0.3


def test_training_steps_aside_between_epochs_for_a_queued_measurement(tmp_path):
    lock, measured = tmp_path / "latency.lock", []
    cores = SharedCores(lock)
    with cores:

        def measure() -> None:
            with exclusive(lock):
                measured.append(time.perf_counter())

        waiting = threading.Thread(target=measure)
        waiting.start()
        time.sleep(0.2)
        assert not measured  # the measurement is queued behind training
        cores.step_aside()  # end of an epoch: the measurement runs before training goes on
        resumed = time.perf_counter()
        waiting.join()
    assert measured and measured[0] <= resumed


# -- the latency lock: private to the user ----------------------------------------------------------


def test_the_latency_lock_lives_in_a_folder_only_this_user_can_reach(tmp_path, monkeypatch):

    monkeypatch.delenv(LOCK_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    lock = machine_latency_lock()
    info = os.stat(lock.parent)
    assert lock.parent == tmp_path / f"autokd-{os.getuid()}"
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


def test_a_symlink_planted_as_the_lock_folder_is_refused(tmp_path, monkeypatch):

    monkeypatch.delenv(LOCK_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / f"autokd-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LatencyLockError, match="is not a folder"):
        machine_latency_lock()


def test_a_lock_folder_others_can_write_to_is_refused(tmp_path, monkeypatch):

    monkeypatch.delenv(LOCK_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    folder = tmp_path / f"autokd-{os.getuid()}"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(LatencyLockError, match="others can write to it"):
        machine_latency_lock()


def test_autokd_lock_dir_moves_the_latency_lock(tmp_path, monkeypatch):
    monkeypatch.setenv(LOCK_DIR_VARIABLE, str(tmp_path / "locks"))
    assert machine_latency_lock().parent == tmp_path / "locks"


def test_a_symlink_at_the_lock_path_is_never_followed(tmp_path):
    target = tmp_path / "victim"
    lock = tmp_path / "latency.lock"
    lock.symlink_to(target)
    with pytest.raises(LatencyLockError, match="cannot open the latency lock"), exclusive(lock):
        pass
    assert not target.exists()


# -- a process stopped with Ctrl-Z holding the lock ------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from autokd.measure import SharedCores, exclusive
lock = Path(sys.argv[1])
with (exclusive(lock) if sys.argv[2] == "measuring" else SharedCores(lock)):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def stopped_holder(tmp_path, monkeypatch, request):
    """A real process holding the lock (measuring or training), then stopped with SIGSTOP."""
    import signal
    import subprocess
    import sys

    import autokd.measure

    monkeypatch.setattr(autokd.measure, "LOCK_WAIT_S", 0.5)
    monkeypatch.setattr(autokd.measure, "_stuck_until", 0.0)
    lock = tmp_path / "latency.lock"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock), request.param], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "holding"
    os.kill(process.pid, signal.SIGSTOP)
    yield lock
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("stopped_holder", ["training"], indirect=True)
def test_a_stopped_training_delays_a_measurement_only_so_long_and_it_is_marked(stopped_holder):
    start = time.perf_counter()
    latency = measure_latency(
        nn.Linear(4, 2), torch.zeros(1, 4), min_run_time_s=0.01, lock_path=stopped_holder
    )
    assert time.perf_counter() - start < 5
    assert latency.exclusive is False


@pytest.mark.parametrize("stopped_holder", ["measuring"], indirect=True)
def test_a_stopped_measurement_delays_training_only_once(stopped_holder):
    start = time.perf_counter()
    with SharedCores(stopped_holder) as cores:
        first = time.perf_counter() - start
        for _ in range(5):  # epochs stepping aside do not wait again
            cores.step_aside()
    assert first < 5 and time.perf_counter() - start < first + 1
