"""Which store serves a URI: `open_store`."""

from __future__ import annotations

import threading

from dkd_core.storage.local import LocalStore
from dkd_core.storage.s3 import S3Store
from dkd_core.storage.s3_config import S3Config
from dkd_core.storage.store import Store
from dkd_core.storage.uris import is_remote, local_path, split_s3_uri

_LOCAL = LocalStore()
_S3_STORES: dict[S3Config, S3Store] = {}
_S3_LOCK = threading.Lock()


def open_store(uri: str) -> Store:
    """The store for `uri`: `S3Store` for `s3://`, `LocalStore` for paths and `file://`.

    The S3 configuration is read from the environment on every call; one client
    (with its connection pool) is kept per distinct configuration.
    """
    if not is_remote(uri):
        local_path(uri)  # rejects unsupported schemes
        return _LOCAL
    split_s3_uri(uri)
    config = S3Config.from_env()
    with _S3_LOCK:
        store = _S3_STORES.get(config)
        if store is None:
            store = _S3_STORES[config] = S3Store(config)
        return store
