"""``nystra-stream`` (streamer/cli.py): usage, errors and exit codes, stats, Ctrl-C."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import av
import pytest

from pipelines import zoo
from streamer.cli import main
from toy_models import save_tiny_swinir
from conftest import write_audio_only

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The CLI as a real process (``python -m streamer.cli``, the console script's target)."""
    return subprocess.run([sys.executable, "-m", "streamer.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kwargs)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("nystra-stream: error: ")
    return lines[0]


def nothing_written(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(("out", ".out"))]


# -- bad input: one line, exit code 2, no output (a few as real processes) ---------------------


@pytest.mark.slow
def test_bad_inputs_as_a_real_process(tmp_path, sample_clip):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    audio_only = write_audio_only(tmp_path / "tone.mp4")
    cases = [
        ([tmp_path / "missing.mp4", tmp_path / "out.mp4", "--task", "denoise"], "input file not found"),
        ([text, tmp_path / "out.mp4", "--task", "denoise"], "cannot read"),
        ([audio_only, tmp_path / "out.mp4", "--task", "denoise"], "no video stream"),
        ([sample_clip.path, tmp_path / "out.mp4", "--task", "colorize"], "invalid choice: 'colorize'"),
        ([sample_clip.path, tmp_path / "out.mp4", "--task", "denoise", "--tile", "16", "--tile-overlap", "32"],
         "--tile (16) must be larger than --tile-overlap (32)"),
    ]
    for args, message in cases:
        done = cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in one_error_line(done.stderr)
        assert nothing_written(tmp_path)


@pytest.mark.parametrize("case", ["empty", "no-output-dir", "bad-weights", "unknown-model", "missing-stats-dir",
                                  "fp16-on-cpu"])
def test_bad_usage_in_process(case, tmp_path, sample_clip, capsys):
    out = tmp_path / "out.mp4"
    args = [str(sample_clip.path), str(out), "--task", "denoise"]
    if case == "empty":
        (tmp_path / "empty.mp4").touch()
        args[0], message = str(tmp_path / "empty.mp4"), "input file is empty"
    elif case == "no-output-dir":
        args[1], message = str(tmp_path / "nowhere" / "out.mp4"), "output directory does not exist"
    elif case == "bad-weights":
        bad = tmp_path / "weights.safetensors"
        bad.write_text("not a checkpoint")
        args = args[:2] + ["--weights", str(bad)]
        message = "not a valid safetensors file"
    elif case == "unknown-model":
        args = args[:2] + ["--model", "swinir-huge"]
        message = "unknown model 'swinir-huge'"
    elif case == "missing-stats-dir":
        args += ["--stats", str(tmp_path / "nowhere" / "stats.json")]
        message = "--stats: directory does not exist"
    else:
        args += ["--fp16"]
        message = "--fp16 needs --device cuda"
    assert main(args) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert nothing_written(tmp_path)


def test_missing_bundled_weights_is_a_clear_usage_error(sample_clip, tmp_path, capsys):
    if zoo.default_preset("denoise").available():
        pytest.skip("the bundled denoise weights are installed")
    assert main([str(sample_clip.path), str(tmp_path / "out.mp4"), "--task", "denoise"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "bundled weights for swinir-tiny-denoise are not installed" in line
    assert nothing_written(tmp_path)


def test_failure_while_processing_exits_1_and_leaves_nothing(clip_factory, tmp_path, capsys):
    """A checkpoint that loads but cannot run at this frame size (absolute position
    embedding for 16x16 only): the error comes from the model, mid-run."""
    import torch
    from safetensors.torch import save_file
    from pipelines.models.swinir import SwinIR, SwinIRConfig

    model = SwinIR(SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                upscale=1, upsampler="", ape=True))
    weights = tmp_path / "fixed_size.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    clip = clip_factory(name="in.mp4", frames=3, width=40, height=24)
    code = main([str(clip.path), str(tmp_path / "out.mp4"), "--weights", str(weights), "--workers", "0"])
    assert code == 1
    assert "frame 0" in one_error_line(capsys.readouterr().err)
    assert nothing_written(tmp_path)
    del torch


# -- success: stats, listing ------------------------------------------------------------------


def test_run_with_weights_writes_output_and_stats(clip_factory, decode, tmp_path, capsys):
    clip = clip_factory(name="in.mp4", frames=4, width=40, height=24)
    weights = save_tiny_swinir(tmp_path / "tiny_x2.safetensors", scale=2)
    stats_path = tmp_path / "stats.json"
    code = main([str(clip.path), str(tmp_path / "out.mp4"), "--weights", str(weights), "--workers", "0",
                 "--tile", "16", "--tile-overlap", "4", "--stats", str(stats_path), "--preset", "ultrafast"])
    assert code == 0, capsys.readouterr().err
    out = decode(tmp_path / "out.mp4")
    assert (out.width, out.height, len(out.images)) == (80, 48, 4)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 4
    assert stats["fps"] > 0 and stats["peak_rss_mb"] > 0
    assert stats["latency_ms_p50"] <= stats["latency_ms_p95"]
    assert set(stats["stage_seconds"]) >= {"decode", "model", "encode"}
    assert "wrote" in capsys.readouterr().err


def test_output_may_follow_the_options(clip_factory, tmp_path, capsys):
    """OUTPUT is optional (--serve), and still found after the options (an optional positional
    after optionals needs intermixed parsing: plain parse_args refused it)."""
    clip = clip_factory(name="in.mp4", frames=2, width=32, height=24)
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors")
    code = main([str(clip.path), "--weights", str(weights), "--workers", "0", "-q", str(tmp_path / "out.mkv")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out.mkv").exists()


def test_prefilter_flag_reaches_the_run_and_its_stats(clip_factory, tmp_path, capsys):
    clip = clip_factory(name="in.mp4", frames=2, width=160, height=96, degradation="motion", audio=False)
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors", scale=1)
    stats_path = tmp_path / "stats.json"
    code = main([str(clip.path), str(tmp_path / "out.mp4"), "--weights", str(weights), "--workers", "0",
                 "--prefilter", "motion-wiener", "--stats", str(stats_path)])
    assert code == 0, capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert (stats["prefilter"], stats["frames_deconvolved"]) == ("motion-wiener", 2)
    assert "motion blur found and deconvolved in 2 frames" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:   # argparse's own usage error
        main([str(clip.path), str(tmp_path / "out2.mp4"), "--task", "deblur", "--prefilter", "sharpen"])
    assert exit.value.code == 2
    assert "invalid choice: 'sharpen'" in one_error_line(capsys.readouterr().err)


def test_webm_output_picks_vp9_and_keeps_the_audio(clip_factory, tmp_path, capsys, caplog):
    # Before: the default libx264 could not go into .webm (exit 2) unless --codec was given,
    # and the AAC audio was dropped.
    clip = clip_factory(name="in.mp4", frames=4, width=32, height=24)
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors", scale=1)
    code = main([str(clip.path), str(tmp_path / "out.webm"), "--weights", str(weights), "--workers", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "re-encoded as libopus" in caplog.text
    with av.open(str(tmp_path / "out.webm")) as out:
        assert out.streams.video[0].codec_context.name in ("vp9", "libvpx-vp9")
        assert len(out.streams.audio) == 1 and sum(1 for _ in out.decode(video=0)) == 4


def test_models_lists_the_presets(capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for preset in zoo.presets():
        assert preset.name in listing and preset.task in listing
    assert "denoise -> swinir-tiny-denoise" in listing


def test_models_help_and_stray_arguments(capsys):
    # `models --help` used to print the restore command's help; `models x` read x as INPUT.
    assert main(["models", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: nystra-stream models")
    assert main(["models", "extra.mp4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes no arguments" in err[0]


# -- Ctrl-C -------------------------------------------------------------------------------------


def _children(pid: int) -> list:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class TerminalReader:
    """Collects what the CLI writes to a pseudo-terminal (so tqdm shows its bar)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.text = fd, ""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:   # EIO once the child side is closed
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")

    def frames_done(self) -> int:
        counts = re.findall(r"(\d+)/\d+ \[", self.text)
        return int(counts[-1]) if counts else 0

    def lines(self) -> list:
        """Lines that are not progress-bar updates."""
        parts = re.split(r"[\r\n]+", self.text)
        return [p for p in parts if p.strip() and "frame/s" not in p and "frame [" not in p]


@pytest.mark.slow
@pytest.mark.parametrize("keep_partial", [True, False])
def test_ctrl_c_stops_promptly_and_leaves_a_playable_file_or_nothing(keep_partial, clip_factory, decode, tmp_path):
    clip = clip_factory(name="in.mp4", frames=24, width=320, height=240)
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors")
    # Small tiles with a wide overlap make every frame slow, so once the first frames are
    # out many seconds of work are left: only a prompt stop ends within the guard below.
    args = [clip.path, tmp_path / "out.mp4", "--weights", weights, "--workers", "2", "--tile", "64",
            "--tile-overlap", "48", "--preset", "ultrafast"] + (["--keep-partial"] if keep_partial else [])
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a real terminal's size
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", *map(str, args)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child_fd)
    os.close(child_fd)
    terminal = TerminalReader(main_fd)
    try:
        deadline = time.monotonic() + 240
        while terminal.frames_done() < 2:    # the bar counts frames written to the encoder
            assert proc.poll() is None, terminal.text
            assert time.monotonic() < deadline, "no frame was done in time"
            time.sleep(0.05)
        workers = _children(proc.pid)
        assert workers, "the run has worker processes"
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        proc.wait(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    terminal.thread.join(timeout=5)
    os.close(main_fd)
    # A hang guard, not a speed figure (benchmarks/pipeline.py measures the stop time): more
    # than 20 frames of slow tiles were left when the signal was sent.
    assert stopped_after < 5, f"took {stopped_after:.1f} s to stop"
    assert proc.returncode == 130
    assert "frame/s" in terminal.text and "<" in terminal.text, "the bar shows fps and an ETA"
    lines = terminal.lines()
    assert len(lines) == 1 and lines[0].startswith("nystra-stream: error: interrupted"), lines
    deadline = time.monotonic() + 10   # the kernel needs a moment to take the workers down
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the run"
    assert not list(tmp_path.glob(".out*")), "no temporary file left"
    if keep_partial:
        out = decode(tmp_path / "out.mp4")
        assert 2 <= len(out.images) < 24
        assert out.audio_packets, "the partial file keeps the audio up to its last frame"
        assert f"kept the {len(out.images)} frames done" in lines[0]
    else:
        assert not (tmp_path / "out.mp4").exists()


# A library that swallows everything while it imports (``except BaseException: pass``), hit
# by Ctrl-C in the middle: the KeyboardInterrupt never reaches the CLI. That happened with a
# Ctrl-C 0.3 s after start (during torch's import): the run went on to the end, exit code 0.
_SWALLOWING_IMPORT = """
import importlib.abc, os, signal, sys, time

class SwallowingImport(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, name, path, target=None):
        if name == "torch" and not self.done:
            self.done = True
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
            except BaseException:
                pass
        return None

sys.meta_path.insert(0, SwallowingImport())
from streamer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_libraries_load_is_not_lost(sample_clip, tmp_path):
    out = tmp_path / "out.mp4"
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors")
    proc = subprocess.run([sys.executable, "-c", _SWALLOWING_IMPORT, str(sample_clip.path), str(out),
                           "--weights", str(weights), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 130, proc.stderr
    assert lines == ["nystra-stream: error: interrupted; no output written"]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_live_progress_shows_latency_drops_and_reconnects_instead_of_an_eta():
    from streamer.cli import _live_figures

    stats = {"latency_ms_p50": 61.2, "latency_ms_p95": 134.0, "frames_dropped": 3, "reconnects": 1}
    assert _live_figures(stats) == "latency p50 61 p95 134 ms, 3 dropped, 1 reconnects"
    assert _live_figures(dict(stats, latency_ms_p50=None)) == "3 dropped, 1 reconnects"


def test_announcements_are_said_once_however_often_main_runs_in_a_process(capsys):
    import logging

    from streamer.cli import _announce

    for _ in range(3):
        _announce("streamer.serve")
    logging.getLogger("streamer.serve").info("view at http://127.0.0.1:1/")
    assert capsys.readouterr().err.count("view at") == 1
