"""Acceptance 3: a sender that goes away and comes back, and a server that never sends."""
from __future__ import annotations

import socket
import threading
import time

import av
import numpy as np

from live_peers import Background, free_port, listening, needs_ffmpeg, process, sender, wait_until

COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}


@needs_ffmpeg
def test_sender_killed_and_restarted_twice_reconnects_twice(tmp_path):
    port = free_port()
    out = tmp_path / "out.mkv"
    run = Background(f"tcp://127.0.0.1:{port}", str(out), frames=10_000, seconds=35, listen=True)
    for colour in COLOURS:
        wait_until(lambda: listening(port), 15, "the run did not listen (again)")
        args = sender([f"tcp://127.0.0.1:{port}"], seconds=20,
                      extra_input=["-f", "lavfi", "-i", f"color=c={colour}:size=160x120:rate=25"])
        # the second input (a plain colour) is what is sent: each part is recognisable
        args[args.index("-t"):args.index("-t")] = ["-map", "1:v"]
        with process(args):
            time.sleep(2.0)   # killed mid-stream
    stats = run.result()
    assert stats.reconnects == 2
    with av.open(str(out)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24").reshape(-1, 3).mean(0)) for f in c.decode(video=0)]
    seen = {name for _, mean in frames for name, rgb in COLOURS.items() if np.abs(mean - rgb).max() < 40}
    assert seen == set(COLOURS)
    times = [t for t, _ in frames]
    assert all(b > a for a, b in zip(times, times[1:]))


def test_a_server_that_accepts_and_never_sends_is_a_stall_retried(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted, held = [], []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(time.monotonic())
            held.append(conn)   # accepted, never a byte sent

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        run = Background(f"tcp://127.0.0.1:{server.getsockname()[1]}", str(tmp_path / "out.mkv"), frames=1,
                         seconds=30, stall_timeout=1.0, reconnect=2)
        t0 = time.monotonic()
        try:
            run.result(timeout=20)
            raise AssertionError("the run should have given up")
        except Exception as err:
            assert "gave up after 2 reconnect tries" in str(err) and "stalled" in str(err)
        assert len(accepted) == 3                      # the first try and two retries
        assert accepted[1] - accepted[0] < 1.0 + 1.5   # a stall noticed within the timeout (+ backoff)
        assert time.monotonic() - t0 < 15
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
