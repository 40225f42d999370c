"""streamer.sinks: real encodes through PyAV, read back with PyAV."""
from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.errors import ProcessingError, UsageError
from streamer.frames import Frame
from streamer.encoding import encoder_options
from streamer.sinks import EncoderSettings, VideoSink, check_output_path
from streamer.sources import open_source


def copy_through(src_path: Path, out_path: Path, settings: EncoderSettings = EncoderSettings(),
                 audio: bool = True, stop_after: int | None = None) -> VideoSink:
    """Decode ``src_path`` and encode it unchanged (the identity 'restoration')."""
    with open_source(str(src_path)) as src:
        sink = VideoSink(str(out_path), src.info, src.info.width, src.info.height, settings,
                         streams_from=src.path if audio else None)
        with sink:
            for frame in src:
                if stop_after is not None and frame.index == stop_after:
                    break
                sink.write(frame)
    return sink


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-10)))


def test_round_trip_keeps_frames_rate_duration_and_audio(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=10, width=96, height=64)
    out = tmp_path / "out.mp4"
    sink = copy_through(clip.path, out)
    a, b = decode(clip.path), decode(out)
    assert sink.frames_written == 10 == len(b.images)
    assert (b.width, b.height) == (96, 64) and b.pix_fmt == "yuv420p" and b.codec_name == "h264"
    assert b.average_rate == a.average_rate == 30
    assert b.time_base == a.time_base
    assert b.pts == a.pts
    assert b.duration == pytest.approx(a.duration) and a.duration == pytest.approx(10 / 30, abs=1e-3)
    assert b.container_duration == pytest.approx(a.container_duration, abs=1e-3)
    # Audio copied, not re-encoded: the very same packets at the very same times.
    assert len(a.audio_packets) > 5
    assert b.audio_packets == a.audio_packets
    assert b.audio_time_base == a.audio_time_base
    # The pictures themselves survived the pass (and in RGB order).
    for x, y in zip(a.images, b.images):
        assert psnr(x, y) > 28      # a wrong or shifted frame scores ~10 on these pans
    assert psnr(a.images[3][..., ::-1], b.images[3]) < 20


def test_variable_frame_rate_timestamps_are_kept(clip_factory, decode, tmp_path):
    ticks = [0, 3, 4, 9, 10, 17, 18, 30]
    clip = clip_factory(frames=8, pts=ticks, time_base=Fraction(1, 90))
    out = tmp_path / "vfr_out.mp4"
    copy_through(clip.path, out)
    a, b = decode(clip.path), decode(out)
    assert len(b.images) == 8
    assert b.time_base == a.time_base
    assert b.pts == a.pts
    assert [p * b.time_base for p in b.pts] == [Fraction(t, 90) for t in ticks]
    assert b.audio_packets == a.audio_packets


@pytest.mark.parametrize("tags", [
    {"color_range": 1, "colorspace": 1, "color_primaries": 1, "color_trc": 1},   # bt709, tv range
    {"color_range": 2, "colorspace": 5, "color_primaries": 5, "color_trc": 6},   # bt601 (470bg), pc range
], ids=["bt709-tv", "bt601-pc"])
def test_colour_metadata_and_colours_are_kept(tags, clip_factory, decode, tmp_path):
    clip = clip_factory(frames=3, width=64, height=48, color=tags, audio=False, crf=4, pix_fmt="yuv444p")
    out = tmp_path / "colour.mkv"
    copy_through(clip.path, out, EncoderSettings(crf=4, pix_fmt="yuv444p"))
    a, b = decode(clip.path), decode(out)
    assert a.color == tags
    assert b.color == tags
    # Converted with the tagged matrix and range both ways: no colour or contrast shift.
    for x, y in zip(a.images, b.images):
        assert abs(x.astype(float).mean() - y.astype(float).mean()) < 0.5
        assert psnr(x, y) > 40


def test_odd_size_keeps_its_size_as_yuv444(clip_factory, decode, tmp_path, caplog):
    clip = clip_factory(frames=4, width=33, height=19, pix_fmt="yuv444p")
    out = tmp_path / "odd.mp4"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        sink = copy_through(clip.path, out)
    assert sink.pix_fmt == "yuv444p"
    assert "33x19" in caplog.text and "yuv444p" in caplog.text
    b = decode(out)
    assert (b.width, b.height, b.pix_fmt) == (33, 19, "yuv444p")
    assert len(b.images) == 4 and b.pts == decode(clip.path).pts


