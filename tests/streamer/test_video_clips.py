"""Video models in the stream: clips of ``clip_len`` frames overlapping by ``clip_overlap``, blended
with linear ramps, combined with spatial tiles; the noise level of non-blind denoisers; RVRT from the
command line (streamer/windows.py, streamer/pipeline.py, streamer/workers.py, pipelines/restorer.py).

In-memory tests drive the real stages (Cutter -> DeviceWorker with its Restorer -> Stitcher) without
a codec, so they can demand exact values; end-to-end tests use real files through PyAV.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import astuple
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch

import streamer
from checkpoint_server import server, zoo_env  # noqa: F401  (fixtures)
from pipelines import zoo
from pipelines.loading import load_model
from pipelines.restorer import Restorer, describe_model
from streamer.cli import main
from streamer.errors import UsageError
from streamer.frames import Frame
from streamer.windows import Cutter, Stitcher, WorkResult, window_settings
from streamer.workers import DeviceWorker
from toy_models import (ClipPosition, Identity, NoiseLevelEcho, TemporalMean, VideoIdentity, psnr, save_tiny_rvrt,
                        save_tiny_swinir, tiny_rvrt)

ROOT = Path(__file__).resolve().parents[2]


# -- helpers ---------------------------------------------------------------------------------------


def random_frames(n: int, h: int = 37, w: int = 53, seed: int = 0) -> List[Frame]:
    """Noise frames: every frame different, so a dropped, duplicated or swapped frame shows."""
    rng = np.random.default_rng(seed)
    return [Frame(i, 3 * i, Fraction(1, 90), rng.integers(0, 256, (h, w, 3)).astype(np.uint8)) for i in range(n)]


def stream(frames: List[Frame], model, clip_len: int, clip_overlap: int, tile: int = 0, tile_overlap: int = 0,
           sigma: Optional[float] = None) -> List[Tuple[Frame, Frame]]:
    """The pipeline's stages in this thread: cut, restore with the in-process worker, stitch."""
    cutter = Cutter(clip_len, clip_overlap, tile, tile_overlap, scale=describe_model(model).scale)
    inbox: "queue.Queue" = queue.Queue()
    for frame in frames:
        for item in cutter.push(frame):
            inbox.put(item)
    for item in cutter.finish():
        inbox.put(item)
    inbox.put(None)
    results = []
    DeviceWorker(model, sigma=sigma).run(inbox, results.append, threading.Event())
    stitcher = Stitcher(cutter.layout)
    out = []
    for result in results:
        out += stitcher.add(result)
    return out + stitcher.finish()


def official_clip_starts(n: int, clip_len: int, overlap: int) -> List[int]:
    """Where clips start, as the official RVRT test computes it (``d_idx_list``)."""
    if n <= clip_len:
        return [0]
    return list(range(0, n - clip_len, clip_len - overlap)) + [n - clip_len]


def assert_in_order_once(out: List[Tuple[Frame, Frame]], frames: List[Frame]) -> None:
    assert [src.index for src, _ in out] == [f.index for f in frames], "every frame once, in order"
    for (src, restored), frame in zip(out, frames):
        assert src is frame
        assert (restored.index, restored.pts, restored.time_base) == (frame.index, frame.pts, frame.time_base)


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def brightening(src_images, out_images) -> float:
    """Mean grey-level increase from input to output where the input leaves room for it."""
    diffs = []
    for s, o in zip(src_images, out_images):
        room = s < 200
        diffs.append(o[room].astype(float).mean() - s[room].astype(float).mean())
    return float(np.mean(diffs))


@pytest.fixture(scope="module")
def rvrt_files(tmp_path_factory) -> dict:
    """Small random RVRT checkpoints in the official layout, one per video task."""
    directory = tmp_path_factory.mktemp("rvrt")
    return {task: save_tiny_rvrt(directory / f"rvrt_{task}.pth", task)
            for task in ("vsr", "video-deblur", "video-denoise")}


