"""Audio of live inputs (issue 14, "audio passes through where the output takes it"): an ffmpeg
sender muxes a sine with the test pattern; the output carries it on the video's timeline."""
from __future__ import annotations

import math
import socket
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from streamer.live.audio import AudioFeed, LiveAudioMux
from streamer.live.timeline import WRAP, Timeline

from live_peers import (FFMPEG, FFPROBE, Background, free_port, listening, live_run, needs_ffmpeg, packet_times,
                        process, sender, spans, stream_types, wait_until)


def udp_sender(port: int, audio: str, seconds: float = 20):
    return process(sender([f"udp://127.0.0.1:{port}?pkt_size=1316"], seconds=seconds, audio=audio))


pytestmark = [needs_ffmpeg, pytest.mark.skipif(FFPROBE is None, reason="needs the ffprobe program")]


@pytest.mark.parametrize("audio, suffix, codec", [("aac", ".mp4", "aac"), ("aac", ".ts", "aac"),
                                                  ("libopus", ".mkv", "opus"), ("mp2", ".mkv", "mp2"),
                                                  ("libopus", ".mov", "aac")])   # MOV takes no Opus
def test_live_audio_goes_into_a_file_with_the_video(tmp_path, caplog, audio, suffix, codec):
    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / f"out{suffix}"
    with udp_sender(port, audio):
        stats = live_run(f"udp://127.0.0.1:{port}", str(out), frames=50, seconds=25)
    assert stats.frames_out >= 50
    assert stream_types(out) == [("audio", codec), ("video", "h264")]   # copied where the container takes it
    reencoded = "opus audio cannot go into a .mov file: audio stream 0 re-encoded as aac" in caplog.text
    assert reencoded == (suffix == ".mov"), caplog.text
    times = packet_times(out)
    assert all(b > a for a, b in zip(times["audio"], times["audio"][1:]))
    (v0, v1), (a0, a1) = spans(out)["video"], spans(out)["audio"]
    assert v0 < 2.0 and abs(a0 - v0) < 0.1 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)   # same timeline


@pytest.mark.parametrize("proto, fmt", [("rtsp", "rtsp"), ("rtmp", "flv")])
def test_audio_of_a_push_to_a_listening_run(tmp_path, proto, fmt):
    """An encoder pushing video and AAC to ``--listen`` (RTP's and FLV's AAC, not MPEG-TS's ADTS)."""
    port = free_port()
    url = f"{proto}://127.0.0.1:{port}/live/x"
    out = tmp_path / "out.mkv"
    run = Background(url, str(out), frames=40, seconds=30, listen=True)
    wait_until(lambda: listening(port), 10, "the run never listened")
    transport = ["-rtsp_transport", "tcp"] if proto == "rtsp" else []
    with process(sender([*transport, url], seconds=20, fmt=fmt, audio="aac")):
        wait_until(lambda: run.stats is not None or run.error is not None, 30, "no frames")
    stats = run.result()
    assert stats.frames_out >= 40
    assert stream_types(out) == [("audio", "aac"), ("video", "h264")]
    (v0, v1), (a0, a1) = spans(out)["video"], spans(out)["audio"]
    assert abs(a0 - v0) < 0.5 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)


def test_duration_cuts_the_audio_with_the_video(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.mkv"
    with udp_sender(port, "aac"):
        stats = live_run(f"udp://127.0.0.1:{port}", str(out), frames=10_000, seconds=25, duration=2.0)
    assert stats.completed
    (v0, v1), (a0, a1) = spans(out)["video"], spans(out)["audio"]
    assert 1.5 < v1 - v0 < 2.5 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)


def test_audio_stays_increasing_across_a_reconnect(tmp_path):
    port = free_port()
    out = tmp_path / "out.mkv"
    run = Background(f"tcp://127.0.0.1:{port}", str(out), frames=10_000, seconds=30, listen=True)
    for _ in range(2):
        wait_until(lambda: listening(port), 15, "the run did not listen (again)")
        with process(sender([f"tcp://127.0.0.1:{port}"], seconds=20, audio="aac")):
            time.sleep(2.5)   # killed mid-stream
    stats = run.result()
    assert stats.reconnects == 1
    times = packet_times(out)
    audio, video = times["audio"], sorted(times["video"])
    assert all(b > a for a, b in zip(audio, audio[1:]))
    gap_at = max(range(1, len(video)), key=lambda i: video[i] - video[i - 1])   # where the sender was away
    assert video[gap_at] - video[gap_at - 1] > 0.3
    before = [t for t in audio if t < video[gap_at - 1] + 0.2]
    after = [t for t in audio if t >= video[gap_at] - 0.2]
    assert before and after and len(before) + len(after) == len(audio)   # both parts, nothing in the gap
    assert abs(after[-1] - video[-1]) < 0.5


