"""INPUT strings -> typed specs (nothing is opened here)."""
import pytest

from streamer.errors import UsageError
from streamer.live.specs import InputSettings, parse_input


def test_files_pipes_and_lavfi():
    assert parse_input("film.mkv").kind == "file" and not parse_input("film.mkv").live
    stdin = parse_input("-")
    assert stdin.kind == "stdin" and not stdin.live
    lavfi = parse_input("lavfi:testsrc2=size=64x48:rate=30")
    assert lavfi.live and lavfi.format == "lavfi" and lavfi.target == "testsrc2=size=64x48:rate=30,realtime"
    assert not lavfi.reconnects_at_eof            # a finite graph ends the run
    assert parse_input("lavfi:testsrc,realtime").target == "testsrc,realtime"
    with pytest.raises(UsageError, match="filter graph"):
        parse_input("lavfi:")


def test_client_urls_get_their_options():
    rtsp = parse_input("rtsp://127.0.0.1:8554/cam")
    assert rtsp.kind == "url" and rtsp.options == {"rtsp_transport": "tcp"} and rtsp.reconnects_at_eof
    assert parse_input("rtsp://h/x", InputSettings(rtsp_transport="udp")).options["rtsp_transport"] == "udp"
    udp = parse_input("udp://127.0.0.1:5000")
    assert udp.live and udp.options["overrun_nonfatal"] == "1"
    sdp = parse_input("cam.sdp")
    assert sdp.live and sdp.format == "sdp" and "udp" in sdp.options["protocol_whitelist"]
    http = parse_input("https://example.invalid/live.m3u8")
    assert http.live and not http.reconnects_at_eof
    with pytest.raises(UsageError, match="unsupported input protocol gopher"):
        parse_input("gopher://x/y")
    with pytest.raises(UsageError, match="rtsp_transport"):
        parse_input("rtsp://h/x", InputSettings(rtsp_transport="sctp"))


def test_listen_mode():
    rtsp = parse_input("rtsp://127.0.0.1:8554/in", InputSettings(listen=True))
    assert rtsp.kind == "listen" and rtsp.format == "rtsp" and rtsp.options["rtsp_flags"] == "listen"
    assert parse_input("tcp://127.0.0.1:9000", InputSettings(listen=True)).options == {"listen": "1"}
    assert parse_input("srt://127.0.0.1:9000", InputSettings(listen=True)).options == {"mode": "listener"}
    assert parse_input("rtmp://127.0.0.1/live/x", InputSettings(listen=True)).options == {"listen": "1"}
    with pytest.raises(UsageError, match="--listen works for"):
        parse_input("udp://127.0.0.1:9000", InputSettings(listen=True))
    with pytest.raises(UsageError, match="--listen needs a URL"):
        parse_input("film.mkv", InputSettings(listen=True))


def test_webcams():
    cam = parse_input("webcam:2", InputSettings(input_size="1280x720", input_rate=30, input_format="mjpeg"))
    assert cam.kind == "webcam" and cam.target == "/dev/video2" and cam.format == "v4l2"
    assert cam.options == {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}
    assert parse_input("/dev/video0").target == "/dev/video0"
    with pytest.raises(UsageError, match="WxH"):
        parse_input("webcam:0", InputSettings(input_size="720p"))
    with pytest.raises(UsageError, match="are for webcams"):
        parse_input("rtsp://h/x", InputSettings(input_rate=25))