# -- clip stitching: exact identity ------------------------------------------------------------------


@pytest.mark.parametrize("n,clip_len,overlap,tile,tile_overlap,scale,multiple", [
    (5, 8, 2, 0, 0, 1, 1),      # the stream is shorter than one clip
    (1, 4, 1, 0, 0, 1, 1),      # a single frame
    (8, 8, 3, 0, 0, 1, 1),      # exactly one clip
    (12, 4, 0, 0, 0, 1, 1),     # overlap 0, clips divide the stream
    (13, 4, 0, 0, 0, 1, 1),     # overlap 0, they do not (the last clip is aligned to the end)
    (23, 6, 2, 0, 0, 1, 1),     # uneven
    (17, 5, 4, 0, 0, 1, 1),     # heavy overlap: frames in up to five clips
    (11, 4, 1, 24, 8, 1, 8),    # 3-D tiles (clips x spatial tiles), the model pads to 8
    (9, 3, 1, 20, 6, 2, 1),     # x2 model, 3-D tiles
    (14, 6, 2, 17, 5, 1, 4),    # odd tile and overlap, padding to 4
])
def test_identity_video_model_comes_back_exactly(n, clip_len, overlap, tile, tile_overlap, scale, multiple):
    model = VideoIdentity(clip_len=clip_len, scale=scale, size_multiple=multiple)
    frames = random_frames(n)
    out = stream(frames, model, clip_len, overlap, tile, tile_overlap)
    assert_in_order_once(out, frames)
    for (_, restored), frame in zip(out, frames):
        expected = frame.image.repeat(scale, axis=0).repeat(scale, axis=1)
        assert np.array_equal(restored.image, expected)
    # The model saw whole clips (B=1, T frames), never single frames or a batch of frames.
    tiles = len(Cutter(1, 0, tile, tile_overlap).push(frames[0]))
    clips = len(official_clip_starts(n, clip_len, overlap))
    assert len(model.seen) == clips * tiles
    assert {shape[:2] for shape in model.seen} == {(1, min(n, clip_len))}


def test_identity_video_model_end_to_end_matches_the_per_frame_path(clip_factory, decode, tmp_path):
    """Through real files: clips x tiles of a video identity give the very frames a per-frame
    identity gives (same encoder input, so the same decoded output), timestamps kept."""
    clip = clip_factory(frames=19, width=48, height=40, pts=[3 * i + (i % 2) for i in range(19)],
                        time_base=Fraction(1, 90))
    video, frame = tmp_path / "video.mp4", tmp_path / "frame.mp4"
    model = VideoIdentity(clip_len=6)
    stats = streamer.run(clip.path, video, model=model, workers=0, clip_overlap=2, tile=24, tile_overlap=8, crf=0)
    # 19 frames: clips start at 0, 4, 8, 12 and 13 (aligned to the end), each cut into 2 x 3 tiles.
    assert [shape[:2] for shape in model.seen] == [(1, 6)] * 5 * 6
    streamer.run(clip.path, frame, model=Identity(), workers=0, crf=0)
    a, b, src = decode(video), decode(frame), decode(clip.path)
    assert len(a.images) == len(src.images) == 19 and stats.frames_out == 19
    assert [Fraction(p) * a.time_base for p in a.pts] == [Fraction(p) * src.time_base for p in src.pts]
    for x, y in zip(a.images, b.images):
        assert np.array_equal(x, y)


# -- clip stitching: linear ramps -----------------------------------------------------------------------