def test_network_outputs_carry_the_audio(tmp_path):
    """UDP MPEG-TS out (read by ffmpeg) from a live UDP input with audio; RTSP push below."""
    port_in, port_out = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    received = tmp_path / "received.ts"
    reader = [FFMPEG, "-hide_banner", "-v", "error", "-i",
              f"udp://127.0.0.1:{port_out}?timeout=3000000&fifo_size=50000&overrun_nonfatal=1",
              "-c", "copy", "-y", str(received)]
    with udp_sender(port_in, "aac"), process(reader) as rx:
        time.sleep(0.5)   # the reader's socket is bound
        stats = live_run(f"udp://127.0.0.1:{port_in}", f"udp://127.0.0.1:{port_out}", frames=50, seconds=25)
        rx.wait(timeout=20)
    assert stats.frames_out >= 50
    assert stream_types(received) == [("audio", "aac"), ("video", "h264")]
    (v0, v1), (a0, a1) = spans(received)["video"], spans(received)["audio"]
    assert abs(a0 - v0) < 0.5 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)


def test_rtsp_push_carries_the_audio(tmp_path):
    port_in, port_out = free_port(socket.SOCK_DGRAM), free_port()
    received = tmp_path / "received.mkv"
    reader = [FFMPEG, "-hide_banner", "-v", "error", "-rtsp_flags", "listen", "-timeout", "20",
              "-i", f"rtsp://127.0.0.1:{port_out}/live", "-c", "copy", "-y", str(received)]
    with udp_sender(port_in, "aac"), process(reader) as rx:
        wait_until(lambda: listening(port_out), 15, "the rtsp listener did not start")
        stats = live_run(f"udp://127.0.0.1:{port_in}", f"rtsp://127.0.0.1:{port_out}/live", frames=50,
                         seconds=25)
        rx.wait(timeout=20)   # our TEARDOWN ends its input
    assert stats.frames_out >= 50
    assert stream_types(received) == [("audio", "aac"), ("video", "h264")]
    (v0, v1), (a0, a1) = spans(received)["video"], spans(received)["audio"]
    assert a1 - a0 > 1.0 and abs(a1 - v1) < 0.5, (v0, v1, a0, a1)


# -- the parts --------------------------------------------------------------------------------

TS = Fraction(1, 90000)


def test_timeline_places_audio_through_the_video_segment():
    timeline = Timeline(TS, Fraction(25))
    assert timeline.place(1000, TS) is None                     # no video frame yet
    timeline(90000 * 10, TS)                                    # the video starts 10 s into the source clock
    assert timeline.place(90000 * 10 + 4500, TS) == Fraction(1, 20)
    assert timeline.place(90000 * 10 - 4500, TS) is None        # before the first frame
    assert timeline.place(48000 * 10 + 2400, Fraction(1, 48000)) == Fraction(1, 20)   # another time base
    assert timeline.place(90000 * 10 + 90000 * 5, TS) is None   # far past the video: a jump it has not reached
    timeline.resume(3.0)
    assert timeline.place(90000 * 10 + 4500, TS) is None        # the new stream's clock is not known yet
    timeline(777, TS)
    assert timeline.place(777 + 9000, TS) == timeline.last_out * TS + Fraction(1, 10)


def test_timeline_unwraps_audio_beside_a_wrapping_video():
    timeline = Timeline(TS, Fraction(25))
    timeline(WRAP - 9000, TS)                     # 0.1 s before the 33-bit wrap
    timeline(WRAP - 5400, TS)
    timeline(0, TS)                               # the video wrapped (...), the audio is near it
    assert timeline.place(WRAP - 4500, TS) == Fraction(4500, 90000)
    assert timeline.place(900, TS) == Fraction(9900, 90000)
    assert timeline.wraps == 1


def _ts_with_audio(path: Path) -> Path:
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "1",
                    "-c:a", "aac", "-f", "mpegts", "-y", str(path)], check=True, timeout=60)
    return path


