"""Network and standard-output OUTPUTs (issue 14) with real receivers on 127.0.0.1: ``ffmpeg
-rtsp_flags listen`` takes our RTSP push, ``ffmpeg -listen 1`` our RTMP, an ffmpeg UDP reader our
MPEG-TS, ffprobe our ``-``; the always-on clock's repeats and "no signal" frames reach a UDP
receiver. File inputs here; the same sinks serve live inputs (tests/streamer/live/test_network_inputs.py
drives those)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.errors import UsageError
from streamer.frames import Frame, VideoInfo
from streamer.live.clocked import ClockedWriter, no_signal_image
from streamer.live.outputs import parse_output
from streamer.options import options_from_mapping
from streamer.pipeline import Run, Stats
from streamer.sinks import VideoSink

from live_peers import FFMPEG, Identity, free_port, listening, needs_ffmpeg, process, wait_until

pytestmark = needs_ffmpeg


def _clip(path: Path, frames: int = 50, rate: int = 25, audio: bool = False) -> Path:
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-c:a", "aac", "-shortest"] \
        if audio else []
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate={rate}", *sound,
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-y", str(path)],
                   check=True, timeout=60)
    return path


def _decoded(path: Path):
    with av.open(str(path)) as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def _restore(input: Path, output: str) -> Stats:
    return Run(str(input), output, options_from_mapping(dict(model=Identity(), workers=0, tile=0))).execute()


def _receiver(url: str, out: Path, *input_options: str):
    return process([FFMPEG, "-hide_banner", "-v", "error", *input_options, "-i", url, "-c", "copy", "-y", str(out)])


def test_output_specs():
    assert parse_output("out.mkv").kind == "file"
    stdout = parse_output("-")
    assert (stdout.kind, stdout.target, stdout.format, stdout.live) == ("stdout", "pipe:1", "nut", True)
    udp = parse_output("udp://127.0.0.1:5000")
    assert (udp.format, udp.target, udp.always_on) == ("mpegts", "udp://127.0.0.1:5000?pkt_size=1316", True)
    assert parse_output("rtmp://h/app/key").format == "flv"
    assert parse_output("rtsp://h:8554/cam").options == {"rtsp_transport": "tcp"}
    with pytest.raises(UsageError, match=r"unsupported output protocol http://"):
        parse_output("http://127.0.0.1/x")


def test_rtsp_push_reaches_an_rtsp_listener(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv")
    port = free_port()
    received = tmp_path / "received.mkv"
    with _receiver(f"rtsp://127.0.0.1:{port}/live", received, "-rtsp_flags", "listen", "-timeout", "20") as rx:
        wait_until(lambda: listening(port), 15, "the rtsp listener did not start")
        _restore(source, f"rtsp://127.0.0.1:{port}/live")
        rx.wait(timeout=20)   # our TEARDOWN ends its input
    frames = _decoded(received)
    assert len(frames) == 50, len(frames)
    pts = [p for p, _ in frames]
    # FFmpeg's RTP receiver stamps the packets before its first RTCP sender report on its own
    # (here the first frame lands on the second's time); from then on ours come through.
    assert pts[0] <= pts[1] and all(b > a for a, b in zip(pts[1:], pts[2:])), pts


def test_rtmp_push_reaches_an_rtmp_listener(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv")
    port = free_port()
    received = tmp_path / "received.flv"
    with _receiver(f"rtmp://127.0.0.1:{port}/app/key", received, "-listen", "1", "-timeout", "20") as rx:
        wait_until(lambda: listening(port), 15, "the rtmp listener did not start")
        _restore(source, f"rtmp://127.0.0.1:{port}/app/key")
        rx.wait(timeout=20)
    assert len(_decoded(received)) >= 45


def test_udp_mpegts_output_is_read_by_ffmpeg_with_the_audio(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv", audio=True)
    port = free_port(kind=2)   # SOCK_DGRAM
    received = tmp_path / "received.ts"
    # The reader ends 1.5 s after the last datagram (timeout in microseconds).
    with _receiver(f"udp://127.0.0.1:{port}?timeout=1500000&fifo_size=50000&overrun_nonfatal=1", received) as rx:
        time.sleep(0.5)        # its socket is bound (UDP: nothing to wait for but time)
        stats = _restore(source, f"udp://127.0.0.1:{port}")
        rx.wait(timeout=20)
    assert stats.frames_out == 50 and stats.completed
    assert len(_decoded(received)) >= 40
    with av.open(str(received)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]   # passed through
        assert container.streams.audio[0].codec_context.name == "aac"


def test_stdout_output_pipes_into_ffprobe(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv", frames=30)
    cli = subprocess.Popen([sys.executable, "-m", "streamer.cli", str(source), "-", "--task", "denoise",
                            "--workers", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        probe = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                                "-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", "-"],
                               stdin=cli.stdout, capture_output=True, text=True, timeout=120)
        cli.stdout.close()
        assert cli.wait(timeout=60) == 0, cli.stderr.read()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)
        cli.stderr.close()
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "h264,30"


def test_srt_output_says_what_is_missing(tmp_path: Path):
    info = VideoInfo(width=64, height=48, time_base=Fraction(1, 25), average_rate=Fraction(25))
    port = free_port(kind=2)
    with pytest.raises(UsageError) as err:
        VideoSink(f"srt://127.0.0.1:{port}?connect_timeout=500", info, 64, 48)
    message = str(err.value)
    assert "\n" not in message
    # This PyAV wheel has no libsrt; a build with it fails to connect (no listener) instead.
    assert "libsrt is missing" in message or "cannot send to srt://" in message, message


def test_always_on_repeats_and_no_signal_reach_a_udp_receiver(tmp_path: Path):
    """API level: frames fed with a 2 s pause to a UDP output; the receiver gets the repeated
    last frame, then "no signal" frames, then the new frames, with increasing timestamps."""
    h, w, rate = 48, 64, 20
    info = VideoInfo(width=w, height=h, time_base=Fraction(1, rate), average_rate=Fraction(rate))
    port = free_port(kind=2)
    received = tmp_path / "received.ts"
    picture = np.zeros((h, w, 3), np.uint8)
    picture[:, :, 1] = 230
    with _receiver(f"udp://127.0.0.1:{port}?timeout=1500000", received) as rx:
        time.sleep(0.5)
        clock = ClockedWriter(VideoSink(f"udp://127.0.0.1:{port}", info, w, h), info.average_rate, stub_after=0.5)
        try:
            for i in range(10):
                clock.write(Frame(i, i, info.time_base, picture))
            time.sleep(2.0)
            for i in range(10, 20):
                clock.write(Frame(i, i, info.time_base, picture))
            clock.close()
        finally:
            clock.abort()
        rx.wait(timeout=20)
    assert clock.frames_repeated >= 5 and clock.frames_stub >= 10
    frames = _decoded(received)
    pts = [p for p, _ in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    stub = no_signal_image(h, w).astype(int)
    is_stub = [np.abs(image.astype(int) - stub).mean() < 8 for _, image in frames]
    assert sum(is_stub) >= 10, sum(is_stub)
    # The picture before and after the gap (greens: the last frame repeated, then new frames).
    assert not is_stub[0] and not is_stub[-1]
    assert len(frames) >= 20 + clock.frames_repeated + 10 - 5   # a few may be lost before sync


def test_a_refused_network_output_is_one_line_and_exit_2(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv", frames=5)
    port = free_port()   # nothing listens there
    cli = subprocess.run([sys.executable, "-m", "streamer.cli", str(source), f"rtmp://127.0.0.1:{port}/app/key",
                          "--task", "denoise", "--workers", "0", "-q"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip().splitlines() == [f"nystra-stream: error: cannot send to rtmp://127.0.0.1:{port}/app/key: "
                                               "Connection refused"], cli.stderr


def test_a_reader_that_goes_away_ends_the_run_with_exit_1(tmp_path: Path):
    source = _clip(tmp_path / "in.mkv", frames=300)
    cli = subprocess.Popen([sys.executable, "-m", "streamer.cli", str(source), "-", "--task", "denoise",
                            "--workers", "0", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        cli.stdout.read(2000)      # the header and a frame or two, then the reader leaves
        cli.stdout.close()
        assert cli.wait(timeout=60) == 1
        (line,) = cli.stderr.read().decode().strip().splitlines()
        assert re.fullmatch(r"nystra-stream: error: encoding standard output failed at frame \d+: Broken pipe",
                            line), line
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(timeout=10)
        cli.stderr.close()