def test_odd_size_is_refused_by_a_420_only_codec(sample_clip, tmp_path):
    info = open_source(str(sample_clip.path)).info
    with pytest.raises(UsageError, match="odd size"):
        VideoSink(str(tmp_path / "x.mkv"), info, 33, 19, EncoderSettings(codec="libsvtav1"))
    assert os.listdir(tmp_path) == [sample_clip.path.name]


DECODED_AS = {"libx265": ("hevc",), "libvpx-vp9": ("vp9", "libvpx-vp9"), "libsvtav1": ("av1", "libdav1d"),
              "ffv1": ("ffv1",)}


@pytest.mark.parametrize("codec,ext,audio_kept", [
    ("libx265", ".mp4", True),
    ("libvpx-vp9", ".webm", False),        # AAC cannot go into WebM: re-encoded (tests/streamer/test_audio.py)
    ("libsvtav1", ".mkv", True),
    ("ffv1", ".mkv", True),
])
def test_other_codecs(codec, ext, audio_kept, clip_factory, decode, tmp_path, caplog, capfd):
    clip = clip_factory(frames=6, width=64, height=64)
    out = tmp_path / f"out{ext}"
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="streamer"):
        copy_through(clip.path, out, EncoderSettings(codec=codec))
    assert capfd.readouterr().err == ""            # encoders' own banners are silenced too
    a, b = decode(clip.path), decode(out)
    assert len(b.images) == 6 and (b.width, b.height) == (64, 64)
    assert b.codec_name in DECODED_AS[codec]
    got = [float(p * b.time_base) for p in b.pts]
    want = [float(p * a.time_base) for p in a.pts]
    if ext == ".mp4":
        assert b.pts == a.pts
    else:
        # Matroska counts in milliseconds and cannot store negative times: with the AAC
        # priming packet at -21 ms the muxer shifts every stream by the same amount.
        shift = got[0] - want[0]
        assert shift == pytest.approx(-a.audio_packets[0][0] * a.audio_time_base if audio_kept else 0, abs=1e-3)
        assert got == pytest.approx([t + shift for t in want], abs=5e-4)
    assert b.average_rate == pytest.approx(30, rel=0.01)
    for x, y in zip(a.images, b.images):
        assert psnr(x, y) > 25
    if audio_kept:
        assert [bytes_ for _, bytes_ in b.audio_packets] == [bytes_ for _, bytes_ in a.audio_packets]
        audio_shift = float(b.audio_packets[0][0] * b.audio_time_base - a.audio_packets[0][0] * a.audio_time_base)
        assert audio_shift == pytest.approx(got[0] - want[0], abs=1e-3)      # still in sync
    else:
        assert b.audio_packets and "re-encoded as libopus" in caplog.text


def test_crf_and_preset_reach_the_encoder(clip_factory, tmp_path):
    clip = clip_factory(frames=6, width=96, height=64, degradation="noise", audio=False)
    sizes = {}
    for crf in (10, 40):
        out = tmp_path / f"crf{crf}.mp4"
        copy_through(clip.path, out, EncoderSettings(crf=crf, preset="ultrafast"))
        sizes[crf] = out.stat().st_size
    assert sizes[40] * 3 < sizes[10]


def test_encoder_option_mapping():
    assert encoder_options(EncoderSettings()) == {"crf": "18", "preset": "medium"}
    assert encoder_options(EncoderSettings("libx265", crf=24, preset="fast"))["crf"] == "24"
    svt = encoder_options(EncoderSettings("libsvtav1", preset="veryfast"))
    assert svt["crf"] == "30" and svt["preset"] == "11"
    assert encoder_options(EncoderSettings("libsvtav1", preset="4"))["preset"] == "4"
    vp9 = encoder_options(EncoderSettings("libvpx-vp9", crf=35, preset="ultrafast"))
    assert vp9["crf"] == "35" and vp9["b"] == "0" and (vp9["deadline"], vp9["cpu-used"]) == ("realtime", "8")
    assert "crf" not in encoder_options(EncoderSettings("ffv1"))
    for bad in (EncoderSettings(crf=52), EncoderSettings("libvpx-vp9", crf=64), EncoderSettings(preset="warp"),
                EncoderSettings("libsvtav1", preset="99"), EncoderSettings("mpeg4", crf=5)):
        with pytest.raises(UsageError):
            encoder_options(bad)


