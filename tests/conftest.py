"""Shared fixtures: small study documents and a runs folder whose cached teacher tests share."""

from __future__ import annotations

import copy
import os
import secrets
import sys
from pathlib import Path

import pytest
import yaml

# Ray clusters the tests start, and the drivers that join them, stay on 127.0.0.1 (Ray replaces a
# loopback address by the machine's outward one unless it believes it runs single-node) and require
# a token private to this test session. Ray reads both when it is first imported, hence here.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)

from autokd.registry import USER_MODULE_PREFIX, registries

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
    "sampler": {"kind": "random"},
}


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder shared by the session, so the tiny teacher is trained once."""
    return tmp_path_factory.mktemp("runs")


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


def write_study(directory: Path, document: dict) -> Path:
    """Write ``document`` as ``<directory>/<name>.yaml`` and return its path."""
    path = directory / f"{document['name']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path
