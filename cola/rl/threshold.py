"""Time-to-threshold: when did an RL run's sampled reward reach a target, and stay there?

The paper's "half the computation" claim compares how long CoLA-RL and token-level RL take to reach the same
reward. Per GRPO step the trainer feeds the mean sampled reward; the tracker watches its moving average over
``MA_WINDOW`` steps (a single step's mean over 128 samples is too noisy to time anything).

* ``kind="absolute"``: the target is ``threshold`` itself.
* ``kind="gain"``: the target is the first full window's mean plus ``threshold``, a rise over the run's own
  start, for runs that start from different models (README, "Results on the default profile").

A crossing counts only once the moving average has stayed at or above the target for ``hold`` further steps:
at the tiny scale a window's mean has a standard error near 0.014, so a rise of a few hundredths is often one
lucky window that falls back (three-seed math runs of 2026-11-30). The recorded time is the crossing's own
step and seconds, so holding delays nothing but the confirmation; a run that ends while a crossing is still
being held has not reached the threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from cola.config.rl import MA_WINDOW

__all__ = ["MA_WINDOW", "ThresholdTracker"]


@dataclass
class ThresholdTracker:
    """Follows one run's reward history; ``step`` / ``seconds`` are set once the threshold is reached and
    held."""

    threshold: float | None  # None disables tracking
    kind: Literal["gain", "absolute"] = "gain"
    hold: int = MA_WINDOW
    target: float | None = None  # the reward the moving average must reach (known after the first window)
    step: int | None = None  # the confirmed crossing: its step and wall seconds
    seconds: float | None = None
    crossing_step: int | None = None  # a crossing still being held, not yet confirmed
    crossing_seconds: float | None = None

    def update(self, history: list[float], step: int, seconds: float) -> None:
        """Account for the step that just appended its mean reward to ``history``
        (``step`` = len(history))."""
        if self.threshold is None or self.step is not None or len(history) < MA_WINDOW:
            return
        window_mean = sum(history[-MA_WINDOW:]) / MA_WINDOW
        if self.target is None:
            if self.kind == "gain":
                self.target = window_mean + self.threshold  # the first full window is where the rise starts
                return
            self.target = self.threshold
        if window_mean < self.target:
            self.crossing_step = self.crossing_seconds = None  # fell back below: that crossing was noise
            return
        if self.crossing_step is None:
            self.crossing_step, self.crossing_seconds = step, seconds
        if step - self.crossing_step >= self.hold:
            self.step, self.seconds = self.crossing_step, self.crossing_seconds

    @property
    def reached(self) -> bool:
        return self.step is not None

    def summary(self) -> dict[str, float]:
        """The run-summary keys (``threshold_*``); empty when tracking is disabled."""
        if self.threshold is None:
            return {}
        out = {"reward_threshold": self.threshold, "threshold_is_gain": float(self.kind == "gain"),
               "threshold_hold": float(self.hold), "threshold_reached": float(self.reached)}
        if self.target is not None:
            out["threshold_target"] = self.target
        if self.reached:
            out["threshold_step"] = float(self.step)
            out["threshold_seconds"] = float(self.seconds)
            # Reached by the first full window: the start model was already there, so this run's time to the
            # threshold measures nothing about learning speed (only possible with an absolute target).
            out["threshold_at_start"] = float(self.step == MA_WINDOW)
        return out

    def state(self) -> dict[str, Any]:
        """JSON-able progress for a resumable checkpoint."""
        return asdict(self)

    def load_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