def test_bad_encoder_choices_fail_before_writing(sample_clip, tmp_path):
    info = open_source(str(sample_clip.path)).info
    with pytest.raises(UsageError, match="unknown video encoder"):
        VideoSink(str(tmp_path / "a.mp4"), info, 64, 48, EncoderSettings(codec="nosuchcodec"))
    with pytest.raises(UsageError, match="not a video encoder"):
        VideoSink(str(tmp_path / "a.mp4"), info, 64, 48, EncoderSettings(codec="aac"))
    with pytest.raises(UsageError, match=r"cannot go into a \.webm"):
        VideoSink(str(tmp_path / "a.webm"), info, 64, 48, EncoderSettings(codec="libx264"))  # asked for
    with pytest.raises(UsageError, match=r"cannot go into a \.ts"):
        VideoSink(str(tmp_path / "a.ts"), info, 64, 48, EncoderSettings(codec="ffv1"))
    assert os.listdir(tmp_path) == [sample_clip.path.name]


# --- output paths ------------------------------------------------------------------------------


def test_check_output_path(tmp_path, sample_clip):
    check_output_path(str(tmp_path / "fine.mkv"), str(sample_clip.path))
    check_output_path(str(tmp_path / "UPPER.MP4"))
    cases = {
        str(tmp_path / "no" / "such" / "dir.mp4"): "does not exist",
        str(tmp_path / "out.xyz"): "'.xyz'",
        str(tmp_path / "noext"): "no extension",
        str(tmp_path / "clip.png"): "'.png'",
        str(tmp_path / "old.avi"): "AVI cannot keep",
        str(tmp_path): "directory",
        str(tmp_path / "sub") + os.sep: "directory",
        "": "no output",
    }
    for path, words in cases.items():
        with pytest.raises(UsageError) as err:
            check_output_path(path, str(sample_clip.path))
        assert words in str(err.value) and "\n" not in str(err.value), path
    # The input itself, by its own name, another spelling, a symlink or a hard link.
    same = [str(sample_clip.path), str(sample_clip.path.parent / "." / sample_clip.path.name)]
    link = tmp_path / "link.mp4"
    link.symlink_to(sample_clip.path)
    hard = tmp_path / "hard.mp4"
    os.link(sample_clip.path, hard)
    for path in same + [str(link), str(hard)]:
        with pytest.raises(UsageError, match="is the input"):
            check_output_path(path, str(sample_clip.path))


# --- temporary file, abort, partial output -----------------------------------------------------


def _frames(path: Path):
    with open_source(str(path)) as src:
        return src.info, list(src)


