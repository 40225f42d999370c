"""Real peers for the live-input tests, all on 127.0.0.1: ``ffmpeg`` senders, a
gst-rtsp-server, and a bounded live run through the real pipeline."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import av
import pytest

from streamer.options import options_from_mapping
from streamer.pipeline import Run, Stats

# tests/streamer's toy models (appended, not prepended: its conftest must not shadow another).
sys.path.append(str(Path(__file__).resolve().parent.parent))
from toy_models import Identity  # noqa: E402

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="needs the ffmpeg program")
FFPROBE = shutil.which("ffprobe")


def stream_types(path: Path) -> list:
    """What ffprobe sees in ``path``: its streams' types and codecs."""
    out = subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=30, check=True).stdout
    return sorted((s["codec_type"], s["codec_name"]) for s in json.loads(out)["streams"])


def packet_times(path: Path) -> dict:
    """Per stream type, the start of every packet (seconds, in file order)."""
    times: dict = {"video": [], "audio": []}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size and packet.pts is not None and packet.stream.type in times:
                times[packet.stream.type].append(float(packet.pts * packet.time_base))
    return times


def spans(path: Path) -> dict:
    """Per stream type present, (first, last) packet start in seconds."""
    return {kind: (min(t), max(t)) for kind, t in packet_times(path).items() if t}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(args: List[str]) -> Iterator[subprocess.Popen]:
    """A peer process, killed when the block ends (whatever happens)."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


def sender(output: List[str], seconds: float, size: str = "160x120", rate: int = 25, fmt: str = "mpegts",
           extra_input: Optional[List[str]] = None, audio: Optional[str] = None) -> List[str]:
    """``ffmpeg -re`` encoding a test pattern as H.264 (zerolatency, a keyframe a second) to ``output``;
    with ``audio`` (an encoder: aac, libopus, mp2) a 440 Hz sine too."""
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] if audio else []
    return [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", f"testsrc2=size={size}:rate={rate}", *sound, *(extra_input or []), "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(rate),
            "-pix_fmt", "yuv420p", *(["-c:a", audio] if audio else []), "-f", fmt, *output]


def live_run(input: str, output: str, frames: int, seconds: float = 30.0,
             cancel: Optional[threading.Event] = None, **options) -> Stats:
    """A live run of the identity model that stops (as on Ctrl-C, keeping its output) once
    ``frames`` frames are written, ``cancel`` is set or after ``seconds``; returns its stats."""
    cancel = cancel or threading.Event()
    timer = threading.Timer(seconds, cancel.set)

    def progress(done: int, total) -> None:
        if done >= frames:
            cancel.set()

    options.setdefault("model", Identity())
    opts = options_from_mapping(dict(workers=0, tile=0, keep_partial=True, progress=progress,
                                     cancel=cancel, **options))
    run = Run(input, output, opts)
    timer.start()
    try:
        run.execute()
    except KeyboardInterrupt:
        pass
    finally:
        timer.cancel()
    return run.stats




def listening(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` (read from /proc: connecting would be a client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Background:
    """``live_run`` on a thread; ``result()`` joins it (re-raising its error)."""

    def __init__(self, *args, **kwargs) -> None:
        self.stats: Optional[Stats] = None
        self.error: Optional[BaseException] = None
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, daemon=True)
        self._thread.start()

    def _run(self, *args, **kwargs) -> None:
        try:
            self.stats = live_run(*args, cancel=self.cancel, **kwargs)
        except BaseException as err:
            self.error = err

    def result(self, timeout: float = 20.0) -> Stats:
        self.cancel.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the live run did not stop"
        if self.error is not None:
            raise self.error
        return self.stats
