"""The authors' released checkpoints: fetch a release zip and convert what it holds.

The README of the authors' code (github.com/cvlab-yonsei/DKD at commit fb4693f,
README.md, "Testing") links one zip per cell of its result tables, at
`https://github.com/cvlab-yonsei/DKD/releases/download/v1.0/<name>.zip`. `RELEASES`
lists every distinct zip linked there. Some cells link another cell's zip (as the
README has them): DKD VOC 15-5 links `voc_overlapped_15-1` and `voc_disjoint_15-1`,
and DKD-M ADE 100-10 and 50-50 link the DKD zips `ade_overlapped_100-10` and
`ade_overlapped_50-50`; there is no separate zip for those cells.

The authors publish no checksums of these files: a download is checked as a zip and
each checkpoint as a state dict of the expected shapes, nothing more.

A zip holds the authors' `torch.save` files (`{"state_dict": ..., "optimizer": ...}`),
each read without running pickled code (`read_state_dict`, weights only), and may hold
the `config.json` their trainer writes beside them (its `data_loader.args.task` names
the task and setting). Each checkpoint becomes one of our checkpoint folders at
`<dest>/step_<t>/checkpoint`, the layout of a run, with the task, step and classes in
its metadata, so that `evaluate` and `report` take it as they take ours.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dkd_core.errors import DKDError

RELEASE_URL = "https://github.com/cvlab-yonsei/DKD/releases/download/v1.0/{name}.zip"
_NAME = re.compile(r"(?P<dataset>voc|ade)_(?P<setting>overlapped|disjoint)_"
                   r"(?P<base>\d+)[-_](?P<inc>\d+)(?P<memory>_memory)?")  # fmt: skip
_SETTINGS = {"overlapped": "overlap", "disjoint": "disjoint"}
_EPOCH = re.compile(r"checkpoint-epoch(\d+)\.pth$")


@dataclass(frozen=True)
class Release:
    """One release zip: what its name says it holds."""

    name: str
    dataset: str  # voc | ade
    task: str  # e.g. 15-1
    setting: str  # overlap | disjoint
    method: str  # DKD | DKD-M (with exemplar memory)

    @property
    def url(self) -> str:
        return RELEASE_URL.format(name=self.name)


def parse_release_name(name: str) -> Release | None:
    """`voc_overlapped_15-1_memory` -> Release(voc, 15-1, overlap, DKD-M); None otherwise."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return Release(
        name, match["dataset"], f"{match['base']}-{match['inc']}", _SETTINGS[match["setting"]],
        "DKD-M" if match["memory"] else "DKD",
    )  # fmt: skip


# Every zip the README's tables link (see the module docstring for the cells sharing one).
RELEASE_NAMES = (
    "voc_overlapped_19-1", "voc_overlapped_15-1", "voc_overlapped_10-1", "voc_overlapped_5-3",
    "voc_overlapped_19-1_memory", "voc_overlapped_15-5_memory", "voc_overlapped_15-1_memory",
    "voc_overlapped_10-1_memory", "voc_overlapped_5_3_memory",
    "voc_disjoint_19-1", "voc_disjoint_15-1",
    "voc_disjoint_19-1_memory", "voc_disjoint_15-5_memory", "voc_disjoint_15-1_memory",
    "ade_overlapped_100-50", "ade_overlapped_100-10", "ade_overlapped_50-50",
    "ade_overlapped_100-50_memory",
)  # fmt: skip
RELEASES: dict[str, Release] = {n: r for n in RELEASE_NAMES if (r := parse_release_name(n))}


def release_of(reference: str) -> tuple[Release, str]:
    """(what the zip holds, where to fetch it) for a release NAME, or for a URL, s3:// URI
    or path of a zip named like one (a mirror, a copy in the cluster's own store)."""
    if reference in RELEASES:
        return RELEASES[reference], RELEASES[reference].url
    stem = PurePosixPath(reference.split("?")[0].rstrip("/")).name.removesuffix(".zip")
    release = parse_release_name(stem)
    if release is None or not reference.endswith(".zip"):
        raise DKDError(
            f"{reference!r}: not one of the authors' release zips; expected one of "
            f"{', '.join(RELEASE_NAMES)}, or a URL/s3:// URI/path of a zip named like one"
        )
    return release, reference


