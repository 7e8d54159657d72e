"""docker/: both Dockerfiles parse and follow the image rules.

Pinned base images whose torch is pyproject.toml's pin, dependencies in a layer before the
source, the package installed with --no-deps, a numeric non-root USER after the last install,
no credentials in ENV/ARG, and a build context limited by <Dockerfile>.dockerignore.
No Docker engine is needed: a small parser reads the instructions.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = {"cuda": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
INSTRUCTIONS = frozenset(
    {
        "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
        "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
        "HEALTHCHECK", "SHELL",
    }
)  # fmt: skip
SECRET_NAME = re.compile(r"(?i)(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)")

sys.path.insert(0, str(DOCKER))
import pins  # noqa: E402  (docker/pins.py: standard library only)


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str
    args: str  # continuation lines joined with a space


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile: comments dropped, `\\` continuations joined.

    Comment lines inside a continuation are dropped too (as Docker does). Heredocs and a
    custom escape directive are not supported (and not used here): they raise ValueError.
    """
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if re.match(r"#\s*escape\s*=", line, re.I):
            raise ValueError(f"line {number}: escape directives are not supported")
        if not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        continues = line.endswith("\\")
        pending.append(line[:-1].strip() if continues else line)
        if continues:
            continue
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = joined.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        heredoc = re.search(r"<<-?\s*['\"]?[A-Za-z]+['\"]?\s*$", args)
        if heredoc and keyword.upper() in ("RUN", "COPY", "ADD"):
            raise ValueError(f"line {start}: heredocs are not supported")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    if pending:
        raise ValueError("the file ends inside a continuation")
    return out


def instructions(flavour: str) -> list[Instruction]:
    return parse(DOCKERFILES[flavour].read_text())


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def torch_pin() -> str:
    return pins.pinned_version(pyproject(), "torch")


def arg_defaults(items: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in items:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            out[name.strip()] = default.strip().strip('"')
    return out


def resolve(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables[m.group(1) or m.group(2)], text)


def base_image(flavour: str) -> str:
    items = instructions(flavour)
    (frm,) = [i for i in items if i.keyword == "FROM"]  # single stage
    before = [i for i in items if i.line < frm.line]
    image = resolve(frm.args.split()[0], arg_defaults(before))
    return image


def env_pairs(items: list[Instruction]) -> dict[str, str]:
    out = {}
    for ins in items:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.args):
                name, sep, value = token.partition("=")
                assert sep, f"line {ins.line}: use ENV NAME=value"
                out[name] = value
    return out


def test_parser_handles_continuations_and_comments() -> None:
    text = "# syntax=docker/dockerfile:1\nFROM a:1\nRUN x \\\n  # comment\n  && y\nUSER 1\n"
    assert parse(text) == [
        Instruction(2, "FROM", "a:1"),
        Instruction(3, "RUN", "x && y"),
        Instruction(6, "USER", "1"),
    ]
    with pytest.raises(ValueError, match="unknown instruction"):
        parse("FROM a:1\nRUNN x\n")
    with pytest.raises(ValueError, match="continuation"):
        parse("FROM a:1\nRUN x \\\n")


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dockerfile_parses(flavour: str) -> None:
    items = instructions(flavour)
    assert items[0].keyword in ("ARG", "FROM")
    assert next(i.keyword for i in items if i.keyword != "ARG") == "FROM"
    assert not [i for i in items if i.keyword in ("HEALTHCHECK", "ADD", "MAINTAINER")]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_base_image_is_pinned(flavour: str) -> None:
    image = base_image(flavour)
    name, _, tag = image.split("@")[0].rpartition(":")
    assert name and tag and tag != "latest" and "/" not in tag, image
    assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version, not a moving tag"


def test_cuda_base_image_is_the_official_pytorch_image_of_the_pin() -> None:
    image = base_image("cuda")
    match = re.fullmatch(
        r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", image
    )
    assert match, image
    assert match.group(1) == torch_pin()


def test_cpu_image_installs_the_pinned_cpu_torch() -> None:
    items = instructions("cpu")
    defaults = arg_defaults(items)
    assert defaults["TORCH_VERSION"] == torch_pin()
    python = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-\w+)?", base_image("cpu"))
    assert python, base_image("cpu")
    # within pyproject's requires-python (>=3.11,<3.13)
    assert (3, 11) <= (int(python.group(1)), int(python.group(2))) < (3, 13)
    torch_runs = [i for i in items if i.keyword == "RUN" and "torch==" in i.args]
    assert len(torch_runs) == 1
    run = torch_runs[0].args
    assert "--index-url https://download.pytorch.org/whl/cpu" in run
    assert '"torch==${TORCH_VERSION}"' in run


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dependencies_are_installed_before_the_source_is_copied(flavour: str) -> None:
    items = instructions(flavour)
    runs = [i for i in items if i.keyword == "RUN"]
    copies = [i for i in items if i.keyword == "COPY"]
    (deps,) = [r for r in runs if "pip install -r" in r.args]
    (package,) = [r for r in runs if "pip install --no-deps ." in r.args]
    source = [c for c in copies if c.args.split()[0] in (".", "dkd_core", "dkd_core/")]
    assert source, "the source is copied with COPY . ."
    assert deps.line < source[0].line < package.line
    # Before the dependencies only the files they are computed from.
    early = [c for c in copies if c.line < deps.line]
    assert early and all(c.args.split()[:-1] == ["pyproject.toml", "docker/pins.py"] for c in early)
    # The dependency list is pyproject's pins (pipelines extra included), torch excluded and
    # held to the installed build by a constraint.
    assert "pins.py requirements --extra pipelines --exclude torch" in deps.args
    assert "pins.py constraints" in deps.args and "-c /tmp/constraints.txt" in deps.args
    assert deps.args.count("pins.py check-torch") == 2  # before and after the install
    assert "pins.py check-torch" in package.args
    # Nothing else installs Python packages (or another torch).
    installs = [r for r in runs if "pip install" in r.args]
    expected = 3 if flavour == "cpu" else 2
    assert len(installs) == expected


