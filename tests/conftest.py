"""Shared fixtures: small study documents and a runs folder whose cached teacher tests share."""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

# Ray clusters the tests start, and the drivers that join them, stay on 127.0.0.1 (Ray replaces a
# loopback address by the machine's outward one unless it believes it runs single-node) and require
# a token private to this test session. Ray reads both when it is first imported, hence here.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)

# Each pytest(-xdist worker) process's latency measurements take a lock of its own (shared with the
# processes it starts), never the one of a search the developer runs beside them nor the other
# worker's: no test compares latencies, and each measurement would otherwise wait for the other's epoch.
os.environ.setdefault(
    "AUTOKD_LOCK_DIR",
    os.path.join(
        tempfile.gettempdir(), f"autokd-tests-{os.getuid()}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    ),
)

# `make test` runs three pytest-xdist workers on two cores: each keeps torch (and the processes it
# starts) to one thread, or their intra-op threads wait on each other's cores at every operator.
PARALLEL_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if PARALLEL_WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

from autokd.registry import USER_MODULE_PREFIX, registries  # noqa: E402
from autokd.storage import journal_storage  # noqa: E402

# Shared fixtures (session or module scope) that take seconds to a minute to build: with `--dist
# loadgroup`, every test that uses one runs on the same worker, so each is built once (the cheap tiny
# teacher is built per worker). `deployed` trains a student per family, `finished` runs a trial.
COSTLY_SHARED_FIXTURES = (
    "ray_cluster",
    "smoke_run",
    "confirmed_run",
    "longer_confirmed_run",
    "own_data_export",
    "deployed",
    "postgres_url",
    "finished",
)


def pytest_configure(config):
    if PARALLEL_WORKERS > 1:
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = list(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("search_with") == "ray":
            used.append("ray_cluster")  # search_with asks for the cluster by name, for its ray case
        group = next((name for name in COSTLY_SHARED_FIXTURES if name in used), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


# A study small enough for tests: digits, a small teacher, one-epoch tiny students.
TINY_STUDY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "image_size": 32},
    "teacher": {"model": "resnet10t", "epochs": 3, "batch_size": 32, "lr": 0.003},
    "search_space": {
        "families": ["resnet", "convnext"],
        "width": [0.125, 0.25],
        "depth": [0.5, 0.5],
        "methods": ["hinton_kd"],
        "distillation_share": [0.5, 0.9],
        "method_params": {"hinton_kd": {"temperature": [2.0, 4.0]}},
    },
    "training": {"batch_size": 64, "threads": 1},
    "budget": {"trials": 2, "epochs": 1},
    "objectives": {"latency_min_run_time_s": 0.05},
    "quantization": {"calibration_batches": 2},
    # every proposal trained, none screened: the tests that exercise the strategy turn it on
    "sampler": {"kind": "random", "candidates": 1},
    "prescreen": False,
}


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder shared by the session, so the tiny teacher is trained once."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_resources(shared_runs: Path):
    """Data, teacher and teacher outputs of the tiny study (the teacher trained once per session)."""
    from autokd.config import parse_study
    from autokd.resources import prepare_resources

    return prepare_resources(
        parse_study(copy.deepcopy(TINY_STUDY)), runs_root=shared_runs, log=lambda _: None
    )


@pytest.fixture
def tiny_study() -> dict:
    """A fresh copy of the tiny study document."""
    return copy.deepcopy(TINY_STUDY)


# Modules that tests create and import; anything else newly imported stays loaded.
TEST_MODULE_PREFIXES = (f"{USER_MODULE_PREFIX}.", "autokd.methods.builtin.autokd_test_", "autokd_test_")


@pytest.fixture
def clean_registry():
    """Restore every registry and drop the extension modules a test imported, afterwards."""
    snapshots = [(registry, registry.snapshot()) for registry in registries()]
    modules = set(sys.modules)
    yield
    for registry, snapshot in snapshots:
        registry.restore(snapshot)
    for name in set(sys.modules) - modules:
        if name.startswith(TEST_MODULE_PREFIXES):
            del sys.modules[name]


def _write_study(directory: Path, document: dict) -> Path:
    path = directory / f"{document['name']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def write_study():
    """``write_study(directory, document)``: write a study document as ``<directory>/<name>.yaml``."""
    return _write_study


def _trials_of(run_dir: Path, name: str | None = None) -> list[optuna.trial.FrozenTrial]:
    storage = journal_storage(run_dir)
    return optuna.load_study(study_name=name or run_dir.name, storage=storage).get_trials()


@pytest.fixture
def trials_of():
    """``trials_of(run_dir[, name])``: the stored trials of the study in a run folder."""
    return _trials_of


def _make_run(
    run_dir: Path, name: str | None = None, *, settings: dict | None = None, configs: tuple[dict, ...] = ()
) -> Path:
    """A run folder whose journal is written by plain Optuna (as anyone could write one), no training:
    study ``name`` (default: the folder's name), the study document ``settings`` as its stored study,
    and one COMPLETE trial per TrialConfig dict in ``configs``, numbered from 0."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from autokd.pareto import DIRECTIONS
    from autokd.storage import JOURNAL

    run_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
    study = optuna.create_study(study_name=name or run_dir.name, storage=storage, directions=list(DIRECTIONS))
    if settings is not None:
        study.set_user_attr("study", settings)
    for config in configs:
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE, values=[0.9, 10.0, 1.0], user_attrs={"config": config}
            )
        )
    return run_dir


@pytest.fixture
def make_run():
    """``make_run(run_dir, name=None, *, settings=None, configs=())``: a hand-built run folder."""
    return _make_run


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster (2 CPUs) on 127.0.0.1 with the session's token; its address."""
    port = _free_port()
    # Short, private temp dir: Ray's socket paths must fit in 107 bytes, and stale files stay ours.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_program = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray_program,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopping it stops every process it started
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not open its port"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's own graceful stop takes half a minute; a test cluster in a private temp dir needs none.
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is still there
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[int, Path]:
    """The shipped smoke study run once through the CLI: (exit code, folder with runs/ and reports/)."""
    from autokd.cli import main

    root = tmp_path_factory.mktemp("smoke")
    code = main(
        ["search", str(REPO / "studies" / "smoke.yaml")]
        + ["--runs-dir", str(root / "runs"), "--reports-dir", str(root / "reports"), "--no-progress"]
    )
    return code, root


@pytest.fixture(params=["optuna", "ray"])
def search_with(request):
    """``search_with(study_document, **options)``: ``autokd.search`` on each backend (no report), with
    the Ray backend joining the session's test cluster. Both backends must pass the same tests."""
    import autokd

    backend = request.param
    address = request.getfixturevalue("ray_cluster") if backend == "ray" else None

    def run(document: dict, **options):
        options.setdefault("log", lambda _: None)
        if backend == "optuna":
            options.setdefault("progress", False)
        return autokd.search(document, backend=backend, address=address, reports_dir=None, **options)

    run.backend = backend
    return run


def _write_image_folder(
    root: Path, classes=("cat", "dog", "eel"), per_class: int = 12, size: int = 20, mode="RGB"
):
    """An ImageFolder of PNGs: each class a colour of its own plus noise, so a model can learn it."""
    from PIL import Image

    rng = np.random.default_rng(len(str(root)))
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (
                rng.integers(0, 60, size=(size, size, 3))
                + np.array([0, 90, 180])[[index % 3, (index + 1) % 3, (index + 2) % 3]]
            )
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
            (image.convert("L") if mode == "L" else image).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def write_image_folder():
    """``write_image_folder(root, classes=..., per_class=..., size=..., mode="RGB" | "L") -> root``."""
    return _write_image_folder


@pytest.fixture(scope="session")
def own_data_export(tmp_path_factory):
    """A study on an RGB ImageFolder (streamed) searched from its study file (relative paths), one trial
    exported."""
    import autokd

    root = tmp_path_factory.mktemp("own")
    _write_image_folder(root / "project" / "photos" / "train", per_class=16)
    _write_image_folder(root / "project" / "photos" / "test", per_class=6)
    document = copy.deepcopy(TINY_STUDY)
    document["name"] = "own-photos"
    # Streamed from disk (as data too large for memory are), so search, export and predict cover that path.
    document["data"] = {
        "dataset": "image_folder",
        "train_dir": "photos/train",
        "test_dir": "photos/test",
        "in_memory": False,
        "loader_workers": 1,
    }
    document["teacher"]["epochs"] = 2
    document["budget"]["trials"] = 1
    document["search_space"]["families"] = ["resnet"]
    study_file = root / "project" / "own-photos.yaml"
    study_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = autokd.search(
        study_file, runs_dir=root / "runs", reports_dir=None, log=lambda _: None, progress=False
    )
    (trial,) = [t for t in result.records.trials if t.completed]
    export = autokd.export(result.run_dir, trial=trial.number)
    return root, export


@pytest.fixture(scope="session")
def confirmed_run(shared_runs):
    """The tiny study searched (2 trials), then its best front point confirmed with one new seed, and
    its baselines trained over the same two seeds."""
    import autokd

    document = copy.deepcopy(TINY_STUDY)
    document["name"] = "confirmed"
    result = autokd.search(
        document, runs_dir=shared_runs, reports_dir=None, log=lambda _: None, progress=False
    )
    autokd.confirm(result.run_dir, top=1, seeds=1, log=lambda _: None)
    autokd.confirm(result.run_dir, top=1, seeds=1, baselines=True, log=lambda _: None)
    return result.run_dir


@pytest.fixture(scope="session")
def longer_confirmed_run(shared_runs):
    """The tiny study searched (1 trial of 1 epoch), its front point confirmed at 2 epochs (1 new seed)
    with its baselines, then once more at its own budget (1 new seed): (run folder, the lines the
    2-epoch confirmation logged)."""
    import autokd

    document = copy.deepcopy(TINY_STUDY)
    document["name"] = "confirmed-longer"
    document["budget"]["trials"] = 1
    result = autokd.search(
        document, runs_dir=shared_runs, reports_dir=None, log=lambda _: None, progress=False
    )
    lines: list[str] = []
    autokd.confirm(result.run_dir, seeds=1, epochs=2, baselines=True, log=lines.append)
    autokd.confirm(result.run_dir, seeds=1, log=lambda _: None)
    return result.run_dir, lines
