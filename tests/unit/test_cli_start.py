"""Both command lines start without torch: `--help` (of the CLI and of every command) answers
at once, and a pod that only compiles, submits or renders jobs never loads it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def no_torch_env(tmp_path_factory):
    """An environment whose `import torch` fails, ahead of the real one on sys.path."""
    root = tmp_path_factory.mktemp("poisoned")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


def commands(cli: str) -> list[str]:
    """The commands `python -m <cli> --help` lists, from its parser."""
    if cli == "pipelines":
        from pipelines.__main__ import build_parser
    else:
        from dkd_core.cli import build_parser
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sorted(sub.choices)


@pytest.mark.parametrize("cli", ["pipelines", "dkd_core"])
def test_help_of_the_cli_and_of_every_command_imports_no_torch(cli, no_torch_env):
    names = commands(cli)
    assert len(names) >= 5
    for args in (["--help"], *([name, "--help"] for name in names)):
        result = subprocess.run(
            [sys.executable, "-m", cli, *args], cwd=REPO, env=no_torch_env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
        assert "usage: python -m" in result.stdout, args
        assert "torch was imported" not in result.stderr
