"""The 0.1 import path of the method contract, kept for one release: use :mod:`autokd.methods`."""

from __future__ import annotations

import warnings

from autokd.methods import *  # noqa: F403
from autokd.methods import DistillationPlugin, PluginLoadError, load_plugins, register_plugin  # noqa: F401

warnings.warn(
    "autokd.distill is renamed autokd.methods (Method, register_method, METHODS); the old names go in 0.3",
    DeprecationWarning,
    stacklevel=2,
)
