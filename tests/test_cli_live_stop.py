"""Stopping a live run (issue 14, acceptance 6): Ctrl-C or SIGTERM is its normal end — the frames in
flight are finished, the output finalised, exit 0 within 2 s — and even `kill -9` leaves a playable
recording of what was encoded (the file is written fragmented and flushed as it goes)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

LIVE = "lavfi:testsrc2=size=64x48:rate=10"


def _start(output: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", LIVE, str(output), "--task", "denoise",
                             "--workers", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _wait_for_frames(folder: Path, at_least: int = 10, timeout: float = 60) -> Path:
    """The recording in progress, once it holds ``at_least`` decodable frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for partial in folder.glob(".out.partial-*"):
            try:
                if _frames(partial) >= at_least:
                    return partial
            except (av.FFmpegError, OSError):
                pass
        time.sleep(0.3)
    raise AssertionError("the recording never grew")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_live_run_cleanly(tmp_path: Path, sig):
    out = tmp_path / "out.mkv"
    run = _start(out)
    try:
        _wait_for_frames(tmp_path)
        sent = time.monotonic()
        run.send_signal(sig)
        code = run.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if run.poll() is None:
            run.kill()
    assert code == 0, run.stderr.read()
    print(f"stopped in {took:.2f} s")
    assert took < 2.0, took
    assert _frames(out) >= 10
    assert list(tmp_path.glob(".out.partial-*")) == []


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_kill_9_leaves_a_playable_recording(tmp_path: Path, suffix: str):
    run = _start(tmp_path / f"out{suffix}")
    try:
        partial = _wait_for_frames(tmp_path, at_least=15)
        run.kill()
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == -signal.SIGKILL
    assert not (tmp_path / f"out{suffix}").exists()
    assert _frames(partial) >= 15, "everything encoded before the kill is there and decodes"
