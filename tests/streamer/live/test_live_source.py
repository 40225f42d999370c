"""LiveSource through the real pipeline: lavfi paced at real time, the webcam path (the one
stand-in: the device open is pointed at a lavfi graph), size changes mid-stream."""
from __future__ import annotations

import itertools
import logging
import socket
import subprocess
import time

import av
import pytest

import streamer
from live_peers import FFMPEG, free_port, live_run, needs_ffmpeg, process
from streamer.live.source import HANDOFF_FRAMES, LiveSource, open_container
from streamer.live.specs import InputSettings, parse_input
from toy_models import Identity, Slow


def sizes_and_times(path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return [((f.width, f.height), float(f.pts * st.time_base)) for f in c.decode(st)]


def test_lavfi_is_live_and_paced_at_real_time(tmp_path):
    out = tmp_path / "out.mkv"
    t0 = time.monotonic()
    stats = live_run("lavfi:testsrc2=size=96x64:rate=30", str(out), frames=45)
    assert time.monotonic() - t0 > 1.2           # 45 frames of a 30 fps clock take 1.5 s
    frames = sizes_and_times(out)
    assert len(frames) == stats.frames_out >= 45 and frames[0] == ((96, 64), 0.0)


def test_webcam_source_with_the_device_open_standing_in(tmp_path):
    spec = parse_input("webcam:0", InputSettings(input_size="96x64", input_rate=15, input_format="yuyv422"))
    asked = {}

    def open_device(spec, timeout):
        # No webcam exists here: the device open is the one part replaced; what it was asked
        # for is checked, and the same LiveSource reads the stand-in container.
        asked.update(target=spec.target, format=spec.format, options=spec.options, timeout=timeout)
        size, rate = spec.options["video_size"], spec.options["framerate"]
        return av.open(f"testsrc2=size={size}:rate={rate},format=yuyv422,realtime", format="lavfi",
                       timeout=timeout)

    source = LiveSource(spec, stall_timeout=2.0, opener=open_device)
    with source:
        assert source.info.live and (source.info.width, source.info.height) == (96, 64)
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 5:
                break
    assert asked == {"target": "/dev/video0", "format": "v4l2", "timeout": (2.0, 2.0),
                     "options": {"video_size": "96x64", "framerate": "15", "input_format": "yuyv422"}}
    assert [f.index for f in frames] == list(range(5)) and all(f.image.shape == (64, 96, 3) for f in frames)
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))
    assert open_container is not open_device   # the real opener stays the default


def two_size_ts(tmp_path):
    """Two ffmpeg-encoded MPEG-TS parts, 160x120 then 96x64, concatenated byte for byte."""
    parts = []
    for k, size in enumerate(("160x120", "96x64")):
        part = tmp_path / f"part{k}.ts"
        subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=25", "-frames:v", "25", "-c:v", "libx264", "-g", "25",
                        "-output_ts_offset", str(k), "-f", "mpegts", str(part)], check=True, timeout=60)
        parts.append(part.read_bytes())
    path = tmp_path / "two_sizes.ts"
    path.write_bytes(b"".join(parts))
    return path


@needs_ffmpeg
def test_size_change_in_a_file_is_scaled_to_the_first_size_with_one_warning(tmp_path, caplog):
    src = two_size_ts(tmp_path)
    out = tmp_path / "out.mkv"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        stats = streamer.run(str(src), str(out), model=Identity(), workers=0, tile=0)
    assert stats.frames_out == 50
    assert {size for size, _ in sizes_and_times(out)} == {(160, 120)}
    assert len([r for r in caplog.records if "size changed mid-stream" in r.getMessage()]) == 1


@needs_ffmpeg
def test_size_change_in_a_live_udp_input(tmp_path, caplog):
    src = two_size_ts(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.mkv"
    send = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(src), "-c", "copy", "-f", "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316"]
    with caplog.at_level(logging.WARNING, logger="streamer"), process(send):
        stats = live_run(f"udp://127.0.0.1:{port}", str(out), frames=45, seconds=20, stall_timeout=3, drop="none")
    frames = sizes_and_times(out)
    assert len(frames) == stats.frames_out >= 45
    assert {size for size, _ in frames} == {(160, 120)}
    assert len([r for r in caplog.records if "size changed mid-stream" in r.getMessage()]) == 1


def test_a_slow_model_is_back_pressure_not_a_stall(tmp_path):
    # 10 fps of model against a 30 fps source for ~3 s, with a 1 s stall timeout: the demux
    # thread waits on the handoff, not on the network, so nothing counts as a stall.
    out = tmp_path / "out.mkv"
    stats = live_run("lavfi:testsrc2=size=64x48:rate=30", str(out), frames=30, seconds=20,
                     model=Slow(0.1), stall_timeout=1.0)
    assert stats.frames_out >= 30 and stats.stalls == 0 and stats.reconnects == 0


def test_closing_a_live_source_mid_iteration_ends_its_demux_thread():
    source = LiveSource(parse_input("lavfi:testsrc2=size=64x48:rate=30"), stall_timeout=2.0)
    frames = iter(source)
    next(frames)
    source.close()                       # from this thread, while the demux thread reads
    rest = list(itertools.islice(frames, 10))   # what was already handed over, then the end
    assert len(rest) <= HANDOFF_FRAMES
    source._thread.join(5)
    assert not source._thread.is_alive()
