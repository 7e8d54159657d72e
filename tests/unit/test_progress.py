"""Progress lines of a training step (`dkd_core.progress`)."""

import pytest

from dkd_core.progress import ProgressLine, RunSeries, bars_wanted, format_duration


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


def test_a_series_of_runs_says_when_each_starts_and_finishes_and_what_is_left():
    clock, lines = Clock(), []
    series = RunSeries(3, clock=clock, emit=lines.append)

    def train(seconds, result, *, extra=""):
        clock.now += seconds
        return result + extra

    assert series.run("seed 1 step 0", train, 60, "a") == "a"
    assert series.run("seed 1 DKD step 1", train, 120, "b", extra="!") == "b!"
    clock.now += 5  # between runs: counted in the elapsed time, not in a run
    series.run("seed 1 DKD step 2", train, 30, "c")
    assert lines == [
        "[1/3] seed 1 step 0: started (elapsed 0s)",
        "[1/3] seed 1 step 0: done in 1m00s (elapsed 1m00s, ETA 2m00s)",
        "[2/3] seed 1 DKD step 1: started (elapsed 1m00s)",
        "[2/3] seed 1 DKD step 1: done in 2m00s (elapsed 3m00s, ETA 1m30s)",
        "[3/3] seed 1 DKD step 2: started (elapsed 3m05s)",
        "[3/3] seed 1 DKD step 2: done in 30s (elapsed 3m35s)",
    ]


def test_a_failing_run_is_not_counted_as_finished():
    clock, lines = Clock(), []
    series = RunSeries(2, clock=clock, emit=lines.append)

    def fail():
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        series.run("seed 2 step 0", fail)
    assert lines == ["[1/2] seed 2 step 0: started (elapsed 0s)"] and series.finished == 0


@pytest.mark.parametrize(
    ("terminal", "progress", "bars"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_tqdm_bars_only_on_a_terminal(monkeypatch, terminal, progress, bars):
    class Stderr:
        def isatty(self):
            return terminal

    monkeypatch.setattr("sys.stderr", Stderr())
    assert bars_wanted(progress) is bars
