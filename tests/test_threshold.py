"""Time-to-threshold on hand-made reward histories: targets, the hold, noise spikes, resuming."""

import json

import pytest

from cola.rl.threshold import MA_WINDOW, ThresholdTracker

SECONDS_PER_STEP = 2.0


def feed(tracker: ThresholdTracker, rewards: list[float], history: list[float] | None = None) -> list[float]:
    """Feed step means one by one, as the trainer does (step i takes 2 s); return the history."""
    history = [] if history is None else history
    for reward in rewards:
        history.append(reward)
        tracker.update(history, len(history), len(history) * SECONDS_PER_STEP)
    return history


# Ten steps at 0 fix a gain target of 0.25; then 1.0s lift the 10-step mean by 0.1 per step, so it first
# reaches the target at step 13 (0.3; 0.2 at step 12). A -1.0 at step 14 drops it to 0.2, the 1.0s after lift
# it again from step 15 (0.3, 0.4, 0.5, 0.6 at steps 15-18).
START = [0.0] * MA_WINDOW
SPIKE = [1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


def test_gain_target_is_the_first_window_plus_the_threshold() -> None:
    tracker = ThresholdTracker(0.25, "gain", hold=0)
    feed(tracker, [0.1] * MA_WINDOW)
    assert tracker.target == pytest.approx(0.35) and not tracker.reached


def test_without_hold_the_first_crossing_counts() -> None:
    tracker = ThresholdTracker(0.25, "gain", hold=0)
    feed(tracker, START + SPIKE)
    assert (tracker.step, tracker.seconds) == (13, 26.0)


def test_a_crossing_that_falls_back_is_noise_and_the_held_one_is_recorded_at_its_own_step() -> None:
    tracker = ThresholdTracker(0.25, "gain", hold=3)
    history = feed(tracker, START + SPIKE[:7])  # up to step 17: the second crossing (15) held only 2 steps
    assert not tracker.reached and tracker.crossing_step == 15
    assert tracker.summary()["threshold_reached"] == 0.0 and "threshold_step" not in tracker.summary()
    feed(tracker, SPIKE[7:], history)  # step 18: held 3 steps
    assert (tracker.step, tracker.seconds) == (15, 30.0)
    summary = tracker.summary()
    assert summary["threshold_reached"] == 1.0 and summary["threshold_step"] == 15.0
    assert summary["threshold_seconds"] == 30.0 and summary["threshold_hold"] == 3.0
    assert summary["threshold_is_gain"] == 1.0 and summary["threshold_at_start"] == 0.0


def test_absolute_target_met_by_the_start_model_is_flagged() -> None:
    tracker = ThresholdTracker(0.0, "absolute", hold=3)
    feed(tracker, [0.5] * (MA_WINDOW + 3))
    assert tracker.target == 0.0 and tracker.step == MA_WINDOW
    assert tracker.summary()["threshold_at_start"] == 1.0


def test_disabled_tracker_records_nothing() -> None:
    tracker = ThresholdTracker(None)
    feed(tracker, [1.0] * 30)
    assert tracker.summary() == {} and tracker.target is None and not tracker.reached


def test_resuming_from_state_gives_the_same_result() -> None:
    rewards = START + SPIKE
    straight = ThresholdTracker(0.25, "gain", hold=3)
    feed(straight, rewards)
    first = ThresholdTracker(0.25, "gain", hold=3)
    history = feed(first, rewards[:15])  # mid-hold of the second crossing
    resumed = ThresholdTracker(0.25, "gain", hold=3)
    resumed.load_state(json.loads(json.dumps(first.state())))  # through the checkpoint's JSON
    feed(resumed, rewards[15:], history)
    assert resumed == straight and resumed.step == 15