def _step_folders(names: list[str]) -> dict[str, list[str]]:
    """The zip's .pth members grouped by folder (one folder per step in the authors' runs)."""
    folders: dict[str, list[str]] = {}
    for name in names:
        if name.endswith(".pth") and not name.endswith("/"):
            folders.setdefault(str(PurePosixPath(name).parent), []).append(name)
    return folders


def _chosen(members: list[str]) -> str:
    """The checkpoint of a folder: the last epoch's `checkpoint-epochN.pth`, else the
    only file, else `model_best.pth` (sorted names: deterministic)."""
    epochs = [(int(m.group(1)), n) for n in members if (m := _EPOCH.search(n))]
    if epochs:
        return max(epochs)[1]
    best = [n for n in members if n.endswith("model_best.pth")]
    return best[0] if best else sorted(members)[-1]


def _task_in_config(archive: zipfile.ZipFile, folder: str, where: str) -> dict | None:
    """`data_loader.args.task` of the config.json beside a checkpoint (the authors'
    trainer writes one), or None when there is none."""
    name = f"{folder}/config.json" if folder != "." else "config.json"
    if name not in archive.namelist():
        return None
    try:
        task = json.loads(archive.read(name))["data_loader"]["args"]["task"]
        return {"name": str(task["name"]), "setting": str(task["setting"])}
    except (ValueError, KeyError, TypeError) as e:
        raise DKDError(f"{where}: {name} has no data_loader.args.task name/setting ({e})") from e


def convert_release(zip_path: Path, release: Release, source: str, dest: str) -> list[dict]:
    """Convert every checkpoint in the release zip at `zip_path` to `<dest>/step_<t>/checkpoint`;
    one `{"step", "checkpoint", "member"}` per checkpoint, by step."""
    from dkd_core.checkpoint import save_model_checkpoint
    from dkd_core.compat import load_reference_checkpoint, reference_meta
    from dkd_core.storage import is_remote, join, upload_checkpoint
    from dkd_core.tasks import get_task

    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DKDError(f"{source}: not a readable zip file ({e})") from None
    converted: dict[int, dict] = {}
    with archive, tempfile.TemporaryDirectory(prefix="dkd-release-") as tmp:
        folders = _step_folders(archive.namelist())
        if not folders:
            raise DKDError(f"{source}: the zip holds no .pth checkpoint")
        for folder, members in sorted(folders.items()):
            member = _chosen(members)
            where = f"{source}:{member}"
            local = Path(tmp) / "checkpoint.pth"  # one member at a time: never a path from the zip
            with archive.open(member) as src, open(local, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            named = _task_in_config(archive, folder, source) or {
                "name": release.task, "setting": release.setting,
            }  # fmt: skip
            task = get_task(release.dataset, named["name"], named["setting"])
            model = load_reference_checkpoint(local)
            source_meta = {"kind": "authors-release", "release": release.name,
                           "method": release.method, "url": source, "member": member}  # fmt: skip
            meta = reference_meta(model, task, named["setting"], source_meta, where)
            step = meta["step"]
            if step in converted:
                raise DKDError(
                    f"{source}: {converted[step]['member']} and {member} are both step {step}"
                )
            target = join(dest, f"step_{step}", "checkpoint")
            if is_remote(dest):
                folder_out = save_model_checkpoint(Path(tmp) / f"step_{step}", model, meta)
                upload_checkpoint(folder_out, target)
            else:
                save_model_checkpoint(target, model, meta)
            local.unlink()
            converted[step] = {"step": step, "checkpoint": target, "member": member}
    return [converted[t] for t in sorted(converted)]


def fetch_release(reference: str, dest: str | None, progress: bool = True) -> dict[str, Any]:
    """`fetch checkpoints`: download a release zip (cached) and convert it under `dest`
    (default `results/authors/<name>`)."""
    from dkd_core.weights import local_file

    release, source = release_of(reference)
    dest = dest or f"results/authors/{release.name}"
    zip_path = local_file(source, progress=progress, what="release zip")
    steps = convert_release(zip_path, release, source, dest)
    return {
        "release": release.name, "method": release.method,
        "task": f"{release.dataset}:{release.task} ({release.setting})",
        "output": dest, "checkpoints": [s["checkpoint"] for s in steps],
    }  # fmt: skip
