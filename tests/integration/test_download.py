"""`dkd_core.download` against a local HTTP server: resume, verify, one-line failures."""

from __future__ import annotations

import hashlib
import socket

import pytest

from dkd_core import download as download_module
from dkd_core.download import download, sha256_file
from dkd_core.errors import DKDError
from tests.http_server import free_port, serve_files

pytestmark = pytest.mark.integration

DATA = bytes(range(256)) * 40  # 10 KiB, not a repeat of any chunk boundary
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


def one_line(exc: pytest.ExceptionInfo[DKDError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_downloads_verifies_and_leaves_no_partial(tmp_path):
    dest = tmp_path / "sub" / "w.pth"
    with serve_files({"w.pth": DATA}) as server:
        got = download(server.url("w.pth"), dest, sha256=SHA256, md5=MD5, size=len(DATA))
    assert got == dest and dest.read_bytes() == DATA
    assert sha256_file(dest) == SHA256
    assert not (tmp_path / "sub" / "w.pth.partial").exists()
    assert server.requests == [("w.pth", None)]


def test_a_verified_file_needs_no_network(tmp_path):
    dest = tmp_path / "w.pth"
    dest.write_bytes(DATA)
    url = f"http://127.0.0.1:{free_port()}/w.pth"  # nothing listens: any request would fail
    assert download(url, dest, sha256=SHA256, size=len(DATA)) == dest


def test_a_file_that_fails_its_check_is_fetched_again(tmp_path):
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"stale")
    with serve_files({"w.pth": DATA}) as server:
        download(server.url("w.pth"), dest, sha256=SHA256)
    assert dest.read_bytes() == DATA


def test_resumes_a_partial_with_a_range_request(tmp_path):
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.partial").write_bytes(DATA[:3000])
    with serve_files({"w.pth": DATA}) as server:
        download(server.url("w.pth"), dest, sha256=SHA256)
    assert server.requests == [("w.pth", "bytes=3000-")]
    assert dest.read_bytes() == DATA


def test_a_server_without_ranges_sends_it_all_again(tmp_path):
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.partial").write_bytes(b"x" * 3000)  # would corrupt the file if appended to
    with serve_files({"w.pth": DATA}) as server:
        server.honour_ranges = False
        download(server.url("w.pth"), dest, sha256=SHA256)
    assert dest.read_bytes() == DATA


def test_a_whole_partial_is_finished_without_a_body(tmp_path):
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.partial").write_bytes(DATA)
    with serve_files({"w.pth": DATA}) as server:
        download(server.url("w.pth"), dest, sha256=SHA256)
    assert server.requests == [("w.pth", f"bytes={len(DATA)}-")]
    assert dest.read_bytes() == DATA


def test_a_dropped_connection_resumes_and_a_later_call_finishes(tmp_path):
    dest = tmp_path / "w.pth"
    partial = tmp_path / "w.pth.partial"
    with serve_files({"w.pth": DATA}) as server:
        server.cut_after = 1000
        with pytest.raises(DKDError) as failed:
            download(server.url("w.pth"), dest, sha256=SHA256)
        attempts = download_module.INTERRUPTED_RETRIES + 1
        assert "run the same command again to resume" in one_line(failed)
        assert not dest.exists() and partial.stat().st_size == 1000 * attempts
        assert [r for _, r in server.requests] == [None] + [
            f"bytes={1000 * i}-" for i in range(1, attempts)
        ]
        server.cut_after = None
        download(server.url("w.pth"), dest, sha256=SHA256)
    assert server.requests[-1] == ("w.pth", f"bytes={1000 * attempts}-")
    assert dest.read_bytes() == DATA and not partial.exists()


def test_checksum_mismatch_is_one_line_and_leaves_nothing(tmp_path):
    dest = tmp_path / "w.pth"
    wrong = "0" * 64
    with serve_files({"w.pth": DATA}) as server, pytest.raises(DKDError) as failed:
        download(server.url("w.pth"), dest, sha256=wrong)
    message = one_line(failed)
    assert server.url("w.pth") in message
    assert f"sha256 mismatch, expected {wrong}, got {SHA256}" in message
    assert not dest.exists() and not (tmp_path / "w.pth.partial").exists()


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ({"md5": "f" * 32}, f"md5 mismatch, expected {'f' * 32}, got {MD5}"),
        ({"size": 99}, f"size mismatch, expected 99 bytes, got {len(DATA)} bytes"),
        ({"size": len(DATA) + 1}, f"expected {len(DATA) + 1} bytes, got {len(DATA)} bytes"),
    ],
)
def test_md5_and_size_are_checked(tmp_path, checks, expected):
    dest = tmp_path / "w.pth"
    with serve_files({"w.pth": DATA}) as server, pytest.raises(DKDError) as failed:
        download(server.url("w.pth"), dest, **checks)
    assert expected in one_line(failed)
    assert not dest.exists()


def test_http_404_is_one_line_naming_the_url(tmp_path):
    with serve_files({}) as server, pytest.raises(DKDError) as failed:
        download(server.url("missing.pth"), tmp_path / "m.pth")
    assert one_line(failed) == f"download {server.url('missing.pth')}: HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/w.pth"
    with pytest.raises(DKDError) as failed:
        download(url, tmp_path / "w.pth")
    assert one_line(failed).startswith(f"download {url}: connection refused by 127.0.0.1:")


def test_unknown_host_is_one_line(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(DKDError) as failed:
        download("https://weights.invalid/w.pth", tmp_path / "w.pth")
    assert one_line(failed).startswith(
        "download https://weights.invalid/w.pth: cannot resolve host 'weights.invalid'"
    )


def test_a_silent_server_times_out_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "READ_TIMEOUT", 0.3)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/w.pth"
        with pytest.raises(DKDError) as failed:
            download(url, tmp_path / "w.pth")
    assert one_line(failed).startswith(f"download {url}: 127.0.0.1:")
    assert "sent nothing for 0.3s" in str(failed.value)


def test_only_http_urls(tmp_path):
    with pytest.raises(DKDError, match=r"^download ftp://h/w.pth: expected an http:// or https"):
        download("ftp://h/w.pth", tmp_path / "w.pth")
