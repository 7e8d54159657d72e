"""KFP components of the DKD pipeline (`components.dkd`); thin wrappers around dkd_core.

`with_image(image)` gives the same components on the image a pipeline is compiled
for; the components as declared (`LOCAL_IMAGE`) serve kfp.local runs only.
"""

from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from components.dkd import (
    ALL,
    LOCAL_IMAGE,
    evaluate,
    prepare_dataset,
    report,
    split_data,
    train_step,
)


def with_image(image: str) -> SimpleNamespace:
    """The components (`.split_data`, `.train_step`, `.evaluate`, `.report`,
    `.prepare_dataset`) on `image`."""
    if image == LOCAL_IMAGE:
        return SimpleNamespace(**{c.python_func.__name__: c for c in ALL})
    decorate = dsl.component(base_image=image, install_kfp_package=False)
    return SimpleNamespace(**{c.python_func.__name__: decorate(c.python_func) for c in ALL})


__all__ = [
    "LOCAL_IMAGE",
    "evaluate",
    "prepare_dataset",
    "report",
    "split_data",
    "train_step",
    "with_image",
]
