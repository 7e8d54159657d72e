"""Weight files by URI: served over HTTP and from the S3 test server, a step 0 trains
from each; a wrong torch.hub prefix, a 404 or a refused connection stops `train` in one
line before any dataset file is read."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

import dkd_core.train as train_module
from dkd_core import cli, weights
from dkd_core.errors import DKDError
from dkd_core.model import DeepLabV3
from dkd_core.storage import checkpoint_complete, open_store
from dkd_core.weights import TORCHVISION_URLS, resolve_weights
from tests.http_server import free_port, serve_files
from tests.integration.conftest import CONFIGS, toy_config
from tests.s3_server import S3Endpoint, s3

FIXTURES = (s3,)
pytestmark = pytest.mark.integration
SHORT = ("optim.epochs=1", "data.crop_size=32")  # the weights are what is tested, not training


def backbone_file() -> tuple[str, bytes, dict[str, torch.Tensor]]:
    """A torch.save'd backbone of the toy model, named the torch.hub way."""
    donor = DeepLabV3((4,), "tiny", 16, 32).backbone
    g = torch.Generator().manual_seed(7)
    state = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in donor.state_dict().items()}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth", data, state


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DKD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def trained_backbone(config, monkeypatch) -> dict[str, torch.Tensor]:
    """Train step 0 of `config`; the backbone's tensors as training started."""
    seen = {}
    real_build = train_module.build_student_and_teacher

    def build(*args, **kwargs):
        model, teacher = real_build(*args, **kwargs)
        seen.update({k: v.detach().clone() for k, v in model.backbone.state_dict().items()})
        return model, teacher

    monkeypatch.setattr(train_module, "build_student_and_teacher", build)
    assert checkpoint_complete(train_module.train_step(config, 0))
    return seen


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_step0_trains_from_weights_served_over_http(toy_root, tmp_path, monkeypatch, cache):
    name, data, state = backbone_file()
    with serve_files({f"models/{name}": data}) as server:
        url = server.url(f"models/{name}")
        config = toy_config(toy_root, tmp_path / "run", f"model.pretrained={url}", *SHORT)
        assert_same(trained_backbone(config, monkeypatch), state)
        assert server.requests == [(f"models/{name}", None)]  # once, into the cache
        assert resolve_weights(url).read_bytes() == data
    assert server.requests == [(f"models/{name}", None)]
    assert list(cache.joinpath("weights").rglob(name))


def test_step0_trains_from_weights_in_s3(toy_root, tmp_path, monkeypatch, s3: S3Endpoint):
    name, data, state = backbone_file()
    uri = s3.uri(f"shared/weights/{name}")
    open_store(uri).write_bytes(uri, data)
    kfp_uri = "minio://" + uri.removeprefix("s3://")  # the scheme KFP names its artifacts with
    config = toy_config(toy_root, tmp_path / "run", f"model.pretrained={kfp_uri}", *SHORT)
    assert_same(trained_backbone(config, monkeypatch), state)
    assert resolve_weights(uri).read_bytes() == data


def test_an_s3_object_that_changed_is_fetched_again(s3: S3Endpoint):
    uri = s3.uri("shared/weights/w.pth")
    open_store(uri).write_bytes(uri, b"first")
    assert resolve_weights(uri).read_bytes() == b"first"
    open_store(uri).write_bytes(uri, b"second!")
    assert resolve_weights(uri).read_bytes() == b"second!"


def test_a_missing_s3_object_is_one_line(s3: S3Endpoint):
    with pytest.raises(DKDError, match=r"^weight file s3://.*/nothing.pth does not exist$"):
        resolve_weights(s3.uri("nothing.pth"))


