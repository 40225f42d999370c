"""The view server against real HTTP clients on 127.0.0.1 (frames posted by a test thread)."""
import os
import socket
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.errors import UsageError
from streamer.serve import FrameBoard, ServeAddress, open_view

from mjpeg_client import MjpegReader, decode_jpeg, get, get_json
from test_board import gradient, psnr

TOKEN = "a-long-enough-token"


def snapshot():
    return {"frames_in": 7, "frames_out": 5, "fps": 2.5, "latency_ms_p50": 120.0, "latency_ms_p95": 300.0,
            "latency_ms_p99": None, "drop_reasons": {"late": 2}, "frames_dropped": 2, "reconnects": 1,
            "stalls": 1, "elapsed_s": 3.0, "input": "in", "output": None}


@pytest.fixture
def board():
    return FrameBoard()


@pytest.fixture
def server(board):
    view = open_view(ServeAddress("127.0.0.1", 0), board, snapshot)
    try:
        yield view
    finally:
        view.stop()


class Poster:
    """Posts a moving gradient to the board at ``fps`` until stopped."""

    def __init__(self, board: FrameBoard, fps: float = 30.0, size=(90, 120)) -> None:
        self.board, self.period, self.size = board, 1 / fps, size
        self.posted = 0
        self.post_seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            picture = gradient(*self.size, shift=self.posted * 8)
            t0 = time.perf_counter()
            self.board.post(self.posted, picture, 255 - picture)
            self.post_seconds += time.perf_counter() - t0
            self.posted += 1
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_stats_and_metrics(server):
    stats = get_json(server.port)
    assert stats["frames_out"] == 5 and stats["viewers"] == 0
    status, headers, body = get(server.port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert samples[("nystra_frames_out_total", ())] == 5
    assert samples[("nystra_frames_dropped_total", (("reason", "late"),))] == 2
    assert samples[("nystra_latency_seconds", (("quantile", "0.95"),))] == pytest.approx(0.3)
    assert ("nystra_latency_seconds", (("quantile", "0.99"),)) not in samples   # none yet: left out
    assert samples[("nystra_viewers", ())] == 0


def test_page_names_its_parts(server):
    status, headers, body = get(server.port, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    for part in ("/stream.mjpg", "/stats", 'id="stats"', "compare"):
        assert part in page


def test_snapshot(server, board):
    status, headers, _ = get(server.port, "/snapshot.jpg")
    assert status == 503 and headers["retry-after"] == "1"
    picture = gradient(90, 120)
    board.post(0, picture, 255 - picture)
    for view, expected in (("restored", 255 - picture), ("input", picture)):
        status, headers, body = get(server.port, f"/snapshot.jpg?view={view}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert psnr(decode_jpeg(body), expected) > 28
    assert get(server.port, "/snapshot.jpg?view=nope")[0] == 400


def test_a_stream_shows_successive_frames(server, board):
    poster = Poster(board)
    try:
        with MjpegReader(server.port) as reader:
            assert reader.status == 200 and reader.boundary
            pictures = [decode_jpeg(p) for p in reader.parts(4)]
    finally:
        poster.stop()
    assert all(p.shape == (90, 120, 3) for p in pictures)
    assert all(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(pictures, pictures[1:])), "frames repeat"


def test_viewers_share_one_encoding_per_frame_and_a_stalled_viewer_costs_nothing(server, board):
    stalled = socket.create_connection(("127.0.0.1", server.port))   # asks for the stream, never reads
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    poster = Poster(board, fps=30, size=(360, 640))
    readers = [MjpegReader(server.port) for _ in range(3)]
    try:
        got = [reader.parts(15) for reader in readers]
        viewers = get_json(server.port)["viewers"]
        time.sleep(1.0)   # the stalled viewer's socket fills up meanwhile
    finally:
        poster.stop()
        for reader in readers:
            reader.close()
        stalled.close()
    assert viewers == 4
    assert all(len(parts) == 15 for parts in got)
    report = server.report()
    assert report["viewers_peak"] == 4
    # Once per posted version at most, however many watch (here four viewers, one stalled).
    assert report["jpeg_encoded"] <= poster.posted
    # Posting is a reference swap: microseconds a frame, whoever watches (generous: a shared CPU).
    assert poster.post_seconds / poster.posted < 0.002


def test_stop_ends_the_streams_promptly(board):
    view = open_view(ServeAddress("127.0.0.1", 0), board, snapshot)
    board.post(0, gradient(16, 16), gradient(16, 16))
    reader = MjpegReader(view.port)
    assert reader.part() is not None
    started = time.monotonic()
    view.stop()
    assert reader.part() is None   # the stream ended
    assert time.monotonic() - started < 2.0
    reader.close()


def test_token_guards_everything(board):
    view = open_view(ServeAddress("127.0.0.1", 0), board, snapshot, token=TOKEN)
    try:
        for path in ("/", "/stats", "/metrics", "/snapshot.jpg", "/stream.mjpg", "/nowhere"):
            status, headers, body = get(view.port, path)
            assert status == 401 and b"token" in body and "nystra" not in body.decode().replace("nystra-stream", "")
            assert headers["www-authenticate"].startswith("Bearer")
        assert get(view.port, "/stats", {"Authorization": "Bearer wrong-token-xx"})[0] == 401
        assert get(view.port, "/stats?token=wrong-token-xx")[0] == 401
        assert get(view.port, "/stats", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(view.port, f"/stats?token={TOKEN}")[0] == 200
        assert view.report()["refused"] == 8
    finally:
        view.stop()


def test_a_port_in_use_is_a_usage_error(board):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match="cannot listen"):
            open_view(ServeAddress("127.0.0.1", port), board, snapshot)


def test_a_stopped_server_leaves_no_file_descriptor_open(board):
    """Its event loop is closed too (before: 3 descriptors left per server, seen in the soak test)."""
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        open_view(ServeAddress("127.0.0.1", 0), board, snapshot).stop()
    assert set(os.listdir("/proc/self/fd")) - before == set()
