"""The process group's timeout is the config's, explicit: it must cover the barrier the other
ranks wait in while each node's first rank mirrors the dataset (`step_data.dataset_layout`)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from dkd_core import distributed, train
from dkd_core.config import RESULT_NEUTRAL_KEYS, Config, load_config
from dkd_core.errors import DKDError


def test_the_process_group_gets_the_timeout(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    info = distributed.init_distributed("cpu", timeout_minutes=90)
    assert (info.rank, info.world_size) == (1, 2)
    assert calls == [{"backend": "gloo", "init_method": "env://", "timeout": timedelta(minutes=90)}]


def test_training_joins_with_the_configured_timeout(monkeypatch):
    seen = []

    def joined(device=None, timeout_minutes=None):
        seen.append(timeout_minutes)
        raise DKDError("stop here")

    monkeypatch.setattr(distributed, "init_distributed", joined)
    config = load_config(None, ["train.process_group_timeout_minutes=240"])
    with pytest.raises(DKDError, match="stop here"):
        train.train_step(config, 0)
    assert seen == [240]


def test_the_default_covers_a_long_download_and_changes_no_result():
    assert Config().train.process_group_timeout_minutes == 120
    assert "train.process_group_timeout_minutes" in RESULT_NEUTRAL_KEYS
    with pytest.raises(DKDError, match="process_group_timeout_minutes"):
        load_config(None, ["train.process_group_timeout_minutes=0"])
