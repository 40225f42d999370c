"""Every awkward input of the corpus (tests/corpus/generate.py) through the CLI: the promised exit
code, one error line (and nothing written) for what cannot be restored, and for what can, a playable
output with as many frames as FFmpeg itself decodes."""
from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from corpus.generate import CASES, Case, ffprobe_frames, ffprobe_video

pytestmark = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
                                reason="the corpus is made with the ffmpeg program")


def _limit_memory() -> None:   # so that "huge-header" meets a limit on any machine
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case: Case, tmp_path: Path):
    source = case.make(tmp_path)
    out = tmp_path / "out" / "restored.mkv"
    out.parent.mkdir()
    run = subprocess.run([sys.executable, "-m", "streamer.cli", str(source), str(out), "--task", "denoise",
                          "--workers", "0", "-q"], capture_output=True, text=True, timeout=120,
                         preexec_fn=_limit_memory, stdin=subprocess.DEVNULL)
    expect = case.expect
    lines = run.stderr.strip().splitlines()
    assert run.returncode == expect.code, run.stderr
    if expect.code != 0:
        assert len(lines) == 1 and lines[0].startswith("nystra-stream: error: "), lines
        assert expect.error in lines[0], lines
        assert list(out.parent.iterdir()) == [], "nothing written"
        return
    assert all(not line.startswith("nystra-stream: error") for line in lines), lines
    assert "Traceback" not in run.stderr
    if expect.warning:
        assert any(expect.warning in line for line in lines), lines
    with av.open(str(out)) as container:
        decoded = sum(1 for _ in container.decode(container.streams.video[0]))
    if expect.audio_seconds is not None:
        with av.open(str(out)) as container:
            audio = container.streams.audio[0]
            last = max(p.pts + p.duration for p in container.demux(audio) if p.pts is not None)
        assert float(last * audio.time_base) >= expect.audio_seconds
    wanted = ffprobe_frames(source) if expect.frames == "ffprobe" else expect.frames
    assert wanted and decoded == wanted
    written = ffprobe_video(out)
    if expect.pix_fmt:
        assert written["pix_fmt"] == expect.pix_fmt, written
    if expect.color_trc:
        assert written.get("color_transfer") == expect.color_trc, written
