"""ASPP: atrous rates per output stride, defaults, initialisation (docs/method.md §3)."""

import math

import pytest
import torch
from torch import nn

from dkd_core.model.aspp import ASPP, ConvBNReLU

# DeepLabV3's rates: 6/12/18 at output stride 16, doubled at 8, halved at 32.
EXPECTED_RATES = {16: (6, 12, 18), 8: (12, 24, 36), 32: (3, 6, 9)}


@pytest.mark.parametrize("output_stride", sorted(EXPECTED_RATES))
def test_atrous_rates_per_output_stride(output_stride):
    aspp = ASPP(4, channels=8, output_stride=output_stride)
    convs = [branch.conv for branch in aspp.branches]
    assert convs[0].kernel_size == (1, 1) and convs[0].dilation == (1, 1)
    rates = EXPECTED_RATES[output_stride]
    assert [c.kernel_size for c in convs[1:]] == [(3, 3)] * 3
    assert [c.dilation for c in convs[1:]] == [(r, r) for r in rates]
    # "Same" padding: each atrous branch keeps the feature map's size.
    assert [c.padding for c in convs[1:]] == [(r, r) for r in rates]
    assert aspp.pooling.conv.kernel_size == (1, 1)
    assert aspp.project.conv.in_channels == 5 * 8 and aspp.project.conv.kernel_size == (1, 1)
    fuse = aspp.fuse.conv
    assert (fuse.kernel_size, fuse.dilation, fuse.padding) == ((3, 3), (1, 1), (1, 1))
    out = aspp.eval()(torch.randn(2, 4, 11, 7))
    assert out.shape == (2, 8, 11, 7)


def test_convolutions_have_no_bias():
    aspp = ASPP(4, channels=8)
    convs = [m for m in aspp.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7 and all(c.bias is None for c in convs)  # BN follows each one


def test_defaults_are_deeplabv3s_head():
    aspp = ASPP(4)
    assert aspp.out_channels == 256
    assert [b.conv.dilation for b in aspp.branches[1:]] == [(6, 6), (12, 12), (18, 18)]
    assert aspp.dropout.p == 0.1
    block = ConvBNReLU(4, 8)  # 1x1, no dilation
    assert (block.conv.kernel_size, block.conv.dilation, block.conv.padding) == (
        (1, 1),
        (1, 1),
        (0, 0),
    )


def test_convolutions_start_kaiming_normal_and_bn_as_identity():
    torch.manual_seed(0)
    aspp = ASPP(64, channels=64)
    for conv in (aspp.branches[1].conv, aspp.fuse.conv, aspp.project.conv):
        fan_in = conv.weight[0].numel()
        # He et al.: std sqrt(2 / fan_in); PyTorch's own default would be 1 / sqrt(3 fan_in).
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    for bn in (m for m in aspp.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_output_is_non_negative():
    # The decomposition into positive and negative parts relies on it (docs/method.md §3).
    out = ASPP(4, channels=8).train()(torch.randn(2, 4, 9, 9) * 5)
    assert (out >= 0).all() and (out > 0).any()
