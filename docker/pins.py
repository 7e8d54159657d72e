"""Dependency pins for the image builds, read from pyproject.toml (the single source).

Used by docker/Dockerfile and docker/Dockerfile.cpu before the source is copied, so the
dependency layer is rebuilt only when pyproject.toml changes:

    python pins.py requirements --extra pipelines --exclude torch > requirements.txt
    python pins.py pin torch          # 2.13.0: the version pyproject.toml pins
    python pins.py constraints        # torch==<installed version>: pip may not replace it
    python pins.py check-torch        # the installed torch is the pinned one, else exit 1

Standard library only (tomllib, Python >= 3.11): it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    """PEP 503 name: lowercase, runs of -_. become '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if not match:
        raise SystemExit(f"pins.py: cannot read a package name in {requirement!r}")
    return normalise(match.group(1))


def load(pyproject: Path) -> dict:
    with pyproject.open("rb") as f:
        return tomllib.load(f)["project"]


def requirements(project: dict, extras: list[str], exclude: list[str]) -> list[str]:
    """`project.dependencies` plus the extras' lists, without `exclude`, duplicates removed."""
    lines: list[str] = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pins.py: pyproject.toml has no extra {extra!r}")
        lines += optional[extra]
    skip = {normalise(n) for n in exclude}
    out: list[str] = []
    for line in lines:
        if requirement_name(line) not in skip and line not in out:
            out.append(line)
    return out


def pinned_version(project: dict, package: str) -> str:
    """The `==` version pyproject.toml pins `package` to."""
    for line in project.get("dependencies", []):
        if requirement_name(line) == normalise(package):
            match = re.search(r"==\s*([A-Za-z0-9.+!-]+)\s*$", line)
            if not match:
                raise SystemExit(f"pins.py: {package} is not pinned with == in {line!r}")
            return match.group(1)
    raise SystemExit(f"pins.py: {package} is not a dependency in pyproject.toml")


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_torch(project: dict) -> str | None:
    """None when the installed torch is the pinned one, else what is wrong."""
    wanted = pinned_version(project, "torch")
    found = installed_version("torch")
    if found is None:
        return f"torch is not installed; pyproject.toml pins torch=={wanted}"
    if found.split("+", 1)[0] != wanted:  # 2.13.0+cu126 is torch 2.13.0
        return (
            f"the image has torch {found} but pyproject.toml pins torch=={wanted}: "
            "use a base image (or CPU wheel) of the pinned version"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("requirements", help="print the pinned requirements, one a line")
    req.add_argument("--extra", action="append", default=[])
    req.add_argument("--exclude", action="append", default=[])
    pin = sub.add_parser("pin", help="print the version pyproject.toml pins a package to")
    pin.add_argument("package")
    sub.add_parser("constraints", help="print torch==<installed version> (a pip constraint)")
    sub.add_parser("check-torch", help="fail unless the installed torch is the pinned one")
    args = parser.parse_args(argv)
    project = load(args.pyproject)
    if args.command == "requirements":
        print("\n".join(requirements(project, args.extra, args.exclude)))
    elif args.command == "pin":
        print(pinned_version(project, args.package))
    elif args.command == "constraints":
        problem = check_torch(project)
        if problem:
            print(f"pins.py: {problem}", file=sys.stderr)
            return 1
        print(f"torch=={installed_version('torch')}")
    else:
        problem = check_torch(project)
        if problem:
            print(f"pins.py: {problem}", file=sys.stderr)
            return 1
        print(f"torch {installed_version('torch')} matches pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
