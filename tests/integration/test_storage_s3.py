"""The artifact store against an S3 server through the minio SDK (moto, or a real MinIO).

See tests/s3_server.py for the server and how to point these tests at a real one.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from dkd_core.checkpoint import (
    META_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    load_model_checkpoint,
    save_model_checkpoint,
)
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3
from dkd_core.storage import (
    ObjectNotFoundError,
    S3Store,
    checkpoint_complete,
    fetch_checkpoint,
    join,
    latest_checkpoint,
    open_store,
    sync_dataset,
    upload_checkpoint,
)
from dkd_core.storage import s3 as s3_module
from tests.s3_server import S3Endpoint, s3

pytestmark = pytest.mark.integration
FIXTURES = (s3,)  # imported so that pytest finds the fixture in this module


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    torch.manual_seed(0)
    return DeepLabV3((2,), backbone="tiny", output_stride=8, aspp_channels=8).eval()


def make_checkpoint(directory: Path, model: DeepLabV3, iteration: int) -> Path:
    tensors = {"momentum": torch.full((3,), float(iteration))}
    meta = {"step": 0, "training": {"iteration": iteration}}
    return save_model_checkpoint(directory, model, meta, training_tensors=tensors)


def s3_store(uri: str) -> S3Store:
    store = open_store(uri)
    assert isinstance(store, S3Store)
    return store


def count_downloads(store: S3Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the key of every GET the store's client makes from now on."""
    calls: list[str] = []
    original = store.client.get_object

    def counting_get_object(bucket, key, *args, **kwargs):
        calls.append(key)
        return original(bucket, key, *args, **kwargs)

    monkeypatch.setattr(store.client, "get_object", counting_get_object)
    return calls


def test_store_basics(s3: S3Endpoint):
    store = s3_store(s3.uri())
    root = s3.uri("reports")
    store.write_bytes(join(root, "a.bin"), b"\x00\x01")
    store.write_json(join(root, "sub", "m.json"), {"z": 1, "a": 2})
    store.write_text(join(root, "sub", "deep", "t.txt"), "hello")
    store.write_bytes(s3.uri("reports2/x"), b"not under reports/")

    assert store.read_bytes(join(root, "a.bin")) == b"\x00\x01"
    assert store.read_text(join(root, "sub", "m.json")) == '{\n  "a": 2,\n  "z": 1\n}\n'
    assert store.exists(join(root, "a.bin")) and not store.exists(join(root, "nope"))
    assert store.stat(join(root, "a.bin")).size == 2
    assert store.list(root) == [
        s3.uri("reports/a.bin"),
        s3.uri("reports/sub/deep/t.txt"),
        s3.uri("reports/sub/m.json"),
    ]
    assert store.list(root + "/", recursive=False) == [
        s3.uri("reports/a.bin"),
        s3.uri("reports/sub/"),
    ]
    with pytest.raises(ObjectNotFoundError, match=f"{s3.uri('reports/nope')} does not exist"):
        store.read_bytes(join(root, "nope"))

    local = Path(__file__)
    store.upload_file(local, join(root, "file.py"))
    assert store.read_bytes(join(root, "file.py")) == local.read_bytes()

    store.delete(join(root, "a.bin"))
    store.delete(join(root, "a.bin"))
    store.delete_prefix(join(root, "sub"))
    assert store.list(root) == [s3.uri("reports/file.py")]
    assert store.list(s3.uri("reports2")) == [s3.uri("reports2/x")]


