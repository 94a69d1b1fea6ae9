"""autokd: search knowledge-distillation settings for the best small INT8 student of a teacher.

The public API (see :mod:`autokd.api`)::

    autokd.search(study_or_path, backend="optuna")   -> StudyResult (.front, .trials, .run_dir)
    autokd.load_study(run) / autokd.report(run) / autokd.export(run, trial) / autokd.load(path)
    autokd.confirm(run, top=K, seeds=S)               -> the front retrained with new seeds
    autokd.predict(export, images)
    autokd.list_methods() / list_families() / list_datasets() / list_backends()
    @autokd.register_method / register_family / register_dataset / register_backend

Names are imported on first use, so ``import autokd`` (and ``autokd --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("autokd")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    "search": "autokd.api",
    "load_study": "autokd.api",
    "report": "autokd.api",
    "export": "autokd.api",
    "confirm": "autokd.api",
    "load": "autokd.api",
    "predict": "autokd.api",
    "list_methods": "autokd.api",
    "list_families": "autokd.api",
    "list_datasets": "autokd.api",
    "list_backends": "autokd.api",
    "StudyResult": "autokd.api",
    "UsageError": "autokd.api",
    "StudyFileError": "autokd.config",
    "Study": "autokd.config",
    "register_method": "autokd.methods",
    "Method": "autokd.methods",
    "Hyperparameter": "autokd.methods",
    "register_family": "autokd.students",
    "register_dataset": "autokd.data",
    "register_backend": "autokd.quantize",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autokd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
