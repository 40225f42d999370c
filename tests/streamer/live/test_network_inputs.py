"""Acceptance 1 (input side): real senders and servers on 127.0.0.1 feed a live run."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading

import av
import pytest

from streamer.errors import UsageError

from live_peers import FFMPEG, Background, free_port, listening, live_run, needs_ffmpeg, process, sender, wait_until


def frame_times(path) -> list:
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        return [float(f.pts * st.time_base) for f in c.decode(st)]


@needs_ffmpeg
def test_udp_mpegts_from_an_ffmpeg_sender(tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    out = tmp_path / "out.mkv"
    with process(sender([f"udp://127.0.0.1:{port}?pkt_size=1316"], seconds=20)):
        stats = live_run(f"udp://127.0.0.1:{port}", str(out), frames=30, seconds=25)
    assert stats.frames_out >= 30 and stats.kept_partial == str(out)
    times = frame_times(out)
    assert len(times) == stats.frames_out and times[0] < 2.0   # (see the gst-rtsp-server test)
    assert all(b > a for a, b in zip(times, times[1:]))
    # the sender's own 25 fps clock (a frame dropped because the machine was behind leaves its gap)
    assert all(abs((b - a) * 25 - round((b - a) * 25)) < 0.05 for a, b in zip(times, times[1:]))
    assert abs(times[-1] - (len(times) - 1 + stats.frames_dropped) / 25) < 0.2 or stats.frames_dropped


@needs_ffmpeg
def test_listen_rtsp_receives_an_ffmpeg_push(tmp_path):
    port = free_port()
    out = tmp_path / "out.mkv"
    run = Background(f"rtsp://127.0.0.1:{port}/live", str(out), frames=40, seconds=30, listen=True)
    wait_until(lambda: listening(port), 10, "the run never listened")
    with process(sender(["-rtsp_transport", "tcp", f"rtsp://127.0.0.1:{port}/live"], seconds=20, fmt="rtsp")):
        wait_until(lambda: run.stats is not None or run.error is not None, 30, "no frames")
    stats = run.result()
    assert stats.frames_out >= 40 and stats.reconnects == 0
    times = frame_times(out)
    assert len(times) == stats.frames_out and all(b > a for a, b in zip(times, times[1:]))


GST_PYTHON = "/usr/bin/python3"


def _has_gst_rtsp_server() -> bool:
    if not os.path.exists(GST_PYTHON):
        return False
    probe = subprocess.run([GST_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, timeout=30)
    return probe.returncode == 0


@contextlib.contextmanager
def _gst_rtsp_server(*tls_pem: str):
    if not _has_gst_rtsp_server():
        pytest.skip("needs /usr/bin/python3 with gi and gst-rtsp-server (gir1.2-gst-rtsp-server-1.0)")
    port = free_port()
    script = os.path.join(os.path.dirname(__file__), "gst_rtsp_server.py")
    proc = subprocess.Popen([GST_PYTHON, script, str(port), *tls_pem], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        wait_until(lambda: listening(port), 10, "gst-rtsp-server did not listen")
        yield f"rtsp{'s' if tls_pem else ''}://127.0.0.1:{port}/test"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rtsp_server():
    with _gst_rtsp_server() as url:
        yield url


@pytest.fixture(scope="module")
def rtsps_server(tmp_path_factory):
    """gst-rtsp-server over TLS with a self-signed certificate made by the openssl program."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl program (for a self-signed certificate)")
    if not _has_gst_rtsp_server() or subprocess.run(
            [GST_PYTHON, "-c", "from gi.repository import Gio; assert Gio.TlsBackend.get_default().supports_tls()"],
            capture_output=True, timeout=30).returncode:
        pytest.skip("needs gst-rtsp-server and GLib's TLS backend (glib-networking)")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    both = folder / "server.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    with _gst_rtsp_server(str(both)) as url:
        yield url


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_client_plays_gst_rtsp_server(rtsp_server, transport, tmp_path):
    out = tmp_path / "out.mkv"
    stats = live_run(rtsp_server, str(out), frames=25, seconds=30, rtsp_transport=transport)
    assert stats.frames_out >= 25 and stats.stalls == 0
    times = frame_times(out)
    assert len(times) == stats.frames_out and all(b > a for a, b in zip(times, times[1:]))
    # The source's clock starts at 0; frames that came while the pipeline was starting are dropped
    # (the latest wins), so the first written one may be a frame or a few later: the gap stays.
    assert times[0] < 2.0   # (generous: a loaded machine starts slowly)
    assert 0.5 < times[-1] < 3.0   # about a second of a 25 fps live clock


def test_rtsps_client_plays_gst_rtsp_server_over_tls(rtsps_server, tmp_path):
    # (FFmpeg's TLS client does not verify the certificate by default: a self-signed one plays.)
    out = tmp_path / "out.mkv"
    stats = live_run(rtsps_server, str(out), frames=25, seconds=30)
    assert stats.frames_out >= 25 and stats.stalls == 0
    times = frame_times(out)
    assert len(times) == stats.frames_out and all(b > a for a, b in zip(times, times[1:]))
    assert times[0] < 2.0 and 0.5 < times[-1] < 3.0   # (frames that came while the run started may be dropped)


def test_rtsps_is_not_plain_rtsp(rtsps_server, tmp_path):
    """The TLS server really is one: a plain rtsp:// client cannot read it (one line, exit 2)."""
    plain = rtsps_server.replace("rtsps://", "rtsp://")
    with pytest.raises(UsageError, match=r"^cannot read rtsp://127\.0\.0\.1:\d+/test as a video: [^\n]*$"):
        live_run(plain, str(tmp_path / "out.mkv"), frames=5, seconds=20, stall_timeout=2.0, reconnect=0)


@needs_ffmpeg
def test_listen_rtmp_receives_an_ffmpeg_push(tmp_path):
    port = free_port()
    out = tmp_path / "out.mkv"
    run = Background(f"rtmp://127.0.0.1:{port}/live/x", str(out), frames=25, seconds=30, listen=True)
    wait_until(lambda: listening(port), 10, "the run never listened")
    with process(sender([f"rtmp://127.0.0.1:{port}/live/x"], seconds=20, fmt="flv")):
        wait_until(lambda: run.stats is not None or run.error is not None, 30, "no frames")
    stats = run.result()
    assert stats.frames_out >= 25 and stats.reconnects == 0


@needs_ffmpeg
def test_http_progressive_file_ends_the_run_at_its_end(tmp_path):
    src = tmp_path / "www" / "clip.ts"
    src.parent.mkdir()
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc2=size=96x64:rate=25", "-frames:v", "30", "-c:v", "libx264", "-f", "mpegts",
                    str(src)], check=True, timeout=60)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = tmp_path / "out.mkv"
        stats = live_run(f"http://127.0.0.1:{server.server_address[1]}/clip.ts", str(out), frames=10_000,
                         seconds=30)
    finally:
        server.shutdown()
        server.server_close()
    assert stats.completed and stats.frames_out == 30 and stats.reconnects == 0
