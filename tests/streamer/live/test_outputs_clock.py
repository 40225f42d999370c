"""The always-on output clock (streamer/live/clocked.py): frames fed with a pause to a real
VideoSink; the clock fills the pause with repeats of the last frame, then "no signal" frames,
and every written timestamp is greater than the one before."""
from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.errors import ProcessingError
from streamer.frames import Frame, VideoInfo
from streamer.live.clocked import ClockedWriter, no_signal_image
from streamer.sinks import VideoSink

RATE = 20
H, W = 48, 64


def _picture(i: int) -> np.ndarray:
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :, 0] = 60 + 10 * i           # a red level per frame, far from the stub's grey
    image[:, :, 1] = 250
    return image


def _decoded(path: Path):
    with av.open(str(path)) as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def test_a_pause_is_filled_with_repeats_then_no_signal(tmp_path: Path):
    info = VideoInfo(width=W, height=H, time_base=Fraction(1, 1000), average_rate=Fraction(RATE))
    out = tmp_path / "out.mkv"
    sink = VideoSink(str(out), info, W, H)
    clock = ClockedWriter(sink, info.average_rate, stub_after=0.5)
    for i in range(5):
        clock.write(Frame(i, i * 50, info.time_base, _picture(i)))
    time.sleep(1.5)                          # the source is away: 1 s of repeats+stub at 20 fps
    for i in range(5, 10):
        clock.write(Frame(i, i * 50, info.time_base, _picture(i)))
    clock.close()

    assert clock.frames_new == 10
    assert clock.frames_repeated >= 4 and clock.frames_stub >= 4, (clock.frames_repeated, clock.frames_stub)
    frames = _decoded(out)
    assert len(frames) == clock.frames_new + clock.frames_repeated + clock.frames_stub
    pts = [p for p, _ in frames]
    assert all(b > a for a, b in zip(pts, pts[1:])), pts
    stub = no_signal_image(H, W).astype(int)
    kinds = []
    for _, image in frames:
        if np.abs(image.astype(int) - stub).mean() < 8:
            kinds.append("stub")
        else:
            kinds.append(round((int(np.median(image[:, :, 0])) - 60) / 10))
    # New frames in order, the last one before the pause repeated, then the stub, then the rest.
    first_stub = kinds.index("stub")
    assert kinds[:5] == [0, 1, 2, 3, 4]
    assert set(kinds[5:first_stub]) == {4} and first_stub - 5 >= 4
    after = kinds[first_stub:]
    back = next(i for i, k in enumerate(after) if k != "stub")
    assert after[back:] == [5, 6, 7, 8, 9]
    # The pause lasts in the timeline as long as it did on the clock (1.5 s, give or take load).
    seconds = (pts[-1] - pts[0]) * float(Fraction(1, 1000))
    assert 1.5 <= seconds <= 4.0, seconds


def test_a_fast_producer_is_paced_to_the_clock(tmp_path: Path):
    info = VideoInfo(width=W, height=H, time_base=Fraction(1, RATE), average_rate=Fraction(RATE))
    sink = VideoSink(str(tmp_path / "out.ts"), info, W, H)
    clock = ClockedWriter(sink, info.average_rate, stub_after=5)
    started = time.monotonic()
    for i in range(20):                      # 1 s of video handed over as fast as possible
        clock.write(Frame(i, i, info.time_base, _picture(i % 10)))
    clock.close()
    assert time.monotonic() - started >= 0.8     # paced, not written at once
    assert clock.frames_new == 20 and clock.frames_repeated == 0 and clock.frames_stub == 0


def test_a_sink_error_reaches_the_producer(tmp_path: Path):
    info = VideoInfo(width=W, height=H, time_base=Fraction(1, RATE), average_rate=Fraction(RATE))
    sink = VideoSink(str(tmp_path / "out.mkv"), info, W, H)
    clock = ClockedWriter(sink, info.average_rate)
    clock.write(Frame(0, 0, info.time_base, np.zeros((H + 2, W, 3), np.uint8)))   # wrong size
    with pytest.raises(ProcessingError, match="expected a 48x64x3"):
        for i in range(50):
            clock.write(Frame(i, i, info.time_base, _picture(0)))
            time.sleep(0.02)
        clock.close()
    clock.abort()
    assert not (tmp_path / "out.mkv").exists()
