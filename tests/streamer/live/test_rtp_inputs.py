"""``rtp://`` and ``.sdp`` inputs (issue 14) from a real ffmpeg RTP sender on 127.0.0.1."""
from __future__ import annotations

import socket
from pathlib import Path

import av
import pytest

from streamer.errors import UsageError
from streamer.live.specs import InputSettings, parse_input

from live_peers import live_run, needs_ffmpeg, process, sender, spans, wait_until

pytestmark = needs_ffmpeg


def rtp_port() -> int:
    """A free even UDP port whose odd neighbour (RTCP) is free too."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free RTP port pair")


def stream_types(path: Path) -> list:
    with av.open(str(path)) as container:
        return sorted(s.type for s in container.streams)


def test_rtp_and_sdp_specs(tmp_path):
    rtp = parse_input("rtp://127.0.0.1:5004")
    assert (rtp.kind, rtp.live, rtp.reconnects_at_eof) == ("url", True, True)
    sdp = parse_input(str(tmp_path / "cam.sdp"))
    assert (sdp.kind, sdp.format, sdp.live) == ("url", "sdp", True)
    assert set(sdp.options["protocol_whitelist"].split(",")) >= {"file", "udp", "rtp"}
    with pytest.raises(UsageError, match="--listen works for"):
        parse_input("rtp://127.0.0.1:5004", InputSettings(listen=True))


def test_rtp_mpegts_input(tmp_path):
    port = rtp_port()
    out = tmp_path / "out.mkv"
    with process(sender([f"rtp://127.0.0.1:{port}"], seconds=20, fmt="rtp_mpegts", audio="aac")):
        stats = live_run(f"rtp://127.0.0.1:{port}", str(out), frames=30, seconds=25)
    assert stats.frames_out >= 30 and stats.stalls == 0
    assert stream_types(out) == ["audio", "video"]
    with av.open(str(out)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert times[0] < 0.5 and all(b > a for a, b in zip(times, times[1:]))
    (v0, v1), (a0, a1) = spans(out)["video"], spans(out)["audio"]
    print(v0, v1, a0, a1)
    assert abs(a0 - v0) < 0.5 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)


def test_rtp_h264_without_its_sdp_says_to_give_the_sdp(tmp_path):
    port = rtp_port()
    with process(sender([f"rtp://127.0.0.1:{port}"], seconds=20, fmt="rtp")):   # H.264: dynamic payload type
        with pytest.raises(UsageError, match=r"^cannot read rtp://127\.0\.0\.1:\d+ as a video: .*give FILE\.sdp"):
            live_run(f"rtp://127.0.0.1:{port}", str(tmp_path / "out.mkv"), frames=5, seconds=20, reconnect=0)


def test_sdp_file_input_with_video_and_audio(tmp_path):
    video, audio = rtp_port(), None
    while audio is None or audio in (video, video + 1):
        audio = rtp_port()
    sdp = tmp_path / "cam.sdp"
    # One RTP stream a port (what RTP carries), described together in the SDP file ffmpeg writes.
    args = sender(["-map", "0:v", "-sdp_file", str(sdp), f"rtp://127.0.0.1:{video}",
                   "-map", "1:a", "-c:a", "aac", "-f", "rtp", f"rtp://127.0.0.1:{audio}"],
                  seconds=20, fmt="rtp", audio="aac")
    out = tmp_path / "out.mkv"
    with process(args):
        wait_until(lambda: sdp.exists() and b"m=audio" in sdp.read_bytes(), 15, "ffmpeg wrote no SDP file")
        stats = live_run(str(sdp), str(out), frames=30, seconds=25)
    assert stats.frames_out >= 30
    assert stream_types(out) == ["audio", "video"]
    with av.open(str(out)) as c:
        times = [f.time for f in c.decode(video=0)]
    assert all(b > a for a, b in zip(times, times[1:]))
    (v0, v1), (a0, a1) = spans(out)["video"], spans(out)["audio"]
    print(v0, v1, a0, a1)
    assert a1 - a0 > 0.5 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)   # two RTP clocks, synced by RTCP
