"""One interface over where artifacts live: local paths and S3 (MinIO) URIs.

In the cluster every training step runs in its own pods, so checkpoints, split
manifests, datasets and reports live in an S3 server (MinIO); on a laptop they
live in folders. Code that reads or writes an artifact takes a URI and calls
`open_store(uri)`:

- `s3://bucket/key/prefix` goes through the `minio` SDK (`s3`), configured from
  the environment only (`s3_config`).
- a path, or `file:///path`, is a local file (`local`). Local writes are atomic
  (temporary file, fsync, rename).

On top of the stores, `checkpoints` moves checkpoint folders (meta.json
published last, every fetched payload verified) and `datasets` mirrors a
dataset prefix into a local cache. The modules, each one concern:

    uris         URI helpers (is_remote, join, local_path, split_s3_uri)
    s3_config    S3Config.from_env: endpoint, TLS, credentials, retry budget
    store        the Store interface, ObjectInfo, atomic local output
    local        LocalStore
    s3           S3Store, with retries and errors that say what to fix
    stores       open_store: the store of a URI
    checkpoints  upload / fetch / complete / latest checkpoint folders
    datasets     sync_dataset
    transfers    parallel_transfers: many uploads or downloads at once, one bar
"""

from dkd_core.checkpoint_format import sha256_file
from dkd_core.storage.checkpoints import (
    checkpoint_complete,
    fetch_checkpoint,
    latest_checkpoint,
    upload_checkpoint,
    verify_checkpoint,
)
from dkd_core.storage.datasets import SYNC_INDEX, SYNC_WORKERS, sync_dataset
from dkd_core.storage.local import LocalStore
from dkd_core.storage.s3 import S3Store
from dkd_core.storage.s3_config import DEFAULT_RETRY_SECONDS, S3Config
from dkd_core.storage.store import ObjectInfo, ObjectNotFoundError, Store
from dkd_core.storage.stores import open_store
from dkd_core.storage.uris import (
    FILE_SCHEME,
    S3_SCHEME,
    S3_SCHEMES,
    is_remote,
    join,
    local_path,
    split_s3_uri,
)

__all__ = [
    "DEFAULT_RETRY_SECONDS",
    "FILE_SCHEME",
    "S3_SCHEME",
    "S3_SCHEMES",
    "SYNC_INDEX",
    "SYNC_WORKERS",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "S3Config",
    "S3Store",
    "Store",
    "checkpoint_complete",
    "fetch_checkpoint",
    "is_remote",
    "join",
    "latest_checkpoint",
    "local_path",
    "open_store",
    "sha256_file",
    "split_s3_uri",
    "sync_dataset",
    "upload_checkpoint",
    "verify_checkpoint",
]
