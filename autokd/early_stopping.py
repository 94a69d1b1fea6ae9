"""Early stopping for multi-objective studies, where Optuna's pruners and Trial.report do not work.

The rule (median stopping): after ``warmup_epochs``, a trial whose validation top-1 at epoch k is
below the median of the completed trials' validation top-1 at epoch k stops. Pure functions and an
exception; the orchestrator records a stopped trial as PRUNED.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


class TrialStopped(Exception):
    """Raised from a trial's epoch callback to stop it; carries what it reached."""

    def __init__(self, epoch: int, val_accuracy: float, median: float, seconds_saved: float = 0.0) -> None:
        super().__init__(f"val top-1 {val_accuracy:.4f} at epoch {epoch} is below the median {median:.4f}")
        self.epoch = epoch
        self.val_accuracy = val_accuracy
        self.median = median
        self.seconds_saved = seconds_saved


def should_stop(
    epoch: int,
    val_accuracy: float,
    completed_histories: Sequence[Sequence[float]],
    *,
    warmup_epochs: int,
    min_completed_trials: int,
) -> float | None:
    """Return the median it fell below when the trial should stop at ``epoch``, else None.

    ``completed_histories`` are the per-epoch validation accuracies of completed trials.
    """
    if epoch <= warmup_epochs:
        return None
    at_epoch = [h[epoch - 1] for h in completed_histories if len(h) >= epoch]
    if len(at_epoch) < min_completed_trials:
        return None
    median = statistics.median(at_epoch)
    return median if val_accuracy < median else None
