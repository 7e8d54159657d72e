"""Fixtures for integration tests: a small generated dataset and a fast config."""

from pathlib import Path

import pytest

from dkd_core.config import load_config

CONFIGS = Path(__file__).parents[2] / "pipelines" / "configs"


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    from dkd_core.data import make_toy_dataset

    root = tmp_path_factory.mktemp("toy") / "data"
    make_toy_dataset(root, classes=6, images=120, size=64, seed=0)
    return root


def toy_config(toy_root: Path, output: Path, *overrides: str):
    """The toy benchmark config, shrunk to seconds: few images, few iterations."""
    return load_config(
        CONFIGS / "toy.yaml",
        [
            f"data.root={toy_root}",
            f"run.output={output}",
            "data.num_workers=0",
            "data.batch_size=8",
            "data.eval_batch_size=8",
            "optim.epochs=2",
            "train.checkpoint_every=0",
            "model.aspp_channels=32",
            "train.metrics_port=0",  # a free port: exercises the exporter without collisions
            *overrides,
        ],
    )


def interrupt_before_final_checkpoint(monkeypatch, config, step: int = 0) -> BaseException:
    """Train `step` to its last iteration, then stop as Ctrl-C would before the final
    checkpoint (what is left is the periodic checkpoints); returns what was raised."""
    import dkd_core.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "evaluate_model", interrupted)
        with pytest.raises(KeyboardInterrupt) as stopped:
            train_module.train_step(config, step)
    return stopped.value
