"""streamer.sources on real files made with PyAV/FFmpeg."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import streamer
from streamer.errors import ProcessingError, UsageError
from streamer.sources import PtsRepair, PyAVSource, open_source

REPO = Path(streamer.__file__).resolve().parent.parent


def test_reads_every_frame_with_pts_and_info(clip_factory, decode):
    clip = clip_factory(frames=7, width=48, height=32)
    ref = decode(clip.path)
    with open_source(str(clip.path)) as src:
        info = src.info
        frames = list(src)
    assert (info.width, info.height) == (48, 32)
    assert info.time_base == ref.time_base
    assert info.average_rate == Fraction(30)
    assert info.frames == 7
    assert info.duration == pytest.approx(7 / 30)
    assert info.codec_name == "h264" and info.pix_fmt == "yuv420p"
    assert info.has_audio
    assert src.path == str(clip.path)
    assert [f.index for f in frames] == list(range(7))
    assert [f.pts for f in frames] == ref.pts
    assert all(f.time_base == ref.time_base for f in frames)
    for got, want in zip(frames, ref.images):
        assert got.image.dtype == np.uint8 and got.image.shape == (32, 48, 3)
        np.testing.assert_array_equal(got.image, want)


def test_frames_resemble_what_was_encoded(clip_factory):
    # RGB order and colour conversion: the decoded frames are close to the encoder's input.
    clip = clip_factory(frames=3, width=64, height=48, crf=0, pix_fmt="yuv444p")  # no chroma loss
    with open_source(str(clip.path)) as src:
        images = np.stack([f.image for f in src])
    err = np.abs(images.astype(int) - clip.written.astype(int))
    assert err.mean() < 2.5
    swapped = np.abs(images[..., ::-1].astype(int) - clip.written.astype(int)).mean()
    assert swapped > 5 * err.mean()


def test_variable_frame_rate_pts_are_kept(clip_factory, decode):
    ticks = [0, 3, 4, 9, 10, 17]
    clip = clip_factory(frames=6, pts=ticks, time_base=Fraction(1, 90), audio=False)
    with open_source(str(clip.path)) as src:
        frames = list(src)
    seconds = [float(f.pts * f.time_base) for f in frames]
    assert seconds == pytest.approx([t / 90 for t in ticks], abs=1e-9)
    assert [f.pts for f in frames] == decode(clip.path).pts


def test_colour_tags_are_reported(clip_factory, bt709_tv):
    clip = clip_factory(frames=2, color=bt709_tv, audio=False)
    info = open_source(str(clip.path)).info
    assert (info.color_range, info.color_space, info.color_primaries, info.color_trc) == (1, 1, 1, 1)
    untagged = open_source(str(clip_factory(frames=2, audio=False).path)).info
    tags = (untagged.color_range, untagged.color_space, untagged.color_primaries, untagged.color_trc)
    assert tags == (None, None, None, None)


def test_missing_pts_are_synthesised(clip_factory, caplog):
    # A raw H.264 elementary stream carries no timestamps at all.
    clip = clip_factory(name="raw.h264", frames=5, audio=False)
    with caplog.at_level(logging.WARNING, logger="streamer.sources"):
        with open_source(str(clip.path)) as src:
            step = round(1 / (src.info.average_rate * src.info.time_base))
            pts = [f.pts for f in src]
    assert pts == [i * step for i in range(5)]
    assert step > 0
    assert "synthesised" in caplog.text


def test_pts_repair_keeps_good_pts_and_fixes_bad_ones():
    repair = PtsRepair(Fraction(1, 1000), Fraction(25))          # 40 ticks a frame
    assert [repair(p) for p in (0, 40, 95, None, 90, 300)] == [0, 40, 95, 135, 175, 300]
    assert repair.repaired == 2
    unknown_rate = PtsRepair(Fraction(1, 90), None)              # learns the step from the stream
    assert [unknown_rate(p) for p in (10, 13, None)] == [10, 13, 16]
    no_pts_at_all = PtsRepair(Fraction(1, 90000), None)             # assumes 30 fps until it learns
    assert [no_pts_at_all(None) for _ in range(3)] == [0, 3000, 6000]


def test_decoding_is_threaded_with_slice_threads(sample_clip):
    # Slice threads only: frame threads silently lose frames of damaged files (tests/corpus).
    with open_source(str(sample_clip.path)) as src:
        assert isinstance(src, PyAVSource)
        assert src._stream.codec_context.thread_type.name == "SLICE"
        assert src._stream.codec_context.thread_count != 1   # (0 = FFmpeg picks, per core)


def test_iterates_once_and_not_after_close(sample_clip):
    src = open_source(str(sample_clip.path))
    assert len(list(src)) == sample_clip.n_frames
    with pytest.raises(ProcessingError):
        list(src)
    src2 = open_source(str(sample_clip.path))
    src2.close()
    with pytest.raises(ProcessingError):
        iter(src2)


def _text_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _truncated(tmp_path: Path, clip_factory) -> Path:
    data = clip_factory(frames=4).path.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 3])     # the index (moov) is at the end: gone
    return path


BAD_INPUTS = {
    "missing": (lambda tmp, cf, audio: tmp / "nope.mp4", "not found"),
    "empty": (lambda tmp, cf, audio: _empty(tmp), "empty"),
    "text named .mp4": (lambda tmp, cf, audio: _text_mp4(tmp), "as a video file"),
    "audio only": (lambda tmp, cf, audio: audio, "no video stream"),
    "directory": (lambda tmp, cf, audio: tmp, "directory"),
    "truncated": (lambda tmp, cf, audio: _truncated(tmp, cf), "cut.mp4"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_bad_input_is_one_clear_line(case, decoder, tmp_path, clip_factory, audio_only_file, capfd):
    make, expected = BAD_INPUTS[case]
    path = make(tmp_path, clip_factory, audio_only_file)
    capfd.readouterr()
    with pytest.raises(UsageError) as err:
        open_source(str(path), decoder=decoder)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message
    assert err.value.exit_code == 2
    assert capfd.readouterr().err == ""        # no FFmpeg noise on the terminal


def test_unreadable_file_is_a_usage_error(sample_clip):
    """Permission denied, checked for real: as root (who can read anything) in a child process
    running as the unprivileged user ``nobody``."""
    work = Path(tempfile.mkdtemp(prefix="nystra-perm-"))
    try:
        work.chmod(0o755)
        locked = work / "locked.mp4"
        locked.write_bytes(sample_clip.path.read_bytes())
        locked.chmod(0)
        if os.geteuid() != 0:
            with pytest.raises(UsageError, match="permission denied"):
                open_source(str(locked))
            return
        # The interpreter lives under /root, so the child starts as root, imports everything,
        # then drops to nobody before opening the file.
        code = "\n".join([
            "import os, sys",
            "from streamer.errors import UsageError",
            "from streamer.sources import open_source",
            "os.setgid(65534)",
            "os.setuid(65534)",
            "try:",
            "    open_source(sys.argv[1])",
            "except UsageError as e:",
            "    print(e)",
            "    sys.exit(e.exit_code)",
        ])
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-c", code, str(locked)], cwd=str(REPO), env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "permission denied" in proc.stdout and proc.stdout.count("\n") == 1
        assert proc.stderr == ""
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


def test_unknown_decoder_and_live_specs_are_usage_errors(sample_clip):
    with pytest.raises(UsageError, match="unknown decoder"):
        open_source(str(sample_clip.path), decoder="opencv")
    with pytest.raises(UsageError, match="is a live input"):
        open_source("rtsp://127.0.0.1:8554/cam")
    with pytest.raises(UsageError, match="no input"):
        open_source("")


# --- decord ----------------------------------------------------------------------------------


def test_decord_reads_the_same_frames_and_pts(clip_factory, capfd):
    pytest.importorskip("decord")
    clip = clip_factory(frames=6, pts=[0, 3, 4, 9, 10, 17], time_base=Fraction(1, 90))
    with open_source(str(clip.path)) as ref:
        want = list(ref)
    capfd.readouterr()
    with open_source(str(clip.path), decoder="decord") as src:
        assert type(src).__name__ == "DecordSource"
        assert src.info == ref.info
        got = list(src)
    assert [f.pts for f in got] == [f.pts for f in want]
    assert [f.index for f in got] == list(range(6))
    for a, b in zip(got, want):
        assert a.image.shape == b.image.shape and a.image.dtype == np.uint8
        assert np.abs(a.image.astype(int) - b.image).mean() < 1.0
    assert capfd.readouterr().err == ""


def test_decord_falls_back_to_pyav_for_av1(clip_factory, caplog):
    # Runs with or without decord installed: the AV1 check comes first.
    clip = clip_factory(name="av1.mkv", frames=3, codec="libsvtav1", audio=False)
    with caplog.at_level(logging.WARNING, logger="streamer.sources"):
        with open_source(str(clip.path), decoder="decord") as src:
            assert isinstance(src, PyAVSource)
            assert src.info.codec_name in ("av1", "libdav1d")
            assert len(list(src)) == 3
    assert "decord cannot decode" in caplog.text and "PyAV" in caplog.text


def test_decord_missing_names_the_extra(sample_clip, monkeypatch):
    # A None entry in sys.modules makes `import decord` raise ImportError, as when not installed.
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(UsageError) as err:
        open_source(str(sample_clip.path), decoder="decord")
    assert "nystra-stream[decord]" in str(err.value) and "\n" not in str(err.value)
