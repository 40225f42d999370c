"""``--serve`` on real runs: headless Chromium watching a live run, concurrent MJPEG viewers,
and the CLI (file input, token, refusals)."""
from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.options import options_from_mapping
from streamer.pipeline import Run

from chromium import Chromium, needs_chromium
from mjpeg_client import MjpegReader, get, get_json

sys.path.append(str(Path(__file__).resolve().parent.parent))
from toy_models import Identity  # noqa: E402

LIVE_SOURCE = "lavfi:testsrc2=size=320x240:rate=15"   # a moving picture, paced at real time
TOKEN = "a-long-enough-token"


class ServedRun:
    """A run on a thread, with ``--serve 0``; ``port`` once it serves, ``stop()`` as on Ctrl-C."""

    def __init__(self, input: str, output=None, **options) -> None:
        self.cancel = threading.Event()
        options.setdefault("model", Identity())
        options.setdefault("workers", 0)
        options.setdefault("tile", 0)
        self.run = Run(input, output, options_from_mapping(dict(serve="0", cancel=self.cancel, **options)))
        self.error = None
        self._thread = threading.Thread(target=self._execute, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while self.run.view is None or self.run.view.port is None:
            assert self._thread.is_alive() and time.monotonic() < deadline, f"never served ({self.error})"
            time.sleep(0.05)
        self.port = self.run.view.port

    def _execute(self) -> None:
        try:
            self.run.execute()
        except KeyboardInterrupt:
            pass
        except BaseException as err:
            self.error = err

    def stop(self, wait_for_the_end: bool = False):
        if not wait_for_the_end and not self.run.finish_input():
            self.cancel.set()
        self._thread.join(20)
        assert not self._thread.is_alive(), "the run did not stop"
        if self.error is not None:
            raise self.error
        return self.run.stats


def png_pixels(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def region(pixels: np.ndarray, box: dict) -> np.ndarray:
    x, y = int(box["x"]), int(box["y"])
    return pixels[y:y + int(box["height"]), x:x + int(box["width"])].astype(np.int16)


BOX = "JSON.stringify(document.querySelector('{}').getBoundingClientRect())"


@needs_chromium
@pytest.mark.slow
def test_chromium_sees_the_live_picture_change_and_the_stats_panel():
    served = ServedRun(LIVE_SOURCE)
    try:
        async def browse():
            async with Chromium(1280, 720) as page:
                await page.goto(f"http://127.0.0.1:{served.port}/?compare=1")
                await page.wait_for("document.querySelector('#restored').naturalWidth > 0 && "
                                    "document.querySelector('#input').naturalWidth > 0")
                await page.wait_for("document.querySelector('#figures dd') !== null")
                first = await page.screenshot()
                frames_first = await page.evaluate("document.querySelector('dd[data-name=\"frames out\"]').textContent")
                await asyncio.sleep(1.0)
                await page.wait_for(f"document.querySelector('dd[data-name=\"frames out\"]').textContent "
                                    f"!== {json.dumps(frames_first)}", timeout=5)
                second = await page.screenshot()
                boxes = {name: json.loads(await page.evaluate(BOX.format(name)))
                         for name in ("#restored", "#input", "#stats")}
                panel = await page.evaluate("document.querySelector('#stats').innerText")
                watching = get_json(served.port)   # while the page is open
                return first, second, boxes, panel, watching
        first, second, boxes, panel, stats_now = asyncio.run(asyncio.wait_for(browse(), 60))
        status, _, metrics = get(served.port, "/metrics")
    finally:
        stats = served.stop()
    a, b = png_pixels(first), png_pixels(second)
    assert a.shape == b.shape == (720, 1280, 3)
    video = boxes["#restored"]
    assert video["width"] >= 200 and video["height"] >= 150
    moved = np.abs(region(a, video) - region(b, video)).mean()
    assert moved > 2, f"the video area did not change between screenshots ({moved:.2f})"
    assert np.abs(region(b, boxes["#input"])).std() > 10, "the input view is blank"
    panel_pixels = region(b, boxes["#stats"])
    assert panel_pixels.size and panel_pixels.std() > 5, "the stats panel is not drawn"
    for name in ("frames out", "fps", "latency p50", "dropped", "viewers"):
        assert name in panel
    assert stats_now["live"] is True and stats_now["frames_out"] > 0 and stats_now["viewers"] >= 2
    assert status == 200 and b"nystra_frames_out_total" in metrics
    assert stats.completed and stats.output is None
    assert stats.serve["viewers_peak"] >= 2 and stats.serve["jpeg_encoded"] > 0


@pytest.mark.slow
def test_three_viewers_cost_the_pipeline_under_five_percent():
    """Structural: the writer's time posting to the board plus all JPEG encoding (as if every
    encode were taken from the pipeline), as a share of the run, with three viewers watching
    the bundled denoiser; and one encoding per frame, not per viewer."""
    served = ServedRun("lavfi:testsrc2=size=320x240:rate=10", model=None, task="denoise", tile=None)
    readers = [MjpegReader(served.port) for _ in range(3)]
    try:
        parts = [reader.parts(4) for reader in readers]
        time.sleep(3.0)
    finally:
        for reader in readers:
            reader.close()
        stats = served.stop()
    assert all(len(p) == 4 for p in parts)
    serve = stats.serve
    assert serve["viewers_peak"] == 3
    assert serve["jpeg_encoded"] <= stats.frames_out
    cost = (serve["post_seconds"] + serve["jpeg_seconds"]) / stats.seconds
    assert cost <= 0.05, f"serving three viewers took {cost:.1%} of the run"


def test_a_run_without_viewers_encodes_nothing(tmp_path, clip_factory):
    clip = clip_factory(frames=12)
    served = ServedRun(str(clip.path), str(tmp_path / "out.mkv"))
    stats = served.stop(wait_for_the_end=True)
    assert stats.completed and stats.frames_out == 12
    assert stats.serve["jpeg_encoded"] == 0 and stats.serve["viewers_peak"] == 0
    assert (tmp_path / "out.mkv").exists()


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_watches_a_file_run_behind_a_token(tmp_path, clip_factory):
    clip = clip_factory(frames=90, width=160, height=120)
    out, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    proc = cli(str(clip.path), str(out), "--task", "denoise", "--workers", "0", "--serve", "127.0.0.1:0",
               "--serve-token", TOKEN, "--stats", str(stats_path), "-q")
    try:
        line = proc.stderr.readline()
        match = re.search(r"view at http://127\.0\.0\.1:(\d+)/ \(send the token\)", line)
        assert match, line
        port = int(match.group(1))
        assert get(port, "/stats")[0] == 401
        status, _, body = get(port, "/stats", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and json.loads(body)["frames_total"] == 90
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    stats = json.loads(stats_path.read_text())
    assert stats["frames_out"] == 90 and stats["serve"]["refused"] >= 1
    assert out.exists()


@pytest.mark.parametrize("args, message", [
    (["--serve", "0.0.0.0:0"], "needs --serve-token"),
    (["--serve", "192.168.1.2:8080"], "needs --serve-token"),
    ([], "required: OUTPUT"),
    (["--serve", "host:"], "expected [HOST:]PORT"),
    (["out.mp4", "--serve-token", TOKEN], "--serve-token is for --serve"),
])
def test_cli_refuses_before_serving(tmp_path, clip_factory, args, message):
    clip = clip_factory(frames=2)
    work = tmp_path / "work"
    work.mkdir()
    proc = cli(str(clip.path), *args, "--task", "denoise", cwd=work)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert list(work.iterdir()) == []
