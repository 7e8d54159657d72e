"""The artifact store without a server: URIs, local files, checkpoints, env parsing, retries."""

from __future__ import annotations

import json
import socket
from functools import partial
from pathlib import Path

import pytest
import torch
import urllib3
from minio.error import S3Error, ServerError

from dkd_core import storage
from dkd_core.checkpoint import (
    META_FILE,
    TRAINING_FILE,
    WEIGHTS_FILE,
    load_model_checkpoint,
    load_training_tensors,
    save_model_checkpoint,
)
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3
from dkd_core.storage import (
    LocalStore,
    ObjectNotFoundError,
    S3Config,
    S3Store,
    checkpoint_complete,
    fetch_checkpoint,
    is_remote,
    join,
    latest_checkpoint,
    local_path,
    open_store,
    upload_checkpoint,
)

SECRET = "s3cr3t-Value-that-must-never-show"


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    torch.manual_seed(0)
    return DeepLabV3((2,), backbone="tiny", output_stride=8, aspp_channels=8).eval()


def make_checkpoint(directory: Path, model: DeepLabV3, iteration: int, training=True) -> Path:
    tensors = {"momentum": torch.full((3,), float(iteration))} if training else None
    meta = {"step": 0, "training": {"iteration": iteration}}
    return save_model_checkpoint(directory, model, meta, training_tensors=tensors)


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".unverified"))]


# --------------------------------------------------------------------------- URIs


def test_is_remote():
    assert is_remote("s3://bucket/key")
    assert is_remote("S3://bucket")
    assert not is_remote("/data/voc")
    assert not is_remote("file:///data/voc")
    assert not is_remote("relative/s3://x")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket", ("runs", "r1"), "s3://bucket/runs/r1"),
        ("s3://bucket/", ("runs/",), "s3://bucket/runs"),
        ("s3://bucket/runs/", ("/r1/", "meta.json"), "s3://bucket/runs/r1/meta.json"),
        ("s3://bucket/a", ("", "b"), "s3://bucket/a/b"),
        ("/data/voc", ("images", "a.jpg"), "/data/voc/images/a.jpg"),
        ("/data/voc/", ("/abs",), "/data/voc/abs"),
        ("file:///data", ("x",), "file:///data/x"),
        ("relative", ("x",), "relative/x"),
        ("s3://bucket/a", (), "s3://bucket/a"),
    ],
)
def test_join(base, parts, expected):
    assert join(base, *parts) == expected


def test_local_path_forms():
    assert local_path("/data/x") == Path("/data/x")
    assert local_path("file:///data/x") == Path("/data/x")
    assert local_path("file://localhost/data/x") == Path("/data/x")
    with pytest.raises(DKDError, match="unsupported URI scheme 'gs://'"):
        local_path("gs://bucket/x")
    with pytest.raises(DKDError, match="is an S3 URI"):
        local_path("s3://bucket/x")
    with pytest.raises(DKDError, match="unsupported URI scheme"):
        open_store("http://example.org/x")


# -------------------------------------------------------------------- local store


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_write_read_list_delete(tmp_path, scheme):
    store = open_store(scheme + str(tmp_path))
    assert isinstance(store, LocalStore)
    root = scheme + str(tmp_path / "root")
    store.write_bytes(join(root, "a.bin"), b"\x00\x01")
    store.write_text(join(root, "sub", "b.txt"), "hello")
    store.write_json(join(root, "sub", "deep", "c.json"), {"z": 1, "a": [1, 2]})

    assert store.read_bytes(join(root, "a.bin")) == b"\x00\x01"
    assert store.read_text(join(root, "sub", "b.txt")) == "hello"
    assert store.read_json(join(root, "sub", "deep", "c.json")) == {"a": [1, 2], "z": 1}
    text = (tmp_path / "root" / "sub" / "deep" / "c.json").read_text()
    assert text == json.dumps({"a": [1, 2], "z": 1}, indent=2, sort_keys=True) + "\n"
    assert store.exists(join(root, "a.bin"))
    assert not store.exists(join(root, "sub"))  # a folder is not an object
    assert not store.exists(join(root, "missing"))
    assert store.stat(join(root, "a.bin")).size == 2

    assert store.list(root) == [
        join(root, "a.bin"),
        join(root, "sub", "b.txt"),
        join(root, "sub", "deep", "c.json"),
    ]
    assert store.list(root, recursive=False) == [join(root, "a.bin"), join(root, "sub") + "/"]
    assert store.list(join(root, "nothing-here")) == []

    with pytest.raises(ObjectNotFoundError, match="missing") as info:
        store.read_bytes(join(root, "missing"))
    assert isinstance(info.value, FileNotFoundError)

    store.delete(join(root, "a.bin"))
    store.delete(join(root, "a.bin"))  # deleting what is gone is fine
    assert not store.exists(join(root, "a.bin"))
    store.delete_prefix(join(root, "sub"))
    assert store.list(root) == []
    store.delete_prefix(join(root, "sub"))


