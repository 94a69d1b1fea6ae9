"""How trials are run: ``optuna`` (this machine's processes) or ``ray`` (Ray Tune, one machine or a cluster).

Both drive the same :class:`autokd.runner.TrialRunner` under the same :class:`autokd.budget.Budget`;
they differ only in where trials run. ``ray`` is imported only when asked for, so Ray stays optional.
"""

from __future__ import annotations

DRIVERS = ("optuna", "ray")


class BackendUnavailableError(RuntimeError):
    """An optional backend's packages are not installed; the message says what to install."""