def test_both_images_share_their_dependency_and_package_layers() -> None:
    def layers(flavour: str) -> list[str]:
        items = instructions(flavour)
        start = next(i for i, ins in enumerate(items) if ins.args.startswith("pyproject.toml"))
        return [f"{i.keyword} {i.args}" for i in items[start:]]

    cuda, cpu = layers("cuda"), layers("cpu")
    assert cuda[:2] == cpu[:2]  # COPY pyproject.toml docker/pins.py, RUN the dependencies
    assert cuda[-2:] == cpu[-2:]  # USER, CMD


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_runs_as_a_numeric_non_root_user_after_the_last_install(flavour: str) -> None:
    items = instructions(flavour)
    users = [i for i in items if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    last_user = users[-1]
    uid, _, gid = last_user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0, last_user.args
    assert not gid or (gid.isdigit() and int(gid) != 0)
    installs = [
        i for i in items if i.keyword == "RUN" and re.search(r"pip install|useradd", i.args)
    ]
    assert installs[-1].line < last_user.line
    assert not [i for i in items if i.keyword == "RUN" and i.line > last_user.line]
    assert f"--uid {uid}" in " ".join(i.args for i in installs)  # the user exists


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_environment(flavour: str) -> None:
    items = instructions(flavour)
    env = env_pairs(items)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["DKD_CACHE"] == "/tmp/dkd-cache"
    assert env["PYTHONPATH"] == "/app"
    (workdir,) = [i.args for i in items if i.keyword == "WORKDIR"]
    assert workdir == "/app"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_no_credentials_in_env_or_args(flavour: str) -> None:
    items = instructions(flavour)
    for name, value in {**env_pairs(items), **arg_defaults(items)}.items():
        if SECRET_NAME.search(name):
            assert not value, f"{name} holds a value"
    text = DOCKERFILES[flavour].read_text()
    assert not re.search(r"(?i)(AWS_|MINIO_)(ACCESS|SECRET)", text)


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_build_context_is_an_allow_list(flavour: str) -> None:
    ignore = DOCKERFILES[flavour].with_name(DOCKERFILES[flavour].name + ".dockerignore")
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {"pyproject.toml", "docker/pins.py", "README.md", "dkd_core"}
    assert copied <= allowed
    assert {"components", "pipelines"} <= allowed  # pipeline components run in this image
    assert "**/.env" in patterns and "**/__pycache__" in patterns


# -- docker/pins.py ----------------------------------------------------------------------


def test_pins_requirements_are_pyprojects_pins_without_torch() -> None:
    project = pyproject()
    lines = pins.requirements(project, ["pipelines"], ["torch"])
    expected = [d for d in project["dependencies"] if not d.startswith("torch")]
    expected += project["optional-dependencies"]["pipelines"]
    assert lines == expected
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.]*", line) for line in lines)
    with pytest.raises(SystemExit, match="no extra"):
        pins.requirements(project, ["gpu"], [])


def test_pins_checks_the_installed_torch() -> None:
    project = pyproject()
    assert torch_pin() == "2.13.0"
    assert pins.check_torch(project) is None  # the venv's torch is the pinned version
    other = {**project, "dependencies": ["torch==1.0.0"]}
    assert "pins torch==1.0.0" in pins.check_torch(other)


def test_pins_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(DOCKER / "pins.py"), "pin", "torch"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == torch_pin()
    constraint = subprocess.run(
        [sys.executable, str(DOCKER / "pins.py"), "constraints"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert constraint.startswith(f"torch=={torch_pin()}")


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_git_revision_is_a_build_argument_after_the_installs(flavour: str) -> None:
    items = instructions(flavour)
    assert arg_defaults(items)["GIT_REVISION"] == ""  # empty unless the build passes it
    assert env_pairs(items)["DKD_GIT_REVISION"] == "${GIT_REVISION}"
    (arg,) = [i for i in items if i.keyword == "ARG" and i.args.startswith("GIT_REVISION")]
    installs = [i for i in items if i.keyword == "RUN" and "pip install" in i.args]
    assert arg.line > installs[-1].line  # a new revision rebuilds no layer that installs
    assert "--build-arg GIT_REVISION=$(GIT_REVISION)" in (REPO / "deploy.mk").read_text()


def test_cuda_image_installs_into_the_bases_externally_managed_python() -> None:
    """The base's Python is Ubuntu's system python3 with a PEP 668 marker (pytorch/pytorch's
    Dockerfile since #169873/#170338: `official` stage, apt's python3, torch under
    /usr/local/lib/python3.12); pip must be allowed to install there, into the same Python as
    the base's torch: no venv, no reinstall of torch."""
    items = instructions("cuda")
    env = env_pairs(items)
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    first_install = next(i for i in items if i.keyword == "RUN" and "pip install" in i.args)
    env_line = next(
        i for i in items if i.keyword == "ENV" and "PIP_BREAK_SYSTEM_PACKAGES" in i.args
    )
    assert env_line.line < first_install.line
    runs = " ".join(i.args for i in items if i.keyword == "RUN")
    for hidden in ("venv", "virtualenv", "--ignore-installed", "--force-reinstall", "conda "):
        assert hidden not in runs, hidden
    assert "python -m pip" in runs and "pip3 " not in runs  # the `python` that has torch
    # the slim CPU image's Python (python.org's build) has no marker: nothing to allow
    assert "PIP_BREAK_SYSTEM_PACKAGES" not in env_pairs(instructions("cpu"))