@pytest.mark.parametrize("n,clip_len,overlap,tile,tile_overlap", [
    (23, 8, 3, 0, 0),      # regular overlaps of 3
    (22, 8, 2, 0, 0),      # the last clip, aligned to the end, overlaps its neighbour by 6
    (12, 4, 0, 0, 0),      # no overlap: no blending
    (5, 8, 2, 0, 0),       # shorter than a clip
    (22, 8, 2, 20, 6),     # with spatial tiles
])
def test_overlapping_clips_blend_with_linear_ramps(n, clip_len, overlap, tile, tile_overlap):
    """ClipPosition paints green = 16 * (position in its clip); where two clips share frames, the
    result must move from one clip's value to the other's with weights (j + 0.5) / m."""
    frames = random_frames(n, seed=1)
    out = stream(frames, ClipPosition(clip_len), clip_len, overlap, tile, tile_overlap)
    assert_in_order_once(out, frames)
    starts = official_clip_starts(n, clip_len, overlap)
    step = ClipPosition.STEP
    blended = 0
    for (_, restored), frame in zip(out, frames):
        i = frame.index
        covering = [s for s in starts if s <= i < s + clip_len]
        assert 1 <= len(covering) <= 2, "these settings put a frame in at most two clips"
        if len(covering) == 1:
            expected = step * (i - covering[0])
        else:
            a, b = covering
            m = a + clip_len - b                   # frames the two clips share
            w_b = (i - b + 0.5) / m                # linear ramp up for the later clip ...
            expected = step * ((1 - w_b) * (i - a) + w_b * (i - b))   # ... and down for the earlier
            blended += 1
        green = restored.image[..., 1].astype(np.float64)
        assert np.abs(green - expected).max() <= 0.5 + 1e-6, (i, covering, expected, green.min(), green.max())
        # Red and blue pass through: this is frame i, not a neighbour's.
        assert np.array_equal(restored.image[..., [0, 2]], frame.image[..., [0, 2]])
    if overlap and len(starts) > 1:
        assert blended > 0


@pytest.mark.parametrize("model", ["position", "mean"])
@pytest.mark.parametrize("n, clip_len, overlap", [(22, 8, 2), (5, 8, 2), (8, 8, 3), (17, 4, 3), (30, 6, 0), (13, 5, 1)])
def test_restorer_restore_video_agrees_with_the_stream_frame_for_frame(model, n, clip_len, overlap):
    """``Restorer.restore_video`` (whole video in memory) and the streaming cutter + stitcher cut and
    blend alike, frame for frame (one path: pipelines.clips), whether clips overlap or the last one is
    aligned to the end; the "mean" model's outputs are fractional, so the blend's rounding must agree too."""
    frames = random_frames(n, 16, 24, seed=2)
    net = ClipPosition(clip_len) if model == "position" else TemporalMean(clip_len)
    streamed = stream(frames, net, clip_len, overlap)
    assert [src.index for src, _ in streamed] == list(range(n))
    whole = Restorer(net).restore_video(np.stack([f.image for f in frames]), clip_len=clip_len, clip_overlap=overlap)
    assert whole.shape == (n, 16, 24, 3)
    for (source, restored), image in zip(streamed, whole):
        assert np.array_equal(restored.image, image), f"frame {source.index}"


# -- memory: bounded by a few clips --------------------------------------------------------------------


def test_stitcher_emits_every_frame_once_the_next_clip_is_in():
    """After clip k's result, every frame before clip k's start has left the stitcher: it holds at
    most one clip and the frames it shares with the next, however long the stream."""
    clip_len, overlap = 6, 2
    frames = random_frames(100, 4, 4)
    cutter = Cutter(clip_len, overlap, 0, 0)
    items = [it for f in frames for it in cutter.push(f)] + cutter.finish()
    stitcher = Stitcher(cutter.layout)
    emitted: List[int] = []
    for item in items:
        emitted += [src.index for src, _ in stitcher.add(WorkResult(item, item.data.copy()))]
        assert emitted == list(range(item.clip.start)), "frames before this clip are out, in order"
    emitted += [src.index for src, _ in stitcher.finish()]
    assert emitted == list(range(100))


