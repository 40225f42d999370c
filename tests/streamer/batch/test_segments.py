"""Segment-parallel jobs (issue 15, acceptance 4, per-frame models): one video cut at keyframes into
4 pieces restored at once and joined gives the single-process output — frames bit for bit with FFV1,
every timestamp, the source's audio packets — and an interrupted job keeps the pieces it finished."""
from __future__ import annotations

import json
import os
import subprocess
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import cli
from streamer.batch import segments
from streamer.batch.command import _split
from streamer.batch.plan import Task
from streamer.ranges import FrameIndex


def _film(path: Path, seconds: float = 4, gop: int = 12) -> None:
    rng = np.random.default_rng(9)
    frames = int(seconds * 24)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24, options={"g": str(gop)})
        video.width, video.height, video.pix_fmt = 80, 48, "yuv420p"
        audio = out.add_stream("aac", rate=48000)
        samples = (np.sin(np.arange(int(48000 * seconds)) / 20) * 0.3).astype(np.float32)
        for i in range(frames):
            image = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
            for p in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(p)
        for p in video.encode():
            out.mux(p)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 48000, start
            for p in audio.encode(chunk):
                out.mux(p)
        for p in audio.encode():
            out.mux(p)


def _video(path: Path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        frames = [(Fraction(f.pts) * st.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(st)]
    return [t for t, _ in frames], [a for _, a in frames]


def _audio_packets(path: Path):
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        return [(bytes(p), Fraction(p.pts) * st.time_base) for p in c.demux(st) if p.size]


@pytest.fixture
def film(tmp_path: Path) -> Path:
    path = tmp_path / "film.mp4"
    _film(path)
    return path


def test_plan_cuts_at_keyframes_into_pieces_of_about_equal_duration(film: Path):
    index = FrameIndex.scan(str(film))
    plans = segments.plan_segments(str(film), 4)
    assert len(plans) == 4 and plans[0].start == 0 and plans[-1].end == 96
    assert all(a.end == b.start for a, b in zip(plans, plans[1:]))
    assert all(p.start in index.keyframes for p in plans)
    gap = max(b - a for a, b in zip(index.keyframes, index.keyframes[1:] + (96,)))
    assert all(abs(len(p.frames) - 24) <= gap for p in plans), "about equal duration"
    many = segments.plan_segments(str(film), 1000)
    assert len(many) == len(index.keyframes) and all(len(p.frames) > 0 for p in many)


@pytest.mark.slow
@pytest.mark.parametrize("codec,suffix", [("ffv1", ".mkv"), ("libx264", ".mp4")])
def test_four_segments_equal_one_pass(film: Path, tmp_path: Path, codec: str, suffix: str):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"defaults: {{task: denoise, codec: {codec}, workers: 0}}\njobs:\n"
                    f"  - {{name: whole, input: film.mp4, output: whole{suffix}}}\n"
                    f"  - {{name: split, input: film.mp4, output: split{suffix}, segments: 4}}\n")
    report = tmp_path / "report.json"
    assert cli.main(["batch", str(jobs), "--jobs", "2", "--report", str(report), "-q"]) == 0
    entries = {e["name"]: e for e in json.loads(report.read_text())["jobs"]}
    assert entries["split"]["worker"] == "4 segments" and entries["split"]["frames_out"] == 96
    whole_t, whole_f = _video(tmp_path / f"whole{suffix}")
    split_t, split_f = _video(tmp_path / f"split{suffix}")
    source_t, _ = _video(film)
    assert split_t == whole_t, "every timestamp as in one pass"
    # ... and the source's spacing (Matroska stores ms, and shifts all streams when the source's
    # audio starts before 0, as AAC priming does, in one pass too)
    assert max(abs(float((a - split_t[0]) - (b - source_t[0]))) for a, b in zip(split_t, source_t)) < 0.001
    if codec == "ffv1":
        assert all(np.array_equal(a, b) for a, b in zip(whole_f, split_f)), "bit for bit"
    else:
        assert len(split_f) == len(whole_f) == 96
    assert [b for b, _ in _audio_packets(tmp_path / f"split{suffix}")] == [b for b, _ in _audio_packets(film)], \
        "the source's audio packets"
    assert _audio_packets(tmp_path / f"split{suffix}") == _audio_packets(tmp_path / f"whole{suffix}")
    assert not (tmp_path / f".split{suffix}.parts").exists(), "parts removed once joined"


def test_an_interrupted_job_keeps_its_finished_pieces(film: Path, tmp_path: Path):
    output = str(tmp_path / "out.mkv")
    task = Task("film", str(film), output, {"task": "denoise"}, segments=4)
    pieces, whole = _split([task], jobs=1)
    assert len(pieces) == len(whole["film"]) == 4
    os.makedirs(segments.parts_dir(output), exist_ok=True)
    for done in (0, 2):   # as if those two had finished before the interruption
        Path(segments.part_path(output, done)).write_bytes(b"done")
    pieces, whole = _split([task], jobs=1)
    assert [p.name for p in pieces] == ["film#2", "film#4"]
    assert len(whole["film"]) == 4


def test_parts_of_a_changed_job_are_redone_not_joined(film: Path, tmp_path: Path):
    """Parts an interrupted run left are kept only for the same input, options and cuts."""
    output = str(tmp_path / "out.mkv")
    task = Task("film", str(film), output, {"task": "denoise"}, segments=4)
    _split([task], jobs=1)
    Path(segments.part_path(output, 0)).write_bytes(b"done")
    assert [p.name for p in _split([task], jobs=1)[0]] == ["film#2", "film#3", "film#4"]   # same job: kept
    changed = Task("film", str(film), output, {"task": "denoise", "crf": 30}, segments=4)
    pieces, _ = _split([changed], jobs=1)
    assert [p.name for p in pieces] == ["film#1", "film#2", "film#3", "film#4"]
    assert not os.path.exists(segments.part_path(output, 0))
    Path(segments.part_path(output, 1)).write_bytes(b"done")
    recut = Task("film", str(film), output, {"task": "denoise", "crf": 30}, segments=2)
    assert [p.name for p in _split([recut], jobs=1)[0]] == ["film#1", "film#2"]   # other cuts: redone
    os.utime(film, ns=(1, 1))   # the input changed (as the manifest sees it)
    Path(segments.part_path(output, 0)).write_bytes(b"done")
    assert [p.name for p in _split([recut], jobs=1)[0]] == ["film#1", "film#2"]


@pytest.mark.slow
def test_a_clip_model_split_in_four_equals_one_pass(film: Path, tmp_path: Path):
    """A video model whose every output depends on its clip's neighbours: each piece decodes from
    the clip grid before it and a clip past its end (streamer.pipeline.Run._restrict), so the
    joined frames equal one pass's."""
    import streamer
    from toy_models import TemporalMean

    options = dict(workers=0, codec="ffv1", clip_len=6, clip_overlap=2, tile=0)
    whole = tmp_path / "whole.mkv"
    streamer.run(film, whole, model=TemporalMean(6), **options)
    parts = []
    for plan in segments.plan_segments(str(film), 4):
        part = tmp_path / f"part{plan.index}.nut"
        stats = streamer.run(film, part, model=TemporalMean(6), frame_range=plan.frames, copy_streams=False,
                             **options)
        assert stats.frames_out == len(plan.frames)
        parts.append(str(part))
    joined = tmp_path / "joined.mkv"
    segments.join_segments(str(film), parts, str(joined))
    whole_t, whole_f = _video(whole)
    joined_t, joined_f = _video(joined)
    assert joined_t == whole_t and len(joined_f) == 96
    assert all(np.array_equal(a, b) for a, b in zip(whole_f, joined_f)), "the same neighbours, the same frames"
