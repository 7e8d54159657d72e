"""KFP components of the DKD pipeline (`components.dkd`); thin wrappers around dkd_core.

`with_image(image)` gives the same components with another base image, for a
pipeline compiled against a different build of the dkd image.
"""

from __future__ import annotations

from types import SimpleNamespace

from kfp import dsl

from components.dkd import ALL, IMAGE, evaluate, report, split_data, train_step


def with_image(image: str = IMAGE) -> SimpleNamespace:
    """The components (`.split_data`, `.train_step`, `.evaluate`, `.report`) on `image`."""
    if image == IMAGE:
        return SimpleNamespace(**{c.python_func.__name__: c for c in ALL})
    decorate = dsl.component(base_image=image, install_kfp_package=False)
    return SimpleNamespace(**{c.python_func.__name__: decorate(c.python_func) for c in ALL})


__all__ = ["IMAGE", "evaluate", "report", "split_data", "train_step", "with_image"]