def test_local_writes_are_atomic_and_leave_no_tmp_files(tmp_path, monkeypatch):
    store = LocalStore()
    target = tmp_path / "out" / "file.bin"
    store.write_bytes(str(target), b"old")
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 1000)
    store.upload_file(source, str(tmp_path / "out" / "copy.bin"))
    digest = store.download_file(str(source), tmp_path / "out" / "down.bin")
    assert digest == storage.sha256_file(source)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == source.read_bytes()
    assert tmp_files(tmp_path) == []

    def broken_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(storage.store.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk went away"):
        store.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old", "a failed write must leave the old content"
    assert tmp_files(tmp_path) == []


def test_read_json_names_the_uri_on_bad_json(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DKDError, match=r"bad\.json: not valid JSON"):
        LocalStore().read_json(str(tmp_path / "bad.json"))


# -------------------------------------------------------------- local checkpoints


def test_upload_fetch_and_complete_on_local_paths(tmp_path, model):
    local = make_checkpoint(tmp_path / "work" / "ckpt", model, iteration=5)
    uri = str(tmp_path / "artifacts" / "run" / "iter_5")
    assert not checkpoint_complete(uri)
    upload_checkpoint(local, uri)
    assert checkpoint_complete(uri)
    assert sorted(p.name for p in Path(uri).iterdir()) == sorted(
        [META_FILE, TRAINING_FILE, WEIGHTS_FILE]
    )
    assert (Path(uri) / META_FILE).read_bytes() == (local / META_FILE).read_bytes()

    fetched = fetch_checkpoint("file://" + uri, tmp_path / "cache")
    assert fetched == Path(uri)
    assert not (tmp_path / "cache").exists(), "local checkpoints are not copied"
    loaded, meta = load_model_checkpoint(fetched)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(load_training_tensors(fetched, meta)["momentum"], torch.full((3,), 5.0))
    assert tmp_files(tmp_path) == []

    upload_checkpoint(local, str(local))  # onto itself: nothing to do
    assert checkpoint_complete(str(local))


def test_fetch_of_a_local_checkpoint_verifies_checksums(tmp_path, model):
    ckpt = make_checkpoint(tmp_path / "ckpt", model, iteration=1)
    data = bytearray((ckpt / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (ckpt / WEIGHTS_FILE).write_bytes(bytes(data))
    assert checkpoint_complete(str(ckpt)), "same size: complete, but corrupt"
    with pytest.raises(DKDError, match="checksum mismatch"):
        fetch_checkpoint(str(ckpt), tmp_path / "cache")
    with pytest.raises(DKDError, match="checksum mismatch"):
        upload_checkpoint(ckpt, str(tmp_path / "published"))
    assert not (tmp_path / "published").exists(), "a corrupt checkpoint is never published"


def test_checkpoint_complete_needs_every_payload_with_its_size(tmp_path, model):
    ckpt = make_checkpoint(tmp_path / "ckpt", model, iteration=1)
    assert checkpoint_complete(str(ckpt))
    (ckpt / TRAINING_FILE).write_bytes((ckpt / TRAINING_FILE).read_bytes()[:-1])
    assert not checkpoint_complete(str(ckpt))
    (ckpt / TRAINING_FILE).unlink()
    assert not checkpoint_complete(str(ckpt))
    (ckpt / META_FILE).write_text("{broken")
    assert not checkpoint_complete(str(ckpt))
    assert not checkpoint_complete(str(tmp_path / "nothing"))


class RecordingStore(LocalStore):
    """A local store that records the order of its writes and deletes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def write_bytes(self, uri, data):
        self.calls.append(("write", Path(uri).name))
        super().write_bytes(uri, data)

    def upload_file(self, local, uri):
        self.calls.append(("upload", Path(uri).name))
        super().upload_file(local, uri)

    def delete(self, uri):
        self.calls.append(("delete", Path(uri).name))
        super().delete(uri)


def test_upload_checkpoint_writes_meta_last_and_removes_the_old_meta_first(tmp_path, model):
    ckpt = make_checkpoint(tmp_path / "ckpt", model, iteration=3)
    store = RecordingStore()
    upload_checkpoint(ckpt, str(tmp_path / "dest"), store)
    assert store.calls[0] == ("delete", META_FILE)
    assert store.calls[-1] == ("write", META_FILE)
    assert sorted(store.calls[1:-1]) == sorted(
        [("upload", TRAINING_FILE), ("upload", WEIGHTS_FILE)]
    )


def test_latest_checkpoint_picks_the_largest_complete_iteration(tmp_path, model):
    runs = tmp_path / "checkpoints"
    make_checkpoint(runs / "iter_9", model, iteration=9)
    make_checkpoint(runs / "iter_10", model, iteration=10)
    # Newer, but its payloads are missing or cut short: never picked.
    make_checkpoint(runs / "iter_11", model, iteration=11)
    (runs / "iter_11" / WEIGHTS_FILE).unlink()
    make_checkpoint(runs / "iter_12", model, iteration=12)
    weights = runs / "iter_12" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    # Not checkpoints at all.
    (runs / "notes").mkdir()
    (runs / "notes" / "readme.txt").write_text("hi")
    (runs / "broken").mkdir()
    (runs / "broken" / META_FILE).write_text("{")
    make_checkpoint(runs / "nested" / "iter_99", model, iteration=99)  # two levels down

    assert latest_checkpoint(str(runs)) == str(runs / "iter_10")
    assert latest_checkpoint("file://" + str(runs) + "/") == "file://" + str(runs / "iter_10")
    assert latest_checkpoint(str(tmp_path / "none")) is None


# ------------------------------------------------------------------ configuration


def env(**values: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": SECRET, **values}


@pytest.mark.parametrize(
    ("values", "endpoint", "secure"),
    [
        ({"S3_ENDPOINT": "http://minio:9000"}, "minio:9000", False),
        ({"S3_ENDPOINT": "https://minio:9443/"}, "minio:9443", True),
        ({"S3_ENDPOINT": "minio:9000"}, "minio:9000", False),
        ({"S3_ENDPOINT": "minio:9000", "S3_SECURE": "true"}, "minio:9000", True),
        ({"S3_ENDPOINT": "minio:9000", "MINIO_SECURE": "True"}, "minio:9000", True),
        ({"S3_ENDPOINT": "http://minio:9000", "S3_SECURE": "true"}, "minio:9000", False),
        ({"MINIO_ENDPOINT": "10.0.0.7:9000"}, "10.0.0.7:9000", False),
        ({"S3_ENDPOINT": "s3.example.org"}, "s3.example.org", False),
    ],
)
def test_endpoint_forms(values, endpoint, secure):
    config = S3Config.from_env(env(**values))
    assert (config.endpoint, config.secure) == (endpoint, secure)
    assert config.url == ("https://" if secure else "http://") + endpoint


def test_keys_region_and_retry_budget_from_the_environment():
    config = S3Config.from_env(
        {
            "S3_ENDPOINT": "minio:9000",
            "MINIO_ACCESS_KEY": "minio-user",
            "MINIO_SECRET_KEY": SECRET,
            "AWS_REGION": "eu-central-1",
            "S3_RETRY_SECONDS": "2.5",
        }
    )
    assert (config.access_key, config.secret_key) == ("minio-user", SECRET)
    assert (config.region, config.retry_seconds) == ("eu-central-1", 2.5)
    default = S3Config.from_env(env(S3_ENDPOINT="minio:9000"))
    assert (default.region, default.retry_seconds) == (None, 60.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set S3_ENDPOINT"),
        ({"S3_ENDPOINT": "ftp://minio:21"}, "scheme must be http or https"),
        ({"S3_ENDPOINT": "http://minio:9000/bucket"}, "no path"),
        ({"S3_ENDPOINT": "minio:9000/bucket"}, "no path"),
        ({"S3_ENDPOINT": "minio:port"}, "not a valid host:port"),
        ({"S3_ENDPOINT": "http://"}, "not a valid host:port"),
        ({"S3_ENDPOINT": "minio:9000", "S3_SECURE": "maybe"}, "S3_SECURE='maybe'"),
        ({"S3_ENDPOINT": "minio:9000", "S3_RETRY_SECONDS": "soon"}, "S3_RETRY_SECONDS"),
        ({"S3_ENDPOINT": "minio:9000", "S3_RETRY_SECONDS": "-1"}, "S3_RETRY_SECONDS"),
    ],
)
def test_bad_configuration_says_what_to_set(values, message):
    with pytest.raises(DKDError, match=message) as info:
        S3Config.from_env(env(**values))
    assert SECRET not in str(info.value)


def test_credentials_in_the_endpoint_url_are_refused_without_echoing_them():
    with pytest.raises(DKDError, match="must not hold credentials") as info:
        S3Config.from_env(env(S3_ENDPOINT=f"http://user:{SECRET}@minio:9000"))
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("values", "missing", "present"),
    [
        ({"AWS_SECRET_ACCESS_KEY": SECRET}, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_ACCESS_KEY_ID": "AKID"}, "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        ({"MINIO_SECRET_KEY": SECRET}, "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"),
    ],
)
def test_missing_keys_name_the_variable(values, missing, present):
    with pytest.raises(DKDError, match=f"set {missing}") as info:
        S3Config.from_env({"S3_ENDPOINT": "minio:9000", **values})
    message = str(info.value)
    assert f"set {present}" not in message
    assert "minio:9000" in message
    assert SECRET not in message


def test_the_secret_never_shows(monkeypatch):
    config = S3Config.from_env(env(S3_ENDPOINT="minio:9000"))
    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert "AKIDTEST" in repr(config)
    monkeypatch.setenv("S3_ENDPOINT", "minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store = open_store("s3://bucket/key")
    assert SECRET not in repr(store)
    assert SECRET not in repr(store.__dict__.get("config"))


def test_open_store_caches_one_s3_store_per_configuration(monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT", "minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    first = open_store("s3://bucket/a")
    assert isinstance(first, S3Store)
    assert open_store("s3://other-bucket/b") is first
    monkeypatch.setenv("S3_ENDPOINT", "minio-2:9000")
    assert open_store("s3://bucket/a") is not first
    with pytest.raises(DKDError, match="names no bucket"):
        open_store("s3:///key")


def test_s3_uris_without_configuration_say_what_to_set(monkeypatch):
    for name in ("S3_ENDPOINT", "MINIO_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DKDError, match="set S3_ENDPOINT"):
        open_store("s3://bucket/key")


# ------------------------------------------------------------------------- retries


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FlakyClient:
    """Stands in for the minio client: raises the given errors, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def remove_object(self, bucket: str, key: str) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


def s3_error(code: str) -> S3Error:
    return S3Error(None, code, f"{code} message", None, None, None)  # type: ignore[arg-type]


def refused() -> urllib3.exceptions.MaxRetryError:
    reason = urllib3.exceptions.NewConnectionError(None, "[Errno 111] Connection refused")
    return urllib3.exceptions.MaxRetryError(None, "/bucket/key", reason)


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(storage.s3, "_sleep", fake.sleep)
    monkeypatch.setattr(storage.s3, "_monotonic", fake.monotonic)
    return fake


def fake_store(client, retry_seconds: float = 60.0) -> S3Store:
    config = S3Config("minio:9000", False, "AKID", SECRET, retry_seconds=retry_seconds)
    return S3Store(config, client=client)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [
        refused(),
        urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104)),
        urllib3.exceptions.ReadTimeoutError(None, "/bucket/key", "Read timed out."),
        ConnectionResetError(104, "Connection reset by peer"),
        s3_error("SlowDown"),
        s3_error("InternalError"),
        s3_error("RequestTimeout"),
        ServerError("server failed with HTTP status code 503", 503),
    ],
)
def test_transient_errors_are_retried_with_exponential_backoff(clock, error):
    client = FlakyClient(*[error] * 6)
    fake_store(client).delete("s3://bucket/key")
    assert client.calls == 7
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_retries_stop_at_the_budget_with_a_message_naming_everything(clock):
    client = FlakyClient(*[refused()] * 100)
    with pytest.raises(DKDError) as info:
        fake_store(client, retry_seconds=20).delete("s3://bucket/some/key")
    message = str(info.value)
    assert "http://minio:9000" in message and "s3://bucket/some/key" in message
    assert "Connection refused" in message and "S3_RETRY_SECONDS=20" in message
    assert SECRET not in message
    assert sum(clock.sleeps) == pytest.approx(20.0)
    assert max(clock.sleeps) <= 8.0


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (s3_error("NoSuchBucket"), "bucket 'bucket' does not exist at http://minio:9000"),
        (s3_error("AccessDenied"), "credentials rejected by http://minio:9000"),
        (s3_error("InvalidAccessKeyId"), "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
        (s3_error("SignatureDoesNotMatch"), "credentials rejected"),
        (s3_error("NoSuchKey"), r"s3://bucket/key does not exist at http://minio:9000"),
        (ValueError("invalid bucket name b"), "bucket names are 3-63"),
        (
            urllib3.exceptions.MaxRetryError(
                None,
                "/bucket/key",
                urllib3.exceptions.NameResolutionError(
                    "nowhere", None, socket.gaierror(socket.EAI_NONAME, "Name or service not known")
                ),
            ),
            "cannot resolve the host of S3_ENDPOINT=http://minio:9000: set S3_ENDPOINT",
        ),
    ],
)
def test_permanent_errors_fail_at_once_with_a_specific_message(clock, error, message):
    client = FlakyClient(error)
    with pytest.raises(DKDError, match=message) as info:
        fake_store(client).delete("s3://bucket/key")
    assert client.calls == 1 and clock.sleeps == []
    assert SECRET not in str(info.value)


