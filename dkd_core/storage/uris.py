"""URIs of artifacts: `s3://bucket/key` (or KFP's `minio://`), `file:///path` or a plain path."""

from __future__ import annotations

import re
from pathlib import Path

from dkd_core.errors import DKDError

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

# Kubeflow Pipelines names its artifacts minio://bucket/key (also behind SeaweedFS since KFP
# 2.15); it is the same S3 API at the configured endpoint.
S3_SCHEMES = (S3_SCHEME, "minio://")


def is_remote(uri: str) -> bool:
    """Whether `uri` names an S3 object or prefix (`s3://...`, or KFP's `minio://...`)."""
    return str(uri).lower().startswith(S3_SCHEMES)


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI or path with exactly one `/` between them.

    Works the same for `s3://bucket/prefix`, `file:///dir` and plain paths; the
    scheme of `uri` is kept. Empty parts are skipped and an absolute part does
    not discard what precedes it (unlike `os.path.join`).
    """
    uri = str(uri)
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if not pieces:
        return uri
    if uri.endswith("/"):
        return uri + "/".join(pieces)
    return uri + "/" + "/".join(pieces) if uri else "/".join(pieces)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    if not is_remote(uri):
        raise DKDError(f"{uri!r} is not an S3 URI: expected s3://bucket/key")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise DKDError(f"{uri!r} names no bucket: expected s3://bucket/key")
    return bucket, key


def local_path(uri: str | Path) -> Path:
    """The local path of a plain path or a `file://` URI (`file:///abs`, `file://localhost/abs`).

    The path is taken literally (no percent-decoding).
    """
    text = str(uri)
    if text.lower().startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME) :]
        if text.startswith("localhost/"):
            text = text[len("localhost") :]
        return Path(text)
    if is_remote(text):
        raise DKDError(f"{text!r} is an S3 URI, not a local path")
    scheme = _SCHEME.match(text)
    if scheme:
        raise DKDError(
            f"{text!r}: unsupported URI scheme {scheme.group(0)!r}; "
            "use s3://bucket/key, file:///path or a plain path"
        )
    return Path(text)


def folder_key(key: str) -> str:
    """An S3 key used as a folder: "" stays "", otherwise exactly one trailing slash."""
    key = key.strip("/")
    return key + "/" if key else ""
