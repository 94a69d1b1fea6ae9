"""When a search stops: one rule for every driver (Optuna processes, Ray Tune).

The budget counts completed trials only: a pruned, skipped or failed trial frees its place. A trial
starts only while completed plus running trials stay below the budget, and none starts after the
deadline or after ``max_consecutive_failures`` failed trials in a row (running ones finish), nor after
``MAX_CONSECUTIVE_SKIPS`` sampled students in a row were skipped before training (over the study's
size or latency budget, or unable to extend the front): the space has nothing left worth training.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from autokd.config import Study

MAX_CONSECUTIVE_SKIPS = 200


class StopReason(enum.Enum):
    """Why a search stopped. ``ok`` says whether it stopped the way the study asked it to."""

    BUDGET = "budget"
    TIME_LIMIT = "time limit"
    FAILURES = "consecutive failed trials"
    INTERRUPTED = "interrupted"
    WORKER_STOPPED = "a worker stopped"
    SKIPPED = "sampled students skipped before training, in a row"

    @property
    def ok(self) -> bool:
        """True for the two ends a study asks for: its budget or its time limit."""
        return self in (StopReason.BUDGET, StopReason.TIME_LIMIT)

    def __str__(self) -> str:
        return self.value


@dataclass
class Budget:
    """A study's budget as the drivers apply it; ``deadline`` is a ``time.time()`` value or None."""

    trials: int
    max_consecutive_failures: int
    deadline: float | None = None
    consecutive_failures: int = 0
    consecutive_skips: int = 0

    @classmethod
    def of(cls, study: Study, start: float | None = None) -> Budget:
        """The budget of ``study`` for a search that starts at ``start`` (now by default)."""
        start = time.time() if start is None else start
        minutes = study.budget.time_limit_minutes
        return cls(
            trials=study.budget.trials,
            max_consecutive_failures=study.budget.max_consecutive_failures,
            deadline=start + minutes * 60 if minutes else None,
        )

    def stop_reason(self, completed: int, now: float | None = None) -> StopReason | None:
        """Why no further trial may start, or None while the search goes on."""
        if completed >= self.trials:
            return StopReason.BUDGET
        if self.consecutive_failures >= self.max_consecutive_failures:
            return StopReason.FAILURES
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            return StopReason.SKIPPED
        if self.deadline is not None and (time.time() if now is None else now) > self.deadline:
            return StopReason.TIME_LIMIT
        return None

    def may_start(self, completed: int, running: int) -> bool:
        """Whether one more trial may start beside ``running`` ones without overshooting the budget."""
        return completed + running < self.trials

    def count(self, failed: bool, skipped: bool = False) -> None:
        """Count a finished trial: failures in a row stop the search, anything else resets the count;
        a student skipped before training counts towards the skips in a row, anything else resets it."""
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
