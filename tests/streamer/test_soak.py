"""Soak: a long input through the CLI with 2 worker processes — frames exact, memory flat, nothing left open.

10 000 frames of 64x48 (5.6 minutes of 30 fps video) through ``nystra-stream`` with a tiny real SwinIR
checkpoint and ``--workers 2``. The CLI runs in this process (``streamer.cli.main``) so the test can
watch it: its progress hook samples the resident memory of this process and of every worker process
at frame 1 000 and at the last frame, and the file descriptors this process holds are compared before
and after. (A first, short run opens what a process opens once for good — multiprocessing's resource
tracker pipe, the socket that shares tensors with workers — so it comes before the "before".)
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import av
import numpy as np
import pytest

from streamer import cli, samples
from toy_models import save_tiny_swinir

FRAMES, WIDTH, HEIGHT = 10_000, 64, 48


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _worker_pids() -> list:
    """This process's children that are spawned worker processes (not multiprocessing's resource
    tracker, which lives as long as this process)."""
    me = str(os.getpid())
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = fh.read().rsplit(")", 1)[1].split()[1]
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    spawned = b"spawn_main" in fh.read()
                if parent == me and spawned:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _long_input(path: Path) -> None:
    """FRAMES frames, each different (a moving gradient with a frame counter stripe), lossless FFV1."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (HEIGHT, 2 * WIDTH, 3)).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv444p"
        for i in range(FRAMES):
            image = np.ascontiguousarray(base[:, i % WIDTH:i % WIDTH + WIDTH])
            image[:2, :16] = i % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_thousand_frames_through_the_cli_with_two_workers(tmp_path, monkeypatch):
    source, output, weights = tmp_path / "long.mkv", tmp_path / "out.mkv", tmp_path / "tiny.safetensors"
    _long_input(source)
    save_tiny_swinir(weights)
    memory = {}

    class Sampler:
        """Stands in for the progress bar: samples memory at frame 1 000 and at the end."""

        def update_to(self, done: int, total) -> None:
            if done in (1_000, FRAMES):
                workers = _worker_pids()
                memory[done] = (_rss_kib(os.getpid()), max((_rss_kib(p) for p in workers), default=0),
                                 len(workers))

        def close(self) -> None:
            pass

    monkeypatch.setattr(cli, "_progress_bar", lambda disable: Sampler())
    warm_up = tmp_path / "short.mkv"
    samples.write_clip(warm_up, samples.camera_pan(4, WIDTH, HEIGHT), audio=False)
    assert cli.main([str(warm_up), str(tmp_path / "short-out.mkv"), "--weights", str(weights), "--workers", "2",
                     "-q"]) == 0
    # Descriptors are counted once garbage is collected: the run's model parameters live in
    # shared memory (one descriptor each) until the last reference to them goes, which a
    # reference cycle may hold until the collector runs (seen: 59 "left" without this, 0 with it).
    gc.collect()
    fds_before = set(os.listdir("/proc/self/fd"))
    code = cli.main([str(source), str(output), "--weights", str(weights), "--workers", "2", "--codec", "ffv1",
                     "--stats", str(tmp_path / "stats.json")])
    assert code == 0
    import json

    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["frames_in"] == stats["frames_out"] == FRAMES and stats["worker_restarts"] == 0
    with av.open(str(output)) as container:
        pts = [frame.pts for frame in container.decode(video=0)]
    assert len(pts) == FRAMES and pts == sorted(set(pts)), "every frame once, in order"
    (main_1k, worker_1k, n_1k), (main_end, worker_end, n_end) = memory[1_000], memory[FRAMES]
    assert n_1k == n_end == 2, "two worker processes all along"
    assert main_end <= 1.10 * main_1k, f"main process RSS {main_1k} -> {main_end} KiB"
    assert worker_end <= 1.10 * worker_1k, f"worker RSS {worker_1k} -> {worker_end} KiB"
    assert _worker_pids() == [], "no worker process left"
    gc.collect()
    leaked = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - fds_before
              if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"no file descriptor left open: {sorted(leaked.values())[:12]}"