def test_checkpoint_round_trip_downloads_once(s3: S3Endpoint, tmp_path, model, monkeypatch):
    local = make_checkpoint(tmp_path / "ckpt", model, iteration=7)
    uri = s3.uri("runs/r1/step0/final")
    upload_checkpoint(local, uri)
    assert checkpoint_complete(uri)

    store = s3_store(uri)
    downloads = count_downloads(store, monkeypatch)
    cache = tmp_path / "cache"
    fetched = fetch_checkpoint(uri, cache)
    assert sorted(downloads) == sorted(
        f"runs/r1/step0/final/{name}" for name in (META_FILE, WEIGHTS_FILE, TRAINING_FILE)
    )
    assert fetched.parent == cache / "checkpoints"
    loaded, meta = load_model_checkpoint(fetched)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert (cache / meta["weights"]["sha256"] / WEIGHTS_FILE).is_file()

    downloads.clear()
    assert fetch_checkpoint(uri, cache) == fetched
    assert downloads == [f"runs/r1/step0/final/{META_FILE}"], "payloads come from the cache"

    # The same weights published elsewhere (e.g. as the next step's teacher): no payload
    # is downloaded again, only the new meta.json.
    other = s3.uri("runs/r1/teacher")
    upload_checkpoint(local, other)
    downloads.clear()
    assert fetch_checkpoint(other, cache).is_dir()
    assert downloads == [f"runs/r1/teacher/{META_FILE}"]
    assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".unverified"))]


