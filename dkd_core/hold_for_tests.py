"""Holding a training step at an iteration a test chooses, for tests only.

A test that watches a step live (Prometheus scraping its metrics, say) must see
it at several iterations whatever the machine's speed: a fast machine finishes
the toy before a 1 s scrape interval has passed a few times. With
`DKD_TEST_HOLD_FILE` set to a path, the training loop calls `hold(iteration)`
after each iteration is observed and checkpointed: while the file holds that
iteration's number, the process waits. The test writes the next iteration to
hold at once it has seen the current one, so it sees every iteration it asked
for, on any machine. Unset (always, outside tests), `hold` returns at once.

The file is replaced atomically by the test; a missing or empty file holds nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dkd_core.errors import DKDError

HOLD_FILE_ENV = "DKD_TEST_HOLD_FILE"
POLL_SECONDS = 0.02


def _held_at(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise DKDError(
            f"{HOLD_FILE_ENV} ({path}): expected an iteration number, got {text!r}"
        ) from None


def hold(iteration: int) -> None:
    """Wait while the hold file names `iteration`; at once when the variable is unset."""
    raw = os.environ.get(HOLD_FILE_ENV, "").strip()
    if not raw:
        return
    path = Path(raw)
    while _held_at(path) == iteration:
        time.sleep(POLL_SECONDS)