def test_the_audio_ring_is_bounded_and_never_blocks(tmp_path):
    path = _ts_with_audio(tmp_path / "a.ts")
    timeline = Timeline(TS, Fraction(25))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.size]
        start = packets[0].pts
        timeline(start, TS)
        feed = AudioFeed("test", capacity=8)
        feed.start(stream)
        for packet in packets:                 # nobody takes them: the oldest are overwritten
            feed.offer(packet, timeline)
    assert feed.described.is_set() and feed.stream.codec_context.name == "aac"
    assert feed.stream.codec_context.extradata        # the AudioSpecificConfig MP4 and RTSP need
    placed = len(packets) - feed.skipped
    assert placed > 8 and feed.overwritten == placed - 8
    taken = feed.take(math.inf)
    assert len(taken) == 8 and all(b.seconds > a.seconds for a, b in zip(taken, taken[1:]))
    assert bytes(taken[0].packet)[:2] != b"\xff\xf1"   # raw AAC: the ADTS header was filtered off


def test_a_clocked_output_keeps_the_audio_increasing_across_a_reconnect(tmp_path):
    """A network output re-stamps video with its own clock (repeats, "no signal" while the
    sender is away): the audio follows that clock, increasing, with a gap for the outage."""
    port_in, port_out = free_port(), free_port(socket.SOCK_DGRAM)
    received = tmp_path / "received.ts"
    reader = [FFMPEG, "-hide_banner", "-v", "error", "-i",
              f"udp://127.0.0.1:{port_out}?timeout=3000000&fifo_size=50000&overrun_nonfatal=1",
              "-c", "copy", "-y", str(received)]
    with process(reader) as rx:
        run = Background(f"tcp://127.0.0.1:{port_in}", f"udp://127.0.0.1:{port_out}", frames=10_000, seconds=30,
                         listen=True)
        for _ in range(2):
            wait_until(lambda: listening(port_in), 15, "the run did not listen (again)")
            with process(sender([f"tcp://127.0.0.1:{port_in}"], seconds=20, audio="aac")):
                time.sleep(2.5)
            time.sleep(1.0)   # away: the clock repeats the last frame meanwhile
        stats = run.result()
        rx.wait(timeout=20)
    assert stats.reconnects == 1 and stats.frames_repeated > 0
    times = packet_times(received)
    audio = times["audio"]
    assert all(b > a for a, b in zip(audio, audio[1:]))
    gaps = [b - a for a, b in zip(audio, audio[1:])]
    at = max(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[at] > 0.5 and at > 20 and len(audio) - at > 20, (gaps[at], at, len(audio))   # two parts
    assert audio[-1] <= max(times["video"]) + 0.5


def test_a_damaged_adts_packet_is_skipped_not_fatal(tmp_path):
    path = _ts_with_audio(tmp_path / "a.ts")
    timeline = Timeline(TS, Fraction(25))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.size][:10]
        timeline(packets[0].pts, TS)
        feed = AudioFeed("test")
        feed.start(stream)
        for packet in packets[:5]:
            feed.offer(packet, timeline)
        damaged = av.Packet(b"\0" * 64)   # no ADTS header: FFmpeg's filter refuses it
        damaged.pts, damaged.time_base = packets[5].pts - 1, TS
        feed.offer(damaged, timeline)
        for packet in packets[5:]:
            feed.offer(packet, timeline)
    assert feed.skipped == 1 and len(feed.take(math.inf)) == 10   # every good one, in order


def test_the_audio_starts_with_the_first_picture(tmp_path):
    """Frames that came while the run started are dropped (the latest wins): the sound of that
    time has no picture and is left out, so audio and video start together."""
    path = _ts_with_audio(tmp_path / "a.ts")
    timeline = Timeline(TS, Fraction(25))
    feed = AudioFeed("test")
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.size]
        timeline(packets[0].pts, TS)
        feed.start(stream)
        for packet in packets:
            feed.offer(packet, timeline)
    out = tmp_path / "out.mkv"
    with av.open(str(out), "w") as output:
        mux = LiveAudioMux(feed, output)
        output.start_encoding()
        mux.mux_until(0.4)        # the first video packet starts at 0.4 s
        mux.mux_until(0.6)
        mux.finish(0.8)
    audio = packet_times(out)["audio"]
    assert audio and 0.4 <= audio[0] < 0.45 and audio[-1] < 0.8
