"""Weight files by URI: where `model.pretrained` (and any other weight option) comes from.

A weight reference is one of

- a local path (or `file:///path`), read in place;
- `s3://bucket/key` or `minio://bucket/key`, through `dkd_core.storage` (the same
  credentials, retries and checks as checkpoints);
- an `http://` or `https://` URL (`dkd_core.download`: resumable, atomic);
- `torchvision:resnet18`, `torchvision:resnet50` or `torchvision:resnet101`: the
  ImageNet files torchvision itself downloads for those models.

Remote files are fetched once into `$DKD_CACHE/weights`. A file named the torch.hub way,
`<name>-<first hex digits of its sha256>.<ext>`, is checked against that prefix (as
torch.hub's `check_hash` does) before anything reads it; a mismatch is one line and the
cached copy is removed, so nothing is used. The tensors are read later, without running
pickled code (`dkd_core.model.read_state_dict`).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from pathlib import Path

from dkd_core.download import download, hub_hash_prefix, sha256_file
from dkd_core.errors import DKDError
from dkd_core.locations import cache_dir
from dkd_core.storage import is_remote, local_path, open_store

TORCHVISION_SCHEME = "torchvision:"
HTTP_SCHEMES = ("http://", "https://")

# The ImageNet weights torchvision loads for `resnetNN(weights="IMAGENET1K_V1")`:
# torchvision 0.29.1 (PyPI wheel), torchvision/models/resnet.py, `ResNet18_Weights`,
# `ResNet50_Weights` and `ResNet101_Weights`.IMAGENET1K_V1 `url=`. The resnet101 file is
# also the one the authors' code loads for its `bn_sync` backbone (cvlab-yonsei/DKD at
# fb4693f, models/modules/backbone.py, `model._load_pretrained_model(...)`).
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}

# (path, size, mtime_ns) -> sha256 of files already hashed by this process
_HASHED: dict[tuple[str, int, int], str] = {}


def is_local_reference(reference: str) -> bool:
    """Whether `reference` names a file on this machine (a path or `file://`), which a
    pod in a cluster cannot read."""
    text = str(reference).strip()
    return not (
        is_remote(text)
        or text.lower().startswith(HTTP_SCHEMES)
        or text.startswith(TORCHVISION_SCHEME)
    )


def torchvision_url(reference: str) -> str:
    """The URL of `torchvision:NAME`; a one-line error for an unknown NAME."""
    name = reference[len(TORCHVISION_SCHEME) :]
    if name not in TORCHVISION_URLS:
        known = ", ".join(TORCHVISION_SCHEME + n for n in TORCHVISION_URLS)
        raise DKDError(f"{reference!r}: unknown torchvision weights; expected one of {known}")
    return TORCHVISION_URLS[name]


def resolve_weights(reference: str | Path, *, progress: bool = True) -> Path:
    """The local file of a weight reference (`torchvision:NAME` included), downloaded into
    the cache once when remote and checked against a torch.hub hash prefix in its name."""
    text = str(reference).strip()
    if text.startswith(TORCHVISION_SCHEME):
        text = torchvision_url(text)
    return local_file(text, progress=progress, hub_check=True)


def local_file(
    reference: str, *, progress: bool = True, hub_check: bool = False, what: str = "weight file"
) -> Path:
    """The local file of a path, `file://`, s3:// / minio:// or http(s):// reference; a
    remote one is fetched into `$DKD_CACHE/weights` once. `hub_check`: refuse a file
    whose torch.hub name prefix does not match (a fetched copy is then removed)."""
    text = str(reference).strip()
    if text.lower().startswith(HTTP_SCHEMES):
        name = Path(urllib.parse.urlsplit(text).path).name or "download"
        path = download(text, _cache_folder(text) / name, progress=progress)
        cached = True
    elif is_remote(text):
        path, cached = _fetch_object(text, progress, what), True
    else:
        path, cached = local_path(text), False
        if not path.is_file():
            raise DKDError(f"{what} {path} does not exist")
    if hub_check:
        check_hub_prefix(text, path, remove=cached)
    return path


def check_hub_prefix(reference: str, path: Path, *, remove: bool = False) -> None:
    """Refuse `path` when the name of `reference` carries a torch.hub sha256 prefix that
    the file does not start with; `remove` deletes the (cached) file then."""
    name = Path(urllib.parse.urlsplit(reference).path if "://" in reference else reference).name
    prefix = hub_hash_prefix(name)
    if prefix is None:
        return
    digest = _sha256(path)
    if not digest.startswith(prefix):
        if remove:
            path.unlink(missing_ok=True)
        raise DKDError(
            f"{reference}: sha256 starts with {digest[: len(prefix)]}, but the file name says "
            f"{prefix} (torch.hub's <name>-<sha256 prefix>.<ext> rule): a damaged or different "
            "file; it was not used"
        )


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(path)
    return _HASHED[key]


def _cache_folder(uri: str) -> Path:
    """One folder per URI, so two files of the same name from two places never mix."""
    return cache_dir("weights", hashlib.sha256(uri.encode()).hexdigest()[:16])


def _fetch_object(uri: str, progress: bool, what: str) -> Path:
    """The S3 object at `uri` in the cache: fetched again only when its size or ETag
    changed since the cached copy was made."""
    store = open_store(uri)
    info = store.stat(uri)
    if info is None:
        raise DKDError(f"{what} {uri} does not exist")
    folder = _cache_folder(uri)
    path = folder / (Path(uri.rstrip("/")).name or "weights")
    record = folder / "source.json"
    source = {"uri": uri, "size": info.size, "etag": info.etag}
    if path.is_file() and record.is_file() and path.stat().st_size == info.size:
        try:
            if json.loads(record.read_text()) == source:
                return path
        except (OSError, ValueError):
            pass
    record.unlink(missing_ok=True)
    store.download_file(uri, path, progress=progress)
    fetched = path.stat().st_size
    if fetched != info.size:
        path.unlink(missing_ok=True)
        raise DKDError(f"{uri}: fetched {fetched} bytes, the store lists {info.size}")
    record.write_text(json.dumps(source, sort_keys=True) + "\n")
    return path
