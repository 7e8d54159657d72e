"""Progress lines of a training step (`dkd_core.progress`)."""

import pytest

from dkd_core.progress import ProgressLine, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(total=100, start=0, every=30.0):
    clock, lines = Clock(), []
    line = ProgressLine("step 1", total, start, every, clock=clock, emit=lines.append)
    return line, clock, lines


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (187, "3m07s"), (7500, "2h05m"), (-3, "0s")],
)
def test_durations_are_short(seconds, text):
    assert format_duration(seconds) == text


def test_a_line_on_the_first_logged_iteration_then_every_interval_and_at_the_end():
    line, clock, lines = progress(total=100, every=30.0)
    for iteration in range(1, 101):
        clock.now += 1.0  # 1 s per iteration
        logged = {"total": 1.0 / iteration, "mbce": 0.5} if iteration % 10 == 0 else None
        line.update(iteration, logged)
    # Lines only on logged iterations (10, 40, 70: 30 s apart) and on the last one.
    assert lines == [
        "step 1: iteration 10/100 (10%), loss 0.1000, 1 it/s, ETA 1m30s",
        "step 1: iteration 40/100 (40%), loss 0.0250, 1 it/s, ETA 1m00s",
        "step 1: iteration 70/100 (70%), loss 0.0143, 1 it/s, ETA 30s",
        "step 1: iteration 100/100 (100%), loss 0.0100, 1 it/s, done in 1m40s",
    ]


def test_the_last_line_keeps_the_last_logged_loss_when_the_end_is_not_logged():
    line, clock, lines = progress(total=15, every=1000.0)
    for iteration in range(1, 16):
        clock.now += 0.5
        line.update(iteration, {"total": 2.0} if iteration % 10 == 0 else None)
    assert lines == [
        "step 1: iteration 10/15 (67%), loss 2.0000, 2 it/s, ETA 2s",
        "step 1: iteration 15/15 (100%), loss 2.0000, 2 it/s, done in 8s",
    ]


def test_a_resumed_step_counts_speed_from_where_it_resumed():
    line, clock, lines = progress(total=1000, start=900)
    clock.now += 20.0
    assert line.update(910, {"total": 0.5}) == (
        "step 1: iteration 910/1000 (91%), loss 0.5000, 0.5 it/s, ETA 3m00s"
    )
    assert lines == [line.format(910, 20.0)]


def test_no_line_before_a_loss_is_logged_nor_when_disabled():
    line, clock, lines = progress(total=100)
    clock.now += 50
    assert line.update(1, None) is None and lines == []
    quiet = ProgressLine("step 0", 10, enabled=False, emit=lines.append)
    for iteration in range(1, 11):
        quiet.update(iteration, {"total": 1.0})
    assert lines == []