def test_frames_in_flight_stay_a_few_clips_however_long_the_video(clip_factory, decode, tmp_path):
    """A model slower than decoding: bounded queues make decoding wait, so the frames decoded and
    not yet written stay a few clips' worth (without bounds the decoder would run to the end)."""
    n, clip_len = 160, 4
    clip = clip_factory(frames=n, width=16, height=16, audio=False)
    stats = streamer.run(clip.path, tmp_path / "out.mp4", model=VideoIdentity(clip_len=clip_len, delay=0.01),
                         workers=0, clip_overlap=1)
    assert stats.frames_out == n and len(decode(tmp_path / "out.mp4").images) == n
    assert 0 < stats.peak_frames_held <= 12 * clip_len < n // 3


# -- the noise level -------------------------------------------------------------------------------------


def test_sigma_reaches_the_model_as_the_official_test_feeds_it():
    """--sigma 25 on the 0-255 scale arrives as a 4th input channel of 25/255 (the official test's
    noise map): the echo model adds exactly 25 grey levels, on every tile of every clip."""
    frames = random_frames(9, seed=3)
    out = stream(frames, NoiseLevelEcho(clip_len=4), 4, 1, tile=24, tile_overlap=8, sigma=25)
    assert_in_order_once(out, frames)
    for (_, restored), frame in zip(out, frames):
        assert np.array_equal(restored.image, np.minimum(frame.image.astype(int) + 25, 255).astype(np.uint8))


def test_video_denoise_task_passes_sigma_through_run(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=6, width=32, height=24, audio=False)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, task="video-denoise", sigma=25, model=NoiseLevelEcho(clip_len=4), workers=0,
                 crf=0)
    src, out = decode(clip.path), decode(out_path)
    assert 22 < brightening(src.images, out.images) < 28   # 4:2:0 chroma costs a little


@pytest.mark.slow
def test_rvrt_denoiser_gets_sigma_over_255_as_its_noise_channel():
    """The real model: the stream's output is RVRT run on RGB + a sigma/255 channel, which is not
    what another sigma gives."""
    model = tiny_rvrt("video-denoise")
    frames = random_frames(6, 16, 16, seed=4)
    got = np.stack([restored.image for _, restored in stream(frames, model, 6, 1, sigma=25)])
    x = torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float().div(255)[None]

    def official(sigma: float) -> np.ndarray:
        with torch.inference_mode():
            y = model(torch.cat([x, torch.full_like(x[:, :, :1], sigma / 255)], dim=2))[0]
        return y.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()

    want = official(25)
    assert np.abs(got.astype(int) - want).max() <= 1
    assert not np.array_equal(want, official(50)), "sigma changes this model's output"


@pytest.mark.parametrize("options,message", [
    (dict(task="video-denoise"), "--task video-denoise needs --sigma"),
    (dict(task="vsr", sigma=25), "--sigma is for --task video-denoise"),
    (dict(task="video-denoise", sigma=300), "0-255 scale"),
    (dict(model="NOISE-ECHO"), "non-blind denoiser: give the noise level with --sigma"),
    (dict(model="IDENTITY", sigma=25), "--sigma is for models that take a noise level"),
])
def test_sigma_usage_errors(options, message, sample_clip, tmp_path):
    models = {"NOISE-ECHO": NoiseLevelEcho(), "IDENTITY": Identity()}
    if options.get("model") in models:
        options = dict(options, model=models[options["model"]])
    with pytest.raises(UsageError, match=message):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", workers=0, **options)
    assert not list(tmp_path.glob("*out*"))


# -- tasks, models and defaults -------------------------------------------------------------------------


