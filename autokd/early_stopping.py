"""Early stopping for multi-objective studies, where Optuna's pruners and Trial.report do not work.

The rule (median stopping): after ``warmup_epochs``, a trial whose validation top-1 at epoch k is
below the median of the given completed trials' validation top-1 at epoch k stops (the runner passes
the completed trials of the same student family with at most as many parameters: a student is judged
against those it must beat to extend the front, never stopped for trailing larger ones). A pure
function; both
drivers apply it through :meth:`autokd.runner.TrialRunner.early_stop` and record a stopped trial PRUNED.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


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