def test_writes_under_a_temporary_name_then_renames(clip_factory, tmp_path):
    clip = clip_factory(frames=6, name="in.mp4")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "result.mp4"
    out.write_bytes(b"previous result")            # an older output stays intact until the end
    info, frames = _frames(clip.path)
    with VideoSink(str(out), info, info.width, info.height, streams_from=str(clip.path)) as sink:
        for frame in frames:
            sink.write(frame)
            names = sorted(os.listdir(out_dir))
            assert out.read_bytes() == b"previous result"
            assert len(names) == 2
            temp = [n for n in names if n != "result.mp4"][0]
            assert temp.startswith(".result.") and temp.endswith(".mp4")
    assert os.listdir(out_dir) == ["result.mp4"]
    assert len(_frames(out)[1]) == 6
    assert (out.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_abort_leaves_nothing(clip_factory, tmp_path):
    clip = clip_factory(frames=6)
    out = tmp_path / "aborted.mp4"
    info, frames = _frames(clip.path)
    sink = VideoSink(str(out), info, info.width, info.height, streams_from=str(clip.path))
    for frame in frames[:3]:
        sink.write(frame)
    assert sink.abort() is None
    assert sorted(os.listdir(tmp_path)) == [clip.path.name]
    assert sink.abort(keep_partial=True) is None        # already aborted: nothing changes
    with pytest.raises(ProcessingError):
        sink.write(frames[3])


@pytest.mark.parametrize("exc", [RuntimeError("model crashed"), KeyboardInterrupt()])
def test_exception_inside_with_block_discards(exc, clip_factory, tmp_path):
    clip = clip_factory(frames=4)
    out = tmp_path / "crashed.mp4"
    info, frames = _frames(clip.path)
    with pytest.raises(type(exc)):
        with VideoSink(str(out), info, info.width, info.height) as sink:
            sink.write(frames[0])
            raise exc
    assert sorted(os.listdir(tmp_path)) == [clip.path.name]


def test_abort_keep_partial_finalises_a_playable_file(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=12)
    out = tmp_path / "partial.mp4"
    info, frames = _frames(clip.path)
    sink = VideoSink(str(out), info, info.width, info.height, streams_from=str(clip.path))
    for frame in frames[:5]:
        sink.write(frame)
    assert sink.abort(keep_partial=True) == str(out)
    assert sorted(os.listdir(tmp_path)) == sorted([clip.path.name, out.name])
    a, b = decode(clip.path), decode(out)
    assert len(b.images) == 5
    assert b.pts == a.pts[:5]
    for x, y in zip(a.images, b.images):
        assert psnr(x, y) > 25
    # The audio runs up to the end of the last frame written, no further.
    assert 0 < len(b.audio_packets) < len(a.audio_packets)
    assert b.audio_packets == a.audio_packets[: len(b.audio_packets)]
    last_audio = max(p for p, _ in b.audio_packets) * b.audio_time_base
    assert last_audio < Fraction(5, 30)


def test_no_frames_means_no_file(sample_clip, tmp_path):
    info = open_source(str(sample_clip.path)).info
    sink = VideoSink(str(tmp_path / "empty.mp4"), info, info.width, info.height)
    assert sink.abort(keep_partial=True) is None
    assert sorted(os.listdir(tmp_path)) == [sample_clip.path.name]
    with pytest.raises(ProcessingError, match="no frames"):
        with VideoSink(str(tmp_path / "empty.mp4"), info, info.width, info.height):
            pass
    assert sorted(os.listdir(tmp_path)) == [sample_clip.path.name]


def test_wrong_frame_shape_is_a_processing_error(sample_clip, tmp_path):
    info = open_source(str(sample_clip.path)).info
    with pytest.raises(ProcessingError, match="expected a 48x64x3 uint8"):
        with VideoSink(str(tmp_path / "o.mp4"), info, 64, 48) as sink:
            sink.write(Frame(0, 0, info.time_base, np.zeros((48, 63, 3), np.uint8)))
    assert sorted(os.listdir(tmp_path)) == [sample_clip.path.name]


def test_scaled_output_keeps_timing(clip_factory, decode, tmp_path):
    # A x2 super-resolution model's output: same timestamps and audio, twice the size.
    clip = clip_factory(frames=5, width=32, height=24)
    info, frames = _frames(clip.path)
    out = tmp_path / "x2.mp4"
    with VideoSink(str(out), info, 64, 48, streams_from=str(clip.path)) as sink:
        for f in frames:
            sink.write(Frame(f.index, f.pts, f.time_base, np.repeat(np.repeat(f.image, 2, 0), 2, 1)))
    a, b = decode(clip.path), decode(out)
    assert (b.width, b.height) == (64, 48) and b.pts == a.pts and b.audio_packets == a.audio_packets


def test_audio_is_interleaved_with_the_video(clip_factory, tmp_path):
    # 14 s: longer than FFmpeg's 10 s interleaving buffer, so a sink that wrote all the audio
    # after the video would leave the two streams seconds apart in the file.
    clip = clip_factory(frames=56, width=32, height=32, fps=4)
    out = tmp_path / "long.mp4"
    copy_through(clip.path, out)
    placed = []
    with av.open(str(out)) as container:
        for packet in container.demux():
            if packet.size and packet.dts is not None:
                placed.append((packet.pos, packet.stream.type, float(packet.dts * packet.time_base)))
    # The MP4 demuxer hands packets out by time whatever the layout: look at the file order.
    times = [(kind, t) for _, kind, t in sorted(placed)]
    kinds = {kind for kind, _ in times}
    assert kinds == {"video", "audio"}
    latest = {"video": -1.0, "audio": -1.0}
    worst = 0.0
    for kind, t in times:
        latest[kind] = max(latest[kind], t)
        if min(latest.values()) >= 0:
            worst = max(worst, abs(latest["video"] - latest["audio"]))
    assert worst < 1.5


def test_frames_without_timestamps_get_them(tmp_path, decode):
    # A live-like source: no frame rate known, no pts on the frames (90 kHz clock).
    from streamer.frames import VideoInfo

    info = VideoInfo(width=32, height=32, time_base=Fraction(1, 90000), average_rate=None)
    out = tmp_path / "live.mkv"
    image = np.full((32, 32, 3), 128, np.uint8)
    with VideoSink(str(out), info, 32, 32) as sink:
        for i in range(4):
            sink.write(Frame(i, None, info.time_base, image))
    b = decode(out)
    assert len(b.images) == 4
    assert [float(p * b.time_base) for p in b.pts] == pytest.approx([i / 30 for i in range(4)], abs=1e-3)


_SIGINT_CHILD = """
import signal
import sys
# A shell that starts the suite in the background (cmd &, no job control) hands every child
# SIGINT ignored; this child stands for an interactive run, where Ctrl-C raises.
signal.signal(signal.SIGINT, signal.default_int_handler)
from fractions import Fraction
import numpy as np
from streamer.frames import Frame, VideoInfo
from streamer.sinks import VideoSink
out, keep = sys.argv[1], sys.argv[2] == "1"
info = VideoInfo(width=64, height=48, time_base=Fraction(1, 30), average_rate=Fraction(30))
sink = VideoSink(out, info, 64, 48)
try:
    i = 0
    while True:
        sink.write(Frame(i, i, info.time_base, np.full((48, 64, 3), (7 * i) % 256, np.uint8)))
        i += 1
        if i == 10:
            print("ready", flush=True)
except KeyboardInterrupt:
    print(sink.frames_written, sink.abort(keep_partial=keep), flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("keep", [False, True], ids=["discard", "keep-partial"])
def test_sigint_while_writing(keep, tmp_path, decode):
    """A real Ctrl-C in the middle of encoding: no file, or a playable one with every frame."""
    import signal
    import subprocess
    import sys

    import streamer

    out = tmp_path / "interrupted.mp4"
    repo = str(Path(streamer.__file__).resolve().parent.parent)
    child = subprocess.Popen([sys.executable, "-c", _SIGINT_CHILD, str(out), "1" if keep else "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
                             env=dict(os.environ, PYTHONPATH=repo))
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    written, kept = stdout.split()
    if keep:
        assert kept == str(out) and os.listdir(tmp_path) == [out.name]
        b = decode(out)
        assert len(b.images) == int(written) >= 10
        assert [p * b.time_base for p in b.pts] == [Fraction(i, 30) for i in range(int(written))]
    else:
        assert kept == "None" and os.listdir(tmp_path) == []


def _display_matrix_bytes(path) -> bytes | None:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        for side_data in frame.side_data:
            if getattr(side_data.type, "name", "") == "DISPLAYMATRIX":
                return bytes(side_data)
    return None


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
@pytest.mark.parametrize("degrees,hflip", [(90, False), (-90, True), (180, False)])
def test_rotation_and_flips_are_kept(ext, degrees, hflip, tmp_path):
    # Before: a phone video (stored landscape, "rotate 90" in its display matrix) came out
    # without the matrix, i.e. played sideways.
    src = tmp_path / f"rotated{ext}"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for i in range(3):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    matrix = _display_matrix_bytes(src)
    assert matrix is not None
    assert open_source(str(src)).info.display_matrix is not None
    out_path = tmp_path / f"out{ext}"
    copy_through(src, out_path, audio=False)
    assert _display_matrix_bytes(out_path) == matrix
    with av.open(str(out_path)) as container:
        assert next(container.decode(video=0)).rotation % 360 == pytest.approx(degrees % 360)


def test_no_display_matrix_is_invented(sample_clip, tmp_path):
    info = open_source(str(sample_clip.path)).info
    assert info.display_matrix is None and info.sample_aspect_ratio is None   # square pixels
    copy_through(sample_clip.path, tmp_path / "out.mp4", audio=False)
    assert _display_matrix_bytes(tmp_path / "out.mp4") is None


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_anamorphic_pixel_shape_is_kept(ext, tmp_path):
    # Before: a 16:15-pixel PAL-style clip came out with square pixels (4:3 became 5:4).
    src = tmp_path / f"anamorphic{ext}"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 72, 56, "yuv420p"
        stream.codec_context.sample_aspect_ratio = stream.sample_aspect_ratio = Fraction(16, 15)
        for i in range(3):
            vf = av.VideoFrame.from_ndarray(np.full((56, 72, 3), 50 * i, np.uint8), format="rgb24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))
    assert open_source(str(src)).info.sample_aspect_ratio == Fraction(16, 15)
    copy_through(src, tmp_path / f"out{ext}", audio=False)
    with av.open(str(tmp_path / f"out{ext}")) as container:
        assert container.streams.video[0].sample_aspect_ratio == Fraction(16, 15)
    assert open_source(str(tmp_path / f"out{ext}")).info.sample_aspect_ratio == Fraction(16, 15)