def train_cli(capsys, monkeypatch, toy_root, tmp_path, pretrained: str) -> tuple[int, str]:
    """`dkd train --step 0` with `model.pretrained=...`; fails the test if any dataset
    file is read (step_data is where a step first touches its dataset)."""

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read before the weights were checked")

    monkeypatch.setattr(train_module, "step_data", no_data)
    code = cli.main(
        ["train", "--config", str(CONFIGS / "toy.yaml"), "--step", "0",
         f"data.root={toy_root}", f"run.output={tmp_path / 'run'}", "train.metrics_port=-1",
         f"model.pretrained={pretrained}"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return code, err


def test_a_damaged_teacher_is_refused_before_any_dataset_file(
    capsys, monkeypatch, toy_root, tmp_path
):
    from dkd_core.checkpoint import save_model_checkpoint

    teacher = tmp_path / "teacher"
    save_model_checkpoint(teacher, DeepLabV3((4,), "tiny", 16, 32), {"step": 0})
    weights_file = teacher / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-8] + b"\0" * 8)

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was read before the teacher was checked")

    monkeypatch.setattr(train_module, "step_data", no_data)
    code = cli.main(
        ["train", "--config", str(CONFIGS / "toy.yaml"), "--step", "1", "--teacher", str(teacher),
         f"data.root={toy_root}", f"run.output={tmp_path / 'run'}", "train.metrics_port=-1"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "model.safetensors" in err and "sha256" in err


def test_a_wrong_hash_prefix_is_refused_before_any_dataset_file(
    capsys, monkeypatch, toy_root, tmp_path, cache
):
    name, data, _ = backbone_file()
    wrong = "tiny-00000000.pth"
    with serve_files({wrong: data}) as server:
        code, err = train_cli(capsys, monkeypatch, toy_root, tmp_path, server.url(wrong))
    actual = hashlib.sha256(data).hexdigest()[:8]
    assert code == 2
    assert err == (
        f"error: {server.url(wrong)}: sha256 starts with {actual}, but the file name says "
        "00000000 (torch.hub's <name>-<sha256 prefix>.<ext> rule): a damaged or different "
        "file; it was not used"
    )
    assert not list(cache.joinpath("weights").rglob(wrong))  # nothing kept to be used later
    assert name != wrong


def test_a_local_file_with_a_wrong_prefix_is_refused_and_kept(tmp_path):
    _, data, _ = backbone_file()
    path = tmp_path / "resnet101-63fe2227.pth"
    path.write_bytes(data)
    with pytest.raises(DKDError, match=r"sha256 starts with [0-9a-f]{8}, but the file name says"):
        resolve_weights(str(path))
    assert path.exists()  # the user's own file is never deleted


def test_a_404_is_one_line(capsys, monkeypatch, toy_root, tmp_path):
    with serve_files({}) as server:
        url = server.url("tiny-12345678.pth")
        code, err = train_cli(capsys, monkeypatch, toy_root, tmp_path, url)
    assert (code, err) == (2, f"error: download {url}: HTTP 404 Not Found")


def test_a_refused_connection_is_one_line(capsys, monkeypatch, toy_root, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/tiny.pth"
    code, err = train_cli(capsys, monkeypatch, toy_root, tmp_path, url)
    assert code == 2
    assert err.startswith(f"error: download {url}: connection refused by 127.0.0.1:")


def test_torchvision_names_are_torchvisions_urls(monkeypatch, tmp_path):
    fetched = []

    def fake_download(url, dest, **kwargs):
        fetched.append((url, dest.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"")
        return dest

    monkeypatch.setattr(weights, "download", fake_download)
    monkeypatch.setattr(weights, "check_hub_prefix", lambda *args, **kwargs: None)
    for name in ("resnet18", "resnet50", "resnet101"):
        resolve_weights(f"torchvision:{name}")
    assert fetched == [
        ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18-f37072fd.pth"),
        ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50-0676ba61.pth"),
        ("https://download.pytorch.org/models/resnet101-63fe2227.pth", "resnet101-63fe2227.pth"),
    ]
    assert sorted(TORCHVISION_URLS) == ["resnet101", "resnet18", "resnet50"]
    with pytest.raises(DKDError, match=r"'torchvision:resnet34': unknown torchvision weights"):
        resolve_weights("torchvision:resnet34")


def test_fetch_weights_copies_into_a_bucket_and_prints_the_parameter(capsys, s3: S3Endpoint):
    name, data, _ = backbone_file()
    with serve_files({name: data}) as server:
        code = cli.main(["fetch", "weights", server.url(name), "--dest", s3.uri("shared/weights")])
    assert code == 0
    uri = s3.uri(f"shared/weights/{name}")
    assert capsys.readouterr().out.strip().splitlines()[0] == f"pretrained={uri}"
    assert open_store(uri).read_bytes(uri) == data


def test_fetch_weights_into_a_folder(capsys, tmp_path):
    name, data, _ = backbone_file()
    with serve_files({name: data}) as server:
        assert cli.main(["fetch", "weights", server.url(name), "--dest", str(tmp_path / "w")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"pretrained={tmp_path / 'w' / name}"
    assert (tmp_path / "w" / name).read_bytes() == data
