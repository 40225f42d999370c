"""The CLI on live and pipe inputs: one line and the documented exit code when they fail,
and no hang on a silent peer."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

ROOT = Path(__file__).resolve().parents[1]
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program")
CLI = [sys.executable, "-m", "streamer.cli"]


def cli(*args, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("nystra-stream: error: ")
    return lines[0]


def count_frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


class SilentServer:
    """A TCP server that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_reconnect_0_fails_at_once_with_one_line(tmp_path):
    server = SilentServer()
    try:
        t0 = time.monotonic()
        proc = cli(f"tcp://127.0.0.1:{server.port}", tmp_path / "out.mkv", "--task", "denoise",
                   "--stall-timeout", "1", "--reconnect", "0")
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "stalled: nothing received for 1 s" in line and "--reconnect 0" in line
    assert len(server.accepted) == 1 and elapsed < 30
    assert not list(tmp_path.iterdir())


def test_srt_without_libsrt_is_one_line(tmp_path):
    proc = cli("srt://127.0.0.1:9000", tmp_path / "out.mkv", "--task", "denoise")
    if proc.returncode == 0:
        pytest.skip("this PyAV build has libsrt")
    assert proc.returncode == 2
    assert "cannot open srt://" in one_error_line(proc.stderr) and "libsrt" in proc.stderr


@pytest.mark.skipif("v4l2" in av.formats_available, reason="this PyAV build has v4l2")
def test_webcam_without_v4l2_is_one_line(tmp_path):
    proc = cli("webcam:0", tmp_path / "out.mkv", "--task", "denoise", "--input-size", "640x480")
    assert proc.returncode == 2
    assert "has no v4l2 input" in one_error_line(proc.stderr)


def test_a_fifo_with_no_writer_does_not_hang(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    proc = cli(fifo, tmp_path / "out.mkv", "--task", "denoise", "--stall-timeout", "1")
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 2
    assert "nothing arrived for 1 s (no writer yet?)" in one_error_line(proc.stderr)


@needs_ffmpeg
@pytest.mark.parametrize("how", ["stdin", "fifo"])
def test_stream_through_a_pipe(tmp_path, how):
    writer_args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                   "testsrc2=size=64x48:rate=25", "-frames:v", "12", "-c:v", "ffv1", "-f", "nut"]
    out = tmp_path / "out.mkv"
    if how == "stdin":
        writer = subprocess.Popen([*writer_args, "-"], stdout=subprocess.PIPE)
        try:
            proc = cli("-", out, "--task", "denoise", "--workers", "0", stdin=writer.stdout)
        finally:
            writer.stdout.close()
            writer.kill()
            writer.wait(10)
    else:
        fifo = tmp_path / "in.fifo"
        os.mkfifo(fifo)
        writer = subprocess.Popen([*writer_args, "-y", str(fifo)])
        try:
            proc = cli(fifo, out, "--task", "denoise", "--workers", "0")
        finally:
            writer.kill()
            writer.wait(10)
    assert proc.returncode == 0, proc.stderr
    assert count_frames(out) == 12
