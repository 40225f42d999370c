"""--frames N and --duration S end any run cleanly, and a video model's clip is part of a live
latency budget (issue 14)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import pytest

import streamer
from streamer.errors import UsageError
from toy_models import Identity, VideoIdentity

LIVE = "lavfi:testsrc2=size=64x48:rate=20"


def _times(path: Path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return [float(Fraction(f.pts) * st.time_base) for f in c.decode(st)]


def test_frames_ends_a_file_run_and_its_audio_with_it(clip_factory, tmp_path: Path):
    clip = clip_factory(frames=12, audio=True)
    out = tmp_path / "out.mkv"
    stats = streamer.run(clip.path, out, model=Identity(), workers=0, frames=5)
    assert stats.completed and stats.frames_out == 5 == len(_times(out))
    with av.open(str(out)) as c:
        audio = c.streams.audio[0]
        end = max(float((p.pts + p.duration) * audio.time_base) for p in c.demux(audio) if p.pts is not None)
    assert end < 5 / clip.fps + 0.1, "the audio ends with the video"


def test_duration_ends_a_live_run(tmp_path: Path):
    out = tmp_path / "out.mkv"
    stats = streamer.run(LIVE, out, model=Identity(), workers=0, duration=2, drop="none")
    times = _times(out)
    assert stats.completed and stats.live
    assert 1.9 <= times[-1] - times[0] + 1 / 20 <= 2.05 and len(times) == 40


def test_a_live_budget_below_a_clip_is_refused_with_the_minimum(tmp_path: Path):
    with pytest.raises(UsageError, match=r"--max-latency 100 is below .* give at least 200 ms"):
        streamer.run(LIVE, tmp_path / "out.mkv", model=VideoIdentity(), workers=0, max_latency=100, frames=8)
    assert not (tmp_path / "out.mkv").exists()
