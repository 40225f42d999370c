"""Downloading checkpoints (pipelines/download.py and the zoo on top of it) from a real HTTP
server on 127.0.0.1: atomic, resumable, verified; clear one-line errors; pickled code refused."""
from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from checkpoint_server import (CodePayload, refusing_url, server, sha256_of, tiny_swinir_bytes,  # noqa: F401
                               torch_bytes, zoo_env)
from pipelines import CheckpointError, load_model, zoo
from pipelines.download import (ChecksumError, DownloadError, IncompleteDownloadError, UnsafeDownloadError, fetch,
                                part_path, record_path, verify_cached)

MB = 1 << 20


def blob(size: int, seed: int = 1) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[seed:size + seed]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def files_in(directory) -> list:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- through the zoo: a preset in $NYSTRA_PRESETS pointing at the local server -------------------


def test_download_then_cache_hit_without_network(server, zoo_env):
    data = tiny_swinir_bytes()
    name = zoo_env.write_preset("test-tiny", url=server.add("tiny.safetensors", data))
    path = zoo.checkpoint_path(name, progress=False)
    assert path == zoo_env.models / "tiny.safetensors" and path.read_bytes() == data
    record = json.loads(record_path(path).read_text())
    assert record["sha256"] == sha256_of(data) and record["url"] == server.url("tiny.safetensors")
    assert zoo.get_preset(name).status() == "cached"
    assert files_in(zoo_env.models) == ["tiny.safetensors", "tiny.safetensors.json"]

    server.stop()  # no network from here on
    assert zoo.checkpoint_path(name, progress=False) == path
    model = load_model(name)
    assert model.info.scale == 2
    assert len(server.requests) == 1