def test_kfp_minio_uris_are_s3():
    from dkd_core.storage import is_remote, split_s3_uri

    assert is_remote("minio://mlpipeline/v2/artifacts/run/model")
    assert split_s3_uri("minio://mlpipeline/v2/artifacts/x") == ("mlpipeline", "v2/artifacts/x")


def test_verify_checkpoint_reads_each_payload_once_until_it_changes(tmp_path, model, monkeypatch):
    import os

    from dkd_core.storage import checkpoints, verify_checkpoint

    folder = make_checkpoint(tmp_path / "ckpt", model, iteration=1, training=False)
    cache = tmp_path / "verified"
    reads: list[Path] = []
    original = checkpoints.sha256_file

    def counting(path):
        reads.append(Path(path))
        return original(path)

    monkeypatch.setattr(checkpoints, "sha256_file", counting)
    assert verify_checkpoint(str(folder), cache) and verify_checkpoint(str(folder), cache)
    assert reads == [folder / WEIGHTS_FILE], "the second verification must use the cache"
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    with pytest.raises(DKDError, match=r"checksum mismatch .* the checkpoint is damaged"):
        verify_checkpoint(str(folder), cache)
    assert not verify_checkpoint(str(tmp_path / "nothing"), cache)


def test_parallel_transfers_yield_each_item_and_the_first_failure_cancels_the_rest():
    import threading

    from dkd_core.storage.transfers import parallel_transfers

    ran = []
    done = list(
        parallel_transfers(
            [(i, lambda i=i: ran.append(i)) for i in range(5)],
            workers=2, desc="push test", progress=False,
        )
    )  # fmt: skip
    assert sorted(done) == sorted(ran) == [0, 1, 2, 3, 4]

    release = threading.Event()

    def fail():
        raise OSError("disk gone")

    def slow():
        release.wait(1)

    started = []

    def quick(i):
        started.append(i)
        release.wait(0.05)  # 20 of these take a worker 1 s: the failure is seen long before

    transfers = [("bad", fail), ("slow", slow)] + [(i, partial(quick, i)) for i in range(20)]
    with pytest.raises(OSError, match="disk gone"):
        for _ in parallel_transfers(transfers, workers=2, desc="push test", progress=False):
            pass
    release.set()
    assert len(started) < 20  # transfers not yet started when the failure came were cancelled