def test_video_models_default_to_the_official_test_tiles_and_their_clip_length(rvrt_files):
    vsr, deblur = (load_model(str(rvrt_files[task])).info for task in ("vsr", "video-deblur"))

    def settings(info, **options) -> tuple:   # (tile, tile overlap, clip length, clip overlap)
        return astuple(window_settings(info, **options))

    assert settings(vsr) == (128, 20, 16, 4)
    assert settings(deblur) == (256, 20, 16, 4)
    assert settings(vsr, tile=64, tile_overlap=8, clip_len=12, clip_overlap=4) == (64, 8, 12, 4)
    assert settings(vsr, clip_len=6) == (128, 20, 6, 1)
    assert settings(describe_model(Identity())) == (512, 32, 1, 0), "per-frame models as before"
    with pytest.raises(UsageError, match="--clip-overlap"):
        settings(vsr, clip_overlap=16)


def test_video_tasks_have_rvrt_defaults():
    for task in ("vsr", "video-deblur", "video-denoise"):
        preset = zoo.default_preset(task)
        assert preset.arch == "rvrt" and preset.task == task and preset.non_commercial
    assert zoo.default_preset("vsr").name == "rvrt-vsr-reds"


def test_task_and_model_must_agree(rvrt_files, sample_clip, tmp_path, capsys):
    swinir_x4 = save_tiny_swinir(tmp_path / "swinir_x4.safetensors", scale=4)
    rvrt_vsr, rvrt_deblur, rvrt_denoise = (rvrt_files[t] for t in ("vsr", "video-deblur", "video-denoise"))
    cases = [
        (["--task", "vsr", "--weights", swinir_x4], "--task vsr needs a video model"),
        (["--task", "video-deblur", "--weights", rvrt_vsr], "needs a x1 model"),
        (["--task", "video-denoise", "--sigma", "25", "--weights", rvrt_deblur], "is a video-deblur model"),
        (["--task", "sr4", "--weights", rvrt_vsr], "is a vsr model, not one for --task sr4"),
        (["--weights", rvrt_denoise], "non-blind denoiser: give the noise level with --sigma"),
        (["--weights", rvrt_vsr, "--sigma", "10"], "--sigma is for models that take a noise level"),
    ]
    for args, message in cases:
        code = main([str(sample_clip.path), str(tmp_path / "out.mp4"), *map(str, args), "-q"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.slow
def test_rvrt_preset_by_name_checks_sigma_before_downloading(rvrt_files, server, zoo_env, clip_factory, decode,
                                                             tmp_path, capsys):
    """--model NAME for an RVRT denoiser preset (served on 127.0.0.1): without --sigma the user is
    told before anything is downloaded; with it the preset downloads and runs."""
    url = server.add("rvrt_denoise.pth", rvrt_files["video-denoise"].read_bytes())
    name = zoo_env.write_preset("test-rvrt-denoise", task="video-denoise", arch="rvrt", file="rvrt_denoise.pth",
                                url=url, licence="CC-BY-NC-4.0", non_commercial=True)
    clip = clip_factory(name="in.mp4", frames=5, width=16, height=16, audio=False)
    assert main([str(clip.path), str(tmp_path / "out.mp4"), "--model", name, "-q"]) == 2
    assert "non-blind denoiser: give the noise level with --sigma" in capsys.readouterr().err
    assert server.requests == [] and not (tmp_path / "out.mp4").exists()
    assert main([str(clip.path), str(tmp_path / "out.mp4"), "--model", name, "--sigma", "15", "-q"]) == 0
    assert len(decode(tmp_path / "out.mp4").images) == 5 and len(server.requests) == 1


@pytest.mark.parametrize("task", ["vsr", "video-denoise"])
def test_video_task_default_offline_and_not_cached_is_one_line(task, sample_clip, tmp_path):
    """The default RVRT preset, not cached, no network (a proxy nobody listens on): the zoo's
    one-line message, exit 2, nothing written and nothing left in the cache."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "nystra_presets")}
    env.update(NYSTRA_HOME=str(home), https_proxy=dead, HTTPS_PROXY=dead, http_proxy=dead, HTTP_PROXY=dead)
    extra = ["--sigma", "25"] if task == "video-denoise" else []
    done = subprocess.run([sys.executable, "-m", "streamer.cli", str(sample_clip.path), str(tmp_path / "out.mp4"),
                           "--task", task, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("nystra-stream: error:")]
    preset = zoo.default_preset(task)
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"fetch {preset.url} and save it as {home / 'models' / preset.file}" in errors[0]
    assert not (tmp_path / "out.mp4").exists()
    assert not (home / "models" / preset.file).exists()


# -- RVRT from the command line ---------------------------------------------------------------------


@pytest.mark.slow
def test_vsr_cli_with_rvrt_weights_on_overlapping_clips(rvrt_files, clip_factory, decode, tmp_path):
    """Acceptance: --task vsr --weights rvrt.pth on 40 frames, clips of 12 overlapping by 4."""
    weights = rvrt_files["vsr"]
    pts = [3 * i + (i % 2) for i in range(40)]            # variable frame rate
    clip = clip_factory(name="in.mp4", frames=40, width=16, height=16, pts=pts, time_base=Fraction(1, 90))
    out_path, stats_path = tmp_path / "out.mp4", tmp_path / "stats.json"
    code = main([str(clip.path), str(out_path), "--task", "vsr", "--weights", str(weights), "--clip-len", "12",
                 "--clip-overlap", "4", "--crf", "0", "--stats", str(stats_path), "-q"])
    assert code == 0
    src, out = decode(clip.path), decode(out_path)
    assert (out.width, out.height, len(out.images)) == (64, 64, 40)
    assert [Fraction(p) * out.time_base for p in out.pts] == [Fraction(p) * src.time_base for p in src.pts]
    assert out.audio_packets == src.audio_packets and src.audio_packets, "audio copied packet for packet"
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 40 and stats["completed"]
    # Frames 0-7 lie in the first clip only: RVRT's output for input frames 0-11 (the random model's
    # frames are ~25 dB from a bicubic upscale; ~45 dB from this reference, the codec's rounding).
    model = load_model(str(weights), attention="nystrom")
    first = Restorer(model).restore(np.stack(src.images[:12]))
    for got, want in zip(out.images[:8], first[:8]):
        assert psnr(luma(got), luma(want)) > 40


@pytest.mark.slow
def test_video_denoise_cli_with_rvrt_weights(rvrt_files, clip_factory, decode, tmp_path):
    """--task video-denoise --sigma 25 with an RVRT denoiser (which refuses to run without a noise
    level): the output is the model run with sigma 25."""
    weights = rvrt_files["video-denoise"]
    clip = clip_factory(name="in.mp4", frames=7, width=16, height=16, degradation="noise", audio=False)
    out_path = tmp_path / "out.mp4"
    code = main([str(clip.path), str(out_path), "--task", "video-denoise", "--sigma", "25", "--weights",
                 str(weights), "--clip-len", "8", "--crf", "0", "-q"])
    assert code == 0
    src, out = decode(clip.path), decode(out_path)
    assert len(out.images) == 7
    model = load_model(str(weights), attention="nystrom")
    want = Restorer(model, sigma=25).restore(np.stack(src.images))
    for got, ref in zip(out.images, want):
        assert psnr(luma(got), luma(ref)) > 40


# -- workers carry clips ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_pool_carries_clips_tiles_and_sigma(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=11, width=40, height=32, audio=False)
    runs = {}
    for workers in (0, 2):
        path = tmp_path / f"out{workers}.mp4"
        stats = streamer.run(clip.path, path, model=VideoIdentity(clip_len=4), workers=workers, clip_overlap=1,
                             tile=24, tile_overlap=8, crf=0)
        runs[workers] = decode(path).images
        assert stats.frames_out == 11
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2])), "pool and in-process agree"
    path = tmp_path / "sigma.mp4"
    streamer.run(clip.path, path, task="video-denoise", sigma=40, model=NoiseLevelEcho(clip_len=4), workers=1,
                 crf=0)
    src, out = decode(clip.path), decode(path)
    assert 37 < brightening(src.images, out.images) < 43
