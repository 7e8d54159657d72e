"""The training loop's hold for tests that watch a step live (dkd_core/hold_for_tests.py)."""

from __future__ import annotations

import threading

import pytest

from dkd_core.errors import DKDError
from dkd_core.hold_for_tests import HOLD_FILE_ENV, hold


def test_without_the_variable_nothing_is_held(monkeypatch):
    monkeypatch.delenv(HOLD_FILE_ENV, raising=False)
    hold(1)  # returns at once


def test_holds_while_the_file_names_the_iteration_and_goes_on_once_it_changes(
    monkeypatch, tmp_path
):
    path = tmp_path / "hold"
    monkeypatch.setenv(HOLD_FILE_ENV, str(path))
    hold(3)  # no file yet: nothing held
    path.write_text("7\n")
    hold(6)  # another iteration
    released = threading.Event()
    waiter = threading.Thread(target=lambda: (hold(7), released.set()))
    waiter.start()
    try:
        assert not released.wait(0.3), "went on while the file named its iteration"
    finally:
        path.write_text("9")
        waiter.join(timeout=30)
    assert released.is_set()


def test_a_file_that_names_no_iteration_is_one_clear_error(monkeypatch, tmp_path):
    path = tmp_path / "hold"
    path.write_text("half")
    monkeypatch.setenv(HOLD_FILE_ENV, str(path))
    with pytest.raises(
        DKDError, match=rf"{HOLD_FILE_ENV} .*expected an iteration number, got 'half'"
    ):
        hold(1)