def test_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    url = server.add("weights.pth", blob(3 * MB))
    fetch(url, tmp_path / "weights.pth", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "weights.pth" in captured.err and "100%" in captured.err and "3.00M" in captured.err

    fetch(server.add("quiet.pth", blob(MB)), tmp_path / "quiet.pth", progress=False)
    assert capsys.readouterr().err == ""


def test_truncated_download_is_refused_then_resumed_with_range(server, tmp_path):
    data = blob(2 * MB)
    url = server.add("model.pth", data)
    dest = tmp_path / "cache" / "model.pth"
    server.truncate_at = 700_000  # Content-Length says 2 MiB, the connection closes after 700 kB
    with pytest.raises(IncompleteDownloadError) as err:
        fetch(url, dest, progress=False)
    assert f"ended at 700000 of {len(data)} bytes" in one_line(err)
    assert not dest.exists() and not record_path(dest).exists()
    assert part_path(dest).stat().st_size == 700_000

    server.truncate_at = None
    assert fetch(url, dest, progress=False) == sha256_of(data)
    assert dest.read_bytes() == data
    resumed = server.requests[-1]
    assert (resumed.range, resumed.if_range, resumed.status) == ("bytes=700000-", server.etag(data), 206)
    assert resumed.sent == len(data) - 700_000
    assert files_in(dest.parent) == ["model.pth", "model.pth.json"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = blob(2 * MB, seed=7)
    url = server.add("model.pth", data)
    dest = tmp_path / "model.pth"
    server.truncate_at = 500_000
    with pytest.raises(IncompleteDownloadError):
        fetch(url, dest, progress=False)
    server.truncate_at, server.honour_range = None, False
    fetch(url, dest, progress=False)
    assert dest.read_bytes() == data  # the whole file once, not the kept part + the whole file
    last = server.requests[-1]
    assert last.range == "bytes=500000-" and last.status == 200 and last.sent == len(data)


def test_file_changed_on_the_server_restarts_instead_of_splicing(server, tmp_path):
    old, new = blob(MB, seed=1), blob(MB, seed=2)
    url = server.add("model.pth", old)
    dest = tmp_path / "model.pth"
    server.truncate_at = 300_000
    with pytest.raises(IncompleteDownloadError):
        fetch(url, dest, progress=False)
    server.files["model.pth"], server.truncate_at = new, None  # If-Range no longer matches
    fetch(url, dest, progress=False)
    assert dest.read_bytes() == new
    assert server.requests[-1].status == 200 and server.requests[-1].if_range == server.etag(old)


def test_hash_mismatch_is_refused_and_nothing_is_kept(server, zoo_env):
    data = tiny_swinir_bytes()
    name = zoo_env.write_preset("test-pinned", url=server.add("tiny.safetensors", data), sha256="ab" * 32)
    with pytest.raises(ChecksumError) as err:
        load_model(name)
    message = one_line(err)
    assert sha256_of(data)[:16] in message and "nothing was kept" in message
    assert files_in(zoo_env.models) == []


def test_pinned_hash_is_checked_and_accepted(server, zoo_env):
    data = tiny_swinir_bytes()
    name = zoo_env.write_preset("test-pinned", url=server.add("tiny.safetensors", data), sha256=sha256_of(data))
    assert zoo.checkpoint_path(name, progress=False).read_bytes() == data
    (zoo_env.models / "tiny.safetensors").write_bytes(tiny_swinir_bytes(seed=5))  # replaced behind our back
    with pytest.raises(ChecksumError, match="delete it to download it again"):
        zoo.checkpoint_path(name)


def test_hash_recorded_at_first_download_detects_a_tampered_file(server, zoo_env):
    data = tiny_swinir_bytes()
    name = zoo_env.write_preset("test-tofu", url=server.add("tiny.safetensors", data))
    path = zoo.checkpoint_path(name, progress=False)
    assert json.loads(record_path(path).read_text())["sha256"] == sha256_of(data)
    tampered = bytearray(data)
    tampered[-1] ^= 0xFF  # same size, one byte different
    path.write_bytes(bytes(tampered))
    with pytest.raises(ChecksumError) as err:
        load_model(name)
    assert "changed since its sha256 was recorded" in one_line(err) and str(path) in str(err.value)
    assert len(server.requests) == 1  # refused, not silently downloaded again


def test_offline_and_not_cached_says_which_url_and_where(zoo_env):
    url = refusing_url("tiny.safetensors")
    name = zoo_env.write_preset("test-offline", url=url)
    with pytest.raises(DownloadError) as err:
        load_model(name)
    message = one_line(err)
    assert f"fetch {url} and save it as {zoo_env.models / 'tiny.safetensors'}" in message
    assert "refused" in message.lower()
    assert files_in(zoo_env.models) == []


def test_manual_download_then_hash_recorded_at_first_use(server, zoo_env):
    page = "https://example.org/share/uformer-weights"
    name = zoo_env.write_preset("test-manual", page=page)
    dest = zoo_env.models / "tiny.safetensors"
    with pytest.raises(zoo.ManualDownloadError) as err:
        load_model(name)
    assert f"open {page}" in one_line(err) and f"save it as {dest}" in str(err.value)

    dest.parent.mkdir(parents=True)
    dest.write_bytes(tiny_swinir_bytes())  # what the user does by hand
    assert load_model(name).info.scale == 2
    assert json.loads(record_path(dest).read_text())["sha256"] == sha256_of(dest.read_bytes())
    dest.write_bytes(tiny_swinir_bytes(seed=3))
    with pytest.raises(ChecksumError):
        load_model(name)


def test_redirects_are_followed_and_keep_the_range(server, tmp_path):
    data = blob(MB, seed=3)
    server.add("model.pth", data)
    url = server.redirect_url("model.pth")  # like GitHub release URLs
    dest = tmp_path / "model.pth"
    server.truncate_at = 400_000
    with pytest.raises(IncompleteDownloadError):
        fetch(url, dest, progress=False)
    server.truncate_at = None
    fetch(url, dest, progress=False)
    assert dest.read_bytes() == data
    hop, final = server.requests[-2:]
    assert hop.status == 302 and final.status == 206 and final.range == "bytes=400000-"


def test_http_error_is_one_clear_line(server, tmp_path):
    url = server.url("absent.pth")
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "absent.pth", progress=False)
    assert "HTTP 404" in one_line(err) and url in str(err.value)
    assert files_in(tmp_path) == []


def test_a_silent_server_times_out(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/files/model.pth"
        with pytest.raises(DownloadError) as err:
            fetch(url, tmp_path / "model.pth", progress=False, timeout=0.5)
    assert "timed out" in one_line(err)


def test_concurrent_downloads_of_one_file_fetch_it_once(server, tmp_path):
    data = blob(2 * MB, seed=9)
    url = server.add("model.pth", data)
    dest = tmp_path / "model.pth"
    digests, errors = [], []

    def worker():
        try:
            digests.append(fetch(url, dest, progress=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and digests == [sha256_of(data)] * 3
    assert len(server.requests) == 1 and dest.read_bytes() == data


def test_a_checkpoint_carrying_code_is_refused_after_download(server, zoo_env, tmp_path):
    marker = tmp_path / "payload-ran"
    data = torch_bytes({"params": {"weight": CodePayload(marker)}})
    name = zoo_env.write_preset("test-pickle", file="evil.pth", url=server.add("evil.pth", data))
    with pytest.raises(CheckpointError) as err:
        load_model(name)
    assert "contains pickled code" in one_line(err)
    assert not marker.exists()


def test_verify_cached_records_then_checks(tmp_path):
    path = tmp_path / "manual.pth"
    path.write_bytes(blob(1000))
    digest = verify_cached(path)
    assert json.loads(record_path(path).read_text())["sha256"] == digest == sha256_of(path.read_bytes())
    assert verify_cached(path) == digest
    os.truncate(path, 999)
    with pytest.raises(ChecksumError):
        verify_cached(path)
    record_path(path).write_text("{not json")
    with pytest.raises(ChecksumError, match="unreadable"):
        verify_cached(path)


# -- where a download may go, and how much it may bring --------------------------------------------


# "Another host" in these tests is 0.0.0.0:9, not in the allowed list: were the check ever broken,
# the connection would still stay on this machine (and be refused), never leave it.
@pytest.mark.parametrize("location", ["http://0.0.0.0:9/files/model.pth", "ftp://127.0.0.1/model.pth",
                                      "file:///etc/passwd"])
def test_a_redirect_off_https_is_refused_before_it_is_followed(server, tmp_path, location):
    """http is only for this machine; a redirect to plain http elsewhere (or another scheme) is not
    followed: no connection is made to it."""
    server.add("model.pth", blob(MB))
    server.redirect_to["model.pth"] = location
    with pytest.raises(UnsafeDownloadError) as err:
        fetch(server.redirect_url("model.pth"), tmp_path / "model.pth", progress=False, timeout=5)
    assert "only https URLs are followed" in one_line(err) and location in str(err.value)
    assert [r.status for r in server.requests] == [302], "nothing fetched after the hop"
    assert files_in(tmp_path) == []


def test_plain_http_to_another_host_is_refused_without_connecting(tmp_path):
    with pytest.raises(UnsafeDownloadError, match="only https URLs are followed"):
        fetch("http://0.0.0.0:9/files/model.pth", tmp_path / "model.pth", progress=False, timeout=5)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("declared", [True, False])
def test_a_download_over_the_size_cap_is_refused_and_nothing_kept(server, tmp_path, monkeypatch, declared):
    """Refused from the Content-Length, or, for a server that does not declare one, as soon as the body
    passes the cap (it is not read to the end)."""
    monkeypatch.setenv("NYSTRA_MAX_DOWNLOAD_MB", "1")
    server.add("big.pth", blob(3 * MB))
    server.omit_length = not declared
    with pytest.raises(UnsafeDownloadError) as err:
        fetch(server.url("big.pth"), tmp_path / "big.pth", progress=False)
    assert "over the 1 MB cap" in one_line(err) and "NYSTRA_MAX_DOWNLOAD_MB" in str(err.value)
    assert files_in(tmp_path) == []
    monkeypatch.setenv("NYSTRA_MAX_DOWNLOAD_MB", "4")
    server.omit_length = False
    fetch(server.url("big.pth"), tmp_path / "big.pth", progress=False)
    assert (tmp_path / "big.pth").stat().st_size == 3 * MB