def test_a_corrupted_object_is_detected(s3: S3Endpoint, tmp_path, model):
    local = make_checkpoint(tmp_path / "ckpt", model, iteration=1)
    uri = s3.uri("runs/corrupt")
    upload_checkpoint(local, uri)
    data = bytearray((local / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    s3.client().put_object(
        s3.bucket, f"runs/corrupt/{WEIGHTS_FILE}", io.BytesIO(bytes(data)), len(data)
    )
    assert checkpoint_complete(uri), "same size: looks complete"
    with pytest.raises(DKDError, match=f"{WEIGHTS_FILE}: checksum mismatch") as info:
        fetch_checkpoint(uri, tmp_path / "cache")
    assert uri in str(info.value)
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert WEIGHTS_FILE not in cached, "a corrupt download never enters the cache"
    assert not (tmp_path / "cache" / "checkpoints").exists()
    assert not [name for name in cached if name.endswith((".tmp", ".unverified"))]


def test_latest_checkpoint_by_iteration_and_never_without_payloads(s3: S3Endpoint, tmp_path, model):
    prefix = s3.uri("runs/r2/step1/checkpoints")
    assert latest_checkpoint(prefix) is None
    for iteration in (9, 10):
        local = make_checkpoint(tmp_path / f"iter_{iteration}", model, iteration)
        upload_checkpoint(local, join(prefix, f"iter_{iteration}"))
    # A newer meta.json whose payloads never arrived (a writer killed mid-upload, or
    # someone copying meta.json alone): never picked.
    newer = make_checkpoint(tmp_path / "iter_11", model, 11)
    store = s3_store(prefix)
    store.upload_file(newer / META_FILE, join(prefix, "iter_11", META_FILE))
    assert not checkpoint_complete(join(prefix, "iter_11"))
    # One with a payload cut short: never picked either.
    newest = make_checkpoint(tmp_path / "iter_12", model, 12)
    upload_checkpoint(newest, join(prefix, "iter_12"))
    store.write_bytes(join(prefix, "iter_12", WEIGHTS_FILE), b"short")
    assert not checkpoint_complete(join(prefix, "iter_12"))

    assert sorted(store.list(prefix, recursive=False))[-1].endswith("iter_9/"), "name order"
    assert latest_checkpoint(prefix) == join(prefix, "iter_10")
    assert latest_checkpoint(prefix + "/") == join(prefix, "iter_10")


def test_a_write_is_retried_across_a_server_outage(s3: S3Endpoint, monkeypatch, caplog):
    if not s3.can_restart:
        pytest.skip("DKD_TEST_S3_ENDPOINT names a real server, which the tests cannot stop")
    monkeypatch.setenv("S3_RETRY_SECONDS", "20")
    store = s3_store(s3.uri())
    store.write_bytes(s3.uri("before"), b"written before the outage")

    s3.stop()
    outcome: dict[str, object] = {}

    def write() -> None:
        try:
            store.write_bytes(s3.uri("during"), b"written during the outage")
            outcome["done"] = time.monotonic()
        except BaseException as e:
            outcome["error"] = e

    caplog.set_level(logging.WARNING, logger="dkd_core.storage")
    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 15  # a failure guard: the first retry comes within a second
    while not [r for r in caplog.records if "retrying" in r.getMessage()]:
        assert writer.is_alive() and time.monotonic() < deadline, outcome or "no retry logged"
        time.sleep(0.05)
    assert writer.is_alive(), "the write must wait for the server"
    s3.start()
    writer.join(timeout=20)
    assert not writer.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert store.read_bytes(s3.uri("during")) == b"written during the outage"
    assert store.read_bytes(s3.uri("before")) == b"written before the outage"
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and "Connection refused" in retries[0].getMessage()


def test_an_outage_longer_than_the_budget_fails_naming_endpoint_bucket_and_key(
    s3: S3Endpoint, monkeypatch
):
    if not s3.can_restart:
        pytest.skip("DKD_TEST_S3_ENDPOINT names a real server, which the tests cannot stop")
    monkeypatch.setenv("S3_RETRY_SECONDS", "1")
    store = s3_store(s3.uri())
    store.write_bytes(s3.uri("warm"), b"x")
    s3.stop()
    slept = []  # the backoff waits, on a clock they advance: the budget, not the machine's speed
    monkeypatch.setattr(s3_module, "_sleep", slept.append)
    monkeypatch.setattr(s3_module, "_monotonic", lambda: time.monotonic() + sum(slept))
    with pytest.raises(DKDError) as info:
        store.read_bytes(s3.uri("some/key"))
    assert slept and sum(slept) <= 1, slept  # it waited, within S3_RETRY_SECONDS
    message = str(info.value)
    assert s3.endpoint in message and s3.uri("some/key") in message
    assert "Connection refused" in message and "S3_RETRY_SECONDS=1" in message


def never_retried(seconds: float) -> None:
    raise AssertionError(f"a {seconds} s backoff: retried what must fail at once")


def test_a_missing_bucket_fails_at_once(s3: S3Endpoint, monkeypatch, tmp_path):
    missing = s3.bucket + "-missing"
    uri = f"s3://{missing}/runs/x"
    monkeypatch.setattr(s3_module, "_sleep", never_retried)
    for action in (
        lambda store: store.read_bytes(uri),
        lambda store: store.write_bytes(uri, b"x"),
        lambda store: store.exists(uri),
        lambda store: store.list(uri),
        lambda store: latest_checkpoint(uri, store),
    ):
        with pytest.raises(DKDError, match=f"bucket '{missing}' does not exist at") as info:
            action(open_store(uri))
        assert "mc mb" in str(info.value) and s3.endpoint in str(info.value)
    # With the region configured the SDK asks no GetBucketLocation, and a HEAD on a
    # missing object cannot tell a missing key from a missing bucket: still caught.
    monkeypatch.setenv("S3_REGION", "us-east-1")
    with pytest.raises(DKDError, match=f"bucket '{missing}' does not exist"):
        open_store(uri).exists(uri)


def test_wrong_credentials_fail_at_once(s3: S3Endpoint, monkeypatch):
    wrong_secret = "definitely-not-the-secret-0123456789"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "WRONGKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    monkeypatch.setattr(s3_module, "_sleep", never_retried)
    with s3.checking_credentials():
        for action in (
            lambda store: store.write_bytes(s3.uri("k"), b"x"),
            lambda store: store.read_bytes(s3.uri("k")),
            lambda store: store.exists(s3.uri("k")),
        ):
            with pytest.raises(DKDError, match=f"credentials rejected by {s3.endpoint}") as info:
                action(open_store(s3.uri()))
            message = str(info.value)
            assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in message
            assert wrong_secret not in message and s3.secret_key not in message


def test_sync_dataset_mirrors_a_prefix_and_downloads_only_changes(
    s3: S3Endpoint, tmp_path, monkeypatch
):
    files = {
        "images/a.jpg": b"a" * 100,
        "images/b.jpg": b"b" * 200,
        "labels/a.png": b"A" * 10,
        "labels/b.png": b"B" * 20,
        "dataset.yaml": b"classes: 3\n",
        "splits/train.txt": b"a\nb\n",
    }
    store = s3_store(s3.uri())
    for rel, data in files.items():
        store.write_bytes(s3.uri(f"datasets/toy/{rel}"), data)
    store.write_bytes(s3.uri("datasets/toy-other/x"), b"not part of the dataset")

    downloads = count_downloads(store, monkeypatch)
    cache = tmp_path / "cache"
    root = sync_dataset(s3.uri("datasets/toy/"), cache, progress=False)
    assert root == cache / s3.bucket / "datasets" / "toy"
    assert sorted(downloads) == sorted(f"datasets/toy/{rel}" for rel in files)
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data
    assert not (cache / s3.bucket / "datasets" / "toy-other").exists()

    downloads.clear()
    assert sync_dataset(s3.uri("datasets/toy"), cache, progress=False) == root
    assert downloads == [], "a second sync downloads nothing"

    store.write_bytes(s3.uri("datasets/toy/labels/a.png"), b"changed!" * 3)
    store.delete(s3.uri("datasets/toy/splits/train.txt"))
    downloads.clear()
    sync_dataset(s3.uri("datasets/toy"), cache, progress=False)
    assert downloads == ["datasets/toy/labels/a.png"]
    assert (root / "labels" / "a.png").read_bytes() == b"changed!" * 3
    assert not (root / "splits" / "train.txt").exists()

    local = tmp_path / "local-dataset"
    assert sync_dataset(str(local), cache) == local
    with pytest.raises(DKDError, match="holds no objects"):
        sync_dataset(s3.uri("datasets/empty/"), cache, progress=False)


def test_a_step_lease_in_s3_is_refused_while_held_and_released_after(s3: S3Endpoint):
    import os

    from dkd_core.lease import Holder, LeaseHeldError, StepLease

    folder = s3.uri("runs/lease/step_1")
    store = s3_store(folder)
    with StepLease(folder, "step 1"):
        assert store.exists(join(folder, "lease.json"))
        elsewhere = StepLease(folder, "step 1")
        elsewhere.holder = Holder("pod-b", 7, "another-run")  # a run in another pod
        with pytest.raises(LeaseHeldError, match=rf"step 1 is being trained by pid {os.getpid()}"):
            elsewhere.acquire()
    assert not store.exists(join(folder, "lease.json"))


def test_a_same_size_corruption_in_s3_fails_verification_once_the_etag_changes(
    s3: S3Endpoint, tmp_path, model
):
    from dkd_core.storage import verify_checkpoint

    uri = s3.uri("runs/verify/final")
    local = make_checkpoint(tmp_path / "ckpt", model, iteration=3)
    upload_checkpoint(local, uri)
    cache = tmp_path / "verified"
    assert verify_checkpoint(uri, cache)
    weights = bytearray((local / WEIGHTS_FILE).read_bytes())
    weights[-10] ^= 0xFF
    s3.client().put_object(
        s3.bucket, "runs/verify/final/" + WEIGHTS_FILE, io.BytesIO(bytes(weights)), len(weights)
    )
    with pytest.raises(DKDError, match=f"{WEIGHTS_FILE}: checksum mismatch"):
        verify_checkpoint(uri, cache)


def test_a_damaged_cached_copy_is_downloaded_again_once(
    s3: S3Endpoint, tmp_path, model, monkeypatch
):
    from dkd_core.checkpoint import open_model_checkpoint

    uri = s3.uri("runs/refetch/final")
    upload_checkpoint(make_checkpoint(tmp_path / "ckpt", model, iteration=2), uri)
    cache = tmp_path / "cache"
    cached = fetch_checkpoint(uri, cache)
    for name in (WEIGHTS_FILE, TRAINING_FILE):  # same size, other bytes: the cache is damaged
        data = bytearray((cached / name).read_bytes())
        data[-10] ^= 0xFF
        (cached / name).unlink()  # break the hard link to the blob: damage both copies
        (cached / name).write_bytes(bytes(data))
        blob = (
            cache
            / json.loads((cached / META_FILE).read_text())[
                "weights" if name == WEIGHTS_FILE else "training_tensors"
            ]["sha256"]
            / name
        )
        blob.write_bytes(bytes(data))
    downloads = count_downloads(s3_store(uri), monkeypatch)
    loaded, _, _ = open_model_checkpoint(uri, cache)
    payloads = sorted(k.rsplit("/", 1)[1] for k in downloads if not k.endswith(META_FILE))
    assert payloads == sorted([TRAINING_FILE, WEIGHTS_FILE]), "each damaged payload once"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
