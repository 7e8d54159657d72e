"""Shared test helpers."""

from __future__ import annotations

import math
import re

import torch


def synthetic_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic, well-scaled weights for any DeepLabV3 state-dict layout.

    Keys are visited in sorted order, so the same (key, shape) map gives the same
    tensors on every machine. Used to run the authors' model and ours on the same
    weights (tests/golden/README.md); conv weights are He-scaled and residual
    branches damped so that ResNet-101 activations stay in a sensible range.
    """
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("running_var"):
            out[key] = 0.75 + 0.5 * torch.rand(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif key.endswith("bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:  # BN scale; the last BN of a residual branch is damped
            last_in_branch = re.search(r"layer\d\.\d+\.bn[23]\.weight$", key) is not None
            scale = 0.2 if last_in_branch else 1.0
            out[key] = scale * (0.75 + 0.5 * torch.rand(shape, generator=g))
    return out


#: Gradients up to this many values are stored whole in the golden file; larger ones
#: as `gradient_summary` (keeps the file small: the three largest hold 2.2M values).
WHOLE_GRADIENT_MAX = 65_536
GRADIENT_HEAD = 4_096


def gradient_summary(grad: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the golden file stores of a large gradient, so that every value counts.

    `head`: the first values exactly; `row_sum` / `row_norm`: the sum and L2 norm of
    each output channel (dim 0) over all its values; `absmax`: the largest magnitude.
    """
    rows = grad.detach().double().flatten(1)  # [out_channels, values per channel]
    return {
        "head": grad.detach().flatten()[:GRADIENT_HEAD].contiguous(),
        "row_sum": rows.sum(1).float(),
        "row_norm": rows.norm(dim=1).float(),
        "absmax": grad.detach().abs().max().reshape(1),
    }
