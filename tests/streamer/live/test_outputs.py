"""Live writing for any input (issue 14, outputs): with --live-output a FILE input's recording is
written fragmented / flushed as it goes, so `kill -9` leaves every frame encoded so far playable.
(Live inputs get this by default: tests/test_cli_live_stop.py.)"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg program")


def _long_clip(path: Path, frames: int = 3000) -> Path:
    # Long enough that the run is still going when it is killed (the machine may be fast).
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=25",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-y", str(path)],
                   check=True, timeout=120)
    return path


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_kill_9_with_live_output_leaves_a_playable_recording(tmp_path: Path, suffix: str):
    source = _long_clip(tmp_path / "in.mkv")
    out = tmp_path / f"out{suffix}"
    run = subprocess.Popen([sys.executable, "-m", "streamer.cli", str(source), str(out), "--task", "denoise",
                            "--workers", "0", "--live-output", "-q"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = None
    try:
        deadline = time.monotonic() + 90
        while partial is None and time.monotonic() < deadline and run.poll() is None:
            for candidate in tmp_path.glob(".out.partial-*"):
                try:
                    if _frames(candidate) >= 15:
                        partial = candidate
                except (av.FFmpegError, OSError):
                    pass
            time.sleep(0.3)
        assert partial is not None, f"the recording never became playable mid-run ({run.poll()})"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL
    assert not out.exists()
    written = _frames(partial)
    assert 15 <= written < 3000, written


@pytest.mark.parametrize("live", [True, False], ids=["live", "not-live"])
def test_a_live_sink_file_is_playable_before_it_is_closed(tmp_path: Path, live: bool):
    """API level: VideoSink(live=True) for a file input's info writes a fragmented, flushed MP4 that
    decodes while still open; the ordinary one (index at the end) does not until closed."""
    from fractions import Fraction

    import numpy as np

    from streamer.frames import Frame, VideoInfo
    from streamer.sinks import VideoSink, partial_files

    info = VideoInfo(width=64, height=48, time_base=Fraction(1, 25), average_rate=Fraction(25))
    assert not info.live
    out = tmp_path / "out.mp4"
    sink = VideoSink(str(out), info, 64, 48, live=live)
    try:
        for i in range(60):   # a keyframe every 25 frames when live: two fragments closed
            sink.write(Frame(i, i, info.time_base, np.full((48, 64, 3), (9 * i) % 256, np.uint8)))
        (partial,) = partial_files(str(out))
        try:
            written = _frames(Path(partial))
        except (av.FFmpegError, OSError):
            written = 0
    finally:
        sink.abort()
    if live:
        assert written >= 25, written
    else:
        assert written == 0
