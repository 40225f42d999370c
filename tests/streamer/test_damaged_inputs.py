"""Damaged and unusual inputs (issue 16): what FFmpeg can decode is restored, what it cannot is
skipped and counted, the timeline keeps its gaps; a file whose only picture is cover art is not
a video. The damaged files are made here: a real H.264 MP4 encoded with PyAV, then re-muxed with
some packets' bytes replaced by garbage (the kind of damage a bad sector or a lost chunk leaves).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import List, Sequence

import av
import numpy as np
import pytest

from corpus.generate import declare_huge_frames
from streamer import cli
from streamer.sources import BYTES_PER_PIXEL_AT_PEAK, open_source

FRAMES = 48


def _encode_h264(path: Path, frames: int = FRAMES, size=(96, 64)) -> None:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=24, options={"g": "8", "bf": "0"})
        st.width, st.height, st.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), (i * 5) % 256, np.uint8)
            image[:, : 8 + i] = rng.integers(0, 255, (size[1], 8 + i, 3), dtype=np.uint8)
            for packet in st.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)


def _damage(src: Path, dst: Path, packets: Sequence[int]) -> None:
    """``src`` re-muxed into ``dst`` with the payload of the given video packets (by decode order)
    replaced by random bytes of the same length."""
    rng = random.Random(7)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        for n, packet in enumerate(p for p in inp.demux(ist) if p.size):
            if n in packets:
                garbage = av.Packet(bytes(rng.randrange(256) for _ in range(packet.size)))
                garbage.pts, garbage.dts, garbage.time_base = packet.pts, packet.dts, packet.time_base
                garbage.is_keyframe = packet.is_keyframe
                packet = garbage
            packet.stream = ost
            out.mux(packet)


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    good = tmp_path / "good.mp4"
    _encode_h264(good)
    bad = tmp_path / "damaged.mp4"
    _damage(good, bad, packets=(27, 28, 35))
    return bad


def _ffprobe_pts(path: Path) -> List[int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "frame=best_effort_timestamp", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [f["best_effort_timestamp"] for f in json.loads(out)["frames"]]


def _our_pts_seconds(path: Path) -> List[Fraction]:
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return sorted(Fraction(f.pts) * st.time_base for f in c.decode(st))


def test_a_damaged_file_decodes_what_ffmpeg_decodes_and_counts_the_rest(damaged):
    with open_source(str(damaged)) as source:
        frames = list(source)
    assert source.decode_errors >= 1, "the garbage packets did not decode"
    assert len(frames) < FRAMES
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)
    if shutil.which("ffprobe"):
        assert len(frames) == len(_ffprobe_pts(damaged)), "the same frames as FFmpeg itself decodes"


def test_the_cli_restores_a_damaged_file_keeping_the_gap(damaged, tmp_path, caplog):
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    code = cli.main([str(damaged), str(out), "--task", "denoise", "--workers", "0", "--codec", "ffv1",
                     "--stats", str(stats), "-q"])
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "skipped" in warnings[0], warnings
    report = json.loads(stats.read_text())
    assert report["decode_errors"] >= 1
    assert report["frames_out"] == report["frames_in"] < FRAMES
    with av.open(str(damaged)) as c:
        st = c.streams.video[0]
        expected = sorted(Fraction(f.pts) * st.time_base for f in open_source(str(damaged)))
    got = _our_pts_seconds(out)
    assert len(got) == len(expected)
    assert max(abs(float(a - b)) for a, b in zip(got, expected)) < 0.001, "every frame at its own time: the lost ones leave a gap, not a shift"
    steps = np.diff([float(t) for t in got])
    assert steps.max() > 1.5 * np.median(steps), "there is a gap where the damage was"


def test_too_many_decode_errors_stop_with_one_line(damaged, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = cli.main([str(damaged), str(out), "--task", "denoise", "--workers", "0", "--max-decode-errors", "0",
                     "-q"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed to decode" in err[0] and "--max-decode-errors" in err[0], err
    assert list(tmp_path.glob("out*")) == []


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs the ffmpeg program")
def test_an_mp3_with_a_cover_picture_is_not_a_video(tmp_path, capsys):
    cover, song = tmp_path / "cover.png", tmp_path / "song.mp3"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1",
                    str(cover)], check=True, timeout=60)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", "-i", str(cover),
                    "-map", "0:a", "-map", "1:v", "-c:v", "png", "-disposition:v", "attached_pic",
                    "-id3v2_version", "3", str(song)], check=True, timeout=60)
    code = cli.main([str(song), str(tmp_path / "out.mp4"), "--task", "denoise", "-q"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"nystra-stream: error: no video stream in {song} (only a cover picture)"] or \
        (len(err) == 1 and err[0].endswith("(only a cover picture)")), err
    assert not (tmp_path / "out.mp4").exists()


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_a_header_declaring_huge_frames_is_refused_with_the_memory_it_needs(tmp_path):
    huge = tmp_path / "huge.mkv"
    declare_huge_frames(huge, 16000)
    run = subprocess.run([sys.executable, "-m", "streamer.cli", str(huge), str(tmp_path / "out.mp4"), "--task",
                          "denoise", "-q"], preexec_fn=_limit_memory, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "declares 16000x16000 frames" in lines[0] and "GiB" in lines[0], lines
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.slow
def test_an_8k_input_restores_with_bounded_memory(tmp_path):
    src = tmp_path / "8k.mkv"
    with av.open(str(src), "w") as out:
        st = out.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        st.width, st.height, st.pix_fmt = 7680, 4320, "yuv420p"
        ramp = np.linspace(0, 200, 7680, dtype=np.uint8)[None, :, None].repeat(4320, 0).repeat(3, 2)
        for _ in range(2):
            for packet in st.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(ramp), format="rgb24")):
                out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    # A fresh process, so that its peak RSS is this run's alone.
    code = ("import json, sys, streamer; from toy_models import Brighten; "
            "s = streamer.run(sys.argv[1], sys.argv[2], model=Brighten(), workers=0, preset='ultrafast'); "
            "print(json.dumps(s.to_dict()))")
    run = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "out.mkv")], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    assert stats["frames_out"] == 2
    # Tiled by default: the peak is decoded frames and the float canvas, within what the
    # refusal rule assumes (BYTES_PER_PIXEL_AT_PEAK; measured 2.3 GB here).
    assert stats["peak_rss_mb"] < 7680 * 4320 * BYTES_PER_PIXEL_AT_PEAK / 2**20, stats["peak_rss_mb"]
