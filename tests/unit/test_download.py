"""torch.hub's file-name rule for sha256 prefixes, as `dkd_core.download` reads it."""

from __future__ import annotations

import re

import pytest
import torch.hub

from dkd_core.download import HUB_HASH_REGEX, hub_hash_prefix


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("resnet101-63fe2227.pth", "63fe2227"),
        ("resnet50-0676ba61.pth", "0676ba61"),
        ("deeplabv3_resnet101_coco-586e9e4e.pth", "586e9e4e"),
        ("resnet101_v2-cd907fc2.pth.tar", "cd907fc2"),
        ("resnet101.pth", None),
        ("resnet-101.pth", "101"),  # any run of hex digits between `-` and `.` counts
        ("my-weights.pth", None),
        ("name-.pth", None),  # an empty prefix checks nothing in torch.hub either
        ("a-b.c", "b"),
    ],
)
def test_prefix_follows_torch_hub(name, prefix):
    assert hub_hash_prefix(name) == prefix
    match = torch.hub.HASH_REGEX.search(name)
    assert (match.group(1) or None if match else None) == prefix


def test_same_regex_as_the_installed_torch_hub():
    assert re.compile(HUB_HASH_REGEX.pattern).pattern == torch.hub.HASH_REGEX.pattern
