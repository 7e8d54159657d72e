"""The shell commands of README.md, pipelines/README.md and docs/*.md are checked against the code.

Every command in a ```bash block is parsed (continuation lines joined, comments
dropped). Three checks follow:

- `python -m dkd_core|pipelines SUBCOMMAND ...` (also under `.venv/bin/`, `torchrun -m`):
  the subcommand exists and every `--flag` it uses is in that subcommand's `--help`.
- `make TARGET VAR=...`: the target is defined and the variable is read by the Makefiles.
- Commands that need no GPU, cluster or network are run, each in a fresh folder beside
  the repository's `pipelines/` (so `pipelines/configs/...` resolves as in a checkout):
  see `runnable`. A renamed flag, subcommand or target then fails here.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dkd_core.data.toy import make_toy_dataset

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "README.md", REPO / "pipelines/README.md", *sorted((REPO / "docs").glob("*.md")))
MODULES = ("dkd_core", "pipelines")
PYTHONS = (".venv/bin/python", "python", "python3")
#: (module, subcommand) pairs that are run: none needs a GPU, a cluster or the network.
#: `split` only with the toy config, whose dataset the test generates first.
RUNNABLE = {
    ("dkd_core", "toy-data"),
    ("dkd_core", "split"),
    ("pipelines", "compile"),
    ("pipelines", "render-job"),
}
TOY_CONFIG = "pipelines/configs/toy.yaml"
RUN_TIMEOUT = 60  # seconds per command


@dataclass(frozen=True)
class Command:
    doc: str  # path relative to the repository
    line: int  # first line of the command in the doc
    text: str  # the shell text, continuation lines joined

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every ```bash / ```sh / ```shell block."""
    blocks: list[tuple[int, list[str]]] = []
    fenced, shell, lines, start = False, False, [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            if fenced and shell:
                blocks.append((start, lines))
            elif not fenced:
                shell = line.strip()[3:].strip() in ("bash", "sh", "shell")
                lines, start = [], number + 1
            fenced = not fenced
        elif fenced and shell:
            lines.append(line)
    return blocks


def commands_of(path: Path) -> list[Command]:
    """The commands of a Markdown file: `\\` continuations and open quotes joined."""
    out = []
    for start, lines in shell_blocks(path.read_text()):
        pending, first = "", 0
        for offset, line in enumerate(lines):
            if not pending:
                first = start + offset
            pending += line + "\n"
            if line.rstrip().endswith("\\"):
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # a quoted string spanning lines (python -c '...')
                continue
            text = pending.replace("\\\n", " ").strip()
            pending = ""
            if text and not text.startswith("#"):
                out.append(Command(str(path.relative_to(REPO)), first, " ".join(text.split())))
    return out


ALL_COMMANDS = [c for doc in DOCS for c in commands_of(doc)]


def segments(command: Command) -> list[list[str]]:
    """The simple commands of a line (split at |, &&, ||, ;), as argument lists."""
    lexer = shlex.shlex(command.text, posix=True, punctuation_chars="|&;")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in ("|", "||", "&&", ";", "&"):
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


@dataclass(frozen=True)
class ModuleCall:
    module: str
    args: tuple[str, ...]  # after `-m MODULE`
    launcher: str  # the python or torchrun the doc names

    @property
    def subcommand(self) -> str | None:
        return next((a for a in self.args if not a.startswith("-")), None)


def module_call(argv: list[str]) -> ModuleCall | None:
    """`python -m MODULE ...` / `torchrun [options] -m MODULE ...` with MODULE ours."""
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv or Path(argv[0]).name not in ("python", "python3", "torchrun"):
        return None
    if "-m" not in argv:
        return None
    i = argv.index("-m")
    if i + 1 < len(argv) and argv[i + 1] in MODULES:
        return ModuleCall(argv[i + 1], tuple(argv[i + 2 :]), argv[0])
    return None


@functools.cache
def help_text(module: str, path: tuple[str, ...]) -> str | None:
    """`python -m MODULE *path --help`, or None when that fails (no such subcommand)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *path, "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    return result.stdout if result.returncode == 0 else None


def choices(help_output: str) -> set[str]:
    """The subcommands a parser's help offers (`{a,b,c}`)."""
    found = re.search(r"\{([a-z0-9,_-]+)\}", help_output)
    return set(found.group(1).split(",")) if found else set()


def flags_of(args: tuple[str, ...]) -> set[str]:
    """The `--flags` of an argument list (`[--seeds 1,2]` and `--flag=value` forms too)."""
    flags = set()
    for arg in args:
        arg = arg.strip("[]")
        if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", arg):
            flags.add(arg.split("=")[0])
    return flags


MODULE_CALLS = [
    (c, call) for c in ALL_COMMANDS for argv in segments(c) if (call := module_call(argv))
]


def test_the_docs_have_commands_to_check():
    """The extraction finds what the docs hold: a change to the docs' form cannot empty it."""
    assert len(ALL_COMMANDS) > 40
    assert {(call.module, call.subcommand) for _, call in MODULE_CALLS} >= RUNNABLE
    assert any(argv[0] == "make" for c in ALL_COMMANDS for argv in segments(c))


@pytest.mark.parametrize(("command", "call"), MODULE_CALLS, ids=lambda x: getattr(x, "id", ""))
def test_a_documented_subcommand_and_its_flags_exist(command, call):
    assert Path(call.launcher).name != "torchrun" or call.launcher == ".venv/bin/torchrun", (
        f"{command.where}: name .venv/bin/torchrun (a bare torchrun is another environment's)"
    )
    top = help_text(call.module, ())
    assert top is not None, f"python -m {call.module} --help fails"
    sub = call.subcommand
    if sub is None:
        return
    if sub not in choices(top):
        pytest.fail(f"{command.where}: python -m {call.module} has no subcommand {sub!r}")
    # The help of the subcommand and of any nested subcommand named after it.
    path, texts = [sub], []
    while (text := help_text(call.module, tuple(path))) is not None:
        texts.append(text)
        rest = [a for a in call.args[len(path) :] if not a.startswith("-")]
        if not rest or rest[0] not in choices(text):
            break
        path.append(rest[0])
    known = set(re.findall(r"--[a-z][a-z0-9-]*", "\n".join(texts)))
    unknown = sorted(flags_of(call.args) - known - {"--help"})
    assert not unknown, f"{command.where}: `{' '.join(path)}` has no option {unknown}"


@functools.cache
def makefile_targets_and_variables() -> tuple[set[str], str]:
    texts = "\n".join(p.read_text() for p in (REPO / "Makefile", REPO / "deploy.mk"))
    targets = set()
    for line in texts.splitlines():
        if m := re.match(r"^([a-zA-Z0-9_.-]+(?: [a-zA-Z0-9_.-]+)*):(?!=)", line):
            targets |= set(m.group(1).split())
    return targets, texts


MAKE_CALLS = [(c, argv) for c in ALL_COMMANDS for argv in segments(c) if argv[0] == "make"]


@pytest.mark.parametrize(("command", "argv"), MAKE_CALLS, ids=lambda x: getattr(x, "id", ""))
def test_a_documented_make_target_and_its_variables_exist(command, argv):
    targets, text = makefile_targets_and_variables()
    for arg in argv[1:]:
        arg = arg.strip("[]")
        if arg.startswith("-") or not arg or arg == "...":  # options; a synopsis's "..."
            continue
        if "=" in arg:
            name = arg.split("=")[0]
            assert re.search(rf"\$\({name}\)|\b{name}\b *[?:]?=|,{name}\)", text), (
                f"{command.where}: the Makefiles read no variable {name}"
            )
        else:
            assert arg in targets, f"{command.where}: no make target {arg!r}"


def runnable(command: Command) -> list[str] | None:
    """The argument list to run for `command`, or None when it needs a GPU, a cluster, the
    network, or is no complete command (a synopsis with [options] or placeholders)."""
    argv = segments(command)[0]
    call = module_call(argv)
    if call is None or Path(call.launcher).name == "torchrun":
        return None
    if "..." in command.text or "$" in command.text or any("[" in a for a in call.args):
        return None
    if "--help" in call.args or "-h" in call.args:
        return [sys.executable, "-m", call.module, *call.args]
    if (call.module, call.subcommand) not in RUNNABLE:
        return None
    if call.subcommand == "split" and TOY_CONFIG not in call.args:
        return None
    return [sys.executable, "-m", call.module, *call.args]


def distinct_runs() -> list[tuple[Command, list[str]]]:
    """Each runnable argument list once (docs repeat `toy-data data/toy`), at its first place."""
    first: dict[tuple[str, ...], Command] = {}
    for command in ALL_COMMANDS:
        if argv := runnable(command):
            first.setdefault(tuple(argv), command)
    return [(command, list(argv)) for argv, command in first.items()]


RUNS = distinct_runs()


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    """The toy dataset `split --config pipelines/configs/toy.yaml` reads, made once."""
    root = tmp_path_factory.mktemp("toy") / "toy"
    make_toy_dataset(root)
    return root


def test_the_runnable_commands_cover_each_kind():
    kinds = {tuple(argv[2:4]) for _, argv in RUNS}
    assert {("dkd_core", "toy-data"), ("dkd_core", "split"),
            ("pipelines", "compile"), ("pipelines", "render-job")} <= kinds  # fmt: skip
    assert any("--help" in argv for _, argv in RUNS)


@pytest.mark.parametrize(("command", "argv"), RUNS, ids=lambda x: getattr(x, "id", ""))
def test_a_documented_command_runs(command, argv, tmp_path, toy_dataset):
    (tmp_path / "pipelines").symlink_to(REPO / "pipelines")
    if "split" in argv:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "toy").symlink_to(toy_dataset)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MINIO_", "S3_"))}
    env |= {"DKD_CACHE": str(tmp_path / "cache"), "KFP_HOST": "", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert result.returncode == 0, (
        f"{command.where}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    )
    # What the command is for, beyond its exit code.
    if "render-job" in argv:
        assert "kind: PyTorchJob" in result.stdout or "kind: TrainJob" in result.stdout
    if "split" in argv:
        assert (tmp_path / "results/toy/split/manifest.json").is_file()
    if "toy-data" in argv:
        assert any(tmp_path.rglob("class_names.txt"))
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
