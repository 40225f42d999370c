"""``streamer.run`` end to end on real files (streamer/pipeline.py)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import streamer
from pipelines import zoo
from pipelines.errors import CheckpointError
from streamer.errors import UsageError
from streamer.flow import WorkItemError
from toy_models import Brighten, FailAfter, FailOnBright, Identity, TemporalMean, psnr, save_tiny_swinir


def leftovers(directory: Path) -> list:
    """Files a failed run must not leave: the output or a temporary partial file."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith((".out", "out")))


def assert_same_timing_and_audio(out, src, scale: int = 1) -> None:
    assert len(out.images) == len(src.images)
    assert (out.width, out.height) == (src.width * scale, src.height * scale)
    assert out.average_rate == src.average_rate
    assert [Fraction(p) * out.time_base for p in out.pts] == [Fraction(p) * src.time_base for p in src.pts]
    assert out.duration == pytest.approx(src.duration, abs=1e-3)
    assert out.audio_packets == src.audio_packets, "audio copied packet for packet"
    assert out.audio_time_base == src.audio_time_base


def test_identity_run_keeps_frames_timing_and_audio(noisy_clip, decode, tmp_path):
    out_path = tmp_path / "out.mp4"
    # crf 0: x264 lossless, so what is left is the RGB <-> YUV round trip
    stats = streamer.run(noisy_clip.path, out_path, model=Identity(), workers=0, crf=0)
    src, out = decode(noisy_clip.path), decode(out_path)
    assert src.audio_packets, "the input has audio"
    assert_same_timing_and_audio(out, src)
    for a, b in zip(out.images, src.images):
        assert psnr(a, b) > 35, "identity model: the output is the input, re-encoded"
    assert stats.frames_in == stats.frames_out == noisy_clip.n_frames and stats.completed
    assert stats.latency_ms_p50 <= stats.latency_ms_p95
    assert set(stats.stage_seconds) == {"decode", "cut", "model", "stitch", "encode"}
    assert stats.peak_rss_mb > 0


def test_the_model_really_changes_the_frames(sample_clip, decode, tmp_path):
    out_path = tmp_path / "out.mp4"
    streamer.run(sample_clip.path, out_path, model=Brighten(20 / 255), workers=0, tile=32, tile_overlap=8)
    src, out = decode(sample_clip.path), decode(out_path)
    diff = np.mean([o.astype(float).mean() - s.astype(float).mean() for o, s in zip(out.images, src.images)])
    assert 17 < diff < 23


@pytest.mark.slow
def test_worker_pool_run_with_tiles(noisy_clip, decode, tmp_path):
    out_path = tmp_path / "out.mp4"
    stats = streamer.run(noisy_clip.path, out_path, model=Identity(), workers=2, tile=24, tile_overlap=8, crf=0)
    src, out = decode(noisy_clip.path), decode(out_path)
    assert_same_timing_and_audio(out, src)
    assert all(psnr(a, b) > 35 for a, b in zip(out.images, src.images))
    assert stats.worker.startswith("2 worker process") and stats.workers_peak_rss_mb > 0


def test_x2_model_doubles_the_size(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=5, width=48, height=32)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=Identity(scale=2), workers=0, tile=20, tile_overlap=6)
    src, out = decode(clip.path), decode(out_path)
    assert_same_timing_and_audio(out, src, scale=2)
    for a, b in zip(out.images, src.images):
        assert psnr(a, b.repeat(2, axis=0).repeat(2, axis=1)) > 30


def test_odd_size_with_odd_tiles(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=3, width=333, height=197, pix_fmt="yuv444p", audio=False)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=Identity(size_multiple=8), workers=0, tile=50, tile_overlap=13, crf=0)
    src, out = decode(clip.path), decode(out_path)
    assert (out.width, out.height) == (333, 197) and len(out.images) == 3
    # Lossless x264 (4:4:4 for the odd size): only RGB <-> YUV rounding is left, so any
    # misplaced tile or seam would show (a 1-pixel shift of this image is ~25 dB).
    assert all(psnr(a, b) > 50 for a, b in zip(out.images, src.images))


def test_variable_frame_rate_keeps_its_timestamps(clip_factory, decode, tmp_path):
    pts = [0, 2, 3, 7, 8, 9, 15, 16]          # irregular gaps, in 1/60 s
    clip = clip_factory(frames=8, pts=pts, time_base=Fraction(1, 60), fps=30)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=Identity(), workers=0)
    src, out = decode(clip.path), decode(out_path)
    src_times = [Fraction(p) * src.time_base for p in src.pts]
    assert src_times == [Fraction(p, 60) for p in pts], "the input really is variable-rate"
    assert [Fraction(p) * out.time_base for p in out.pts] == src_times


def test_tiny_swinir_checkpoints(clip_factory, decode, tmp_path):
    """A real architecture from a checkpoint file, with Nystrom attention, x1 and x2."""
    clip = clip_factory(frames=3, width=40, height=24, degradation="noise")
    for scale in (1, 2):
        weights = save_tiny_swinir(tmp_path / f"tiny_x{scale}.safetensors", scale=scale)
        out_path = tmp_path / f"out{scale}.mp4"
        stats = streamer.run(clip.path, out_path, model=str(weights), attention="nystrom", workers=0,
                             tile=16, tile_overlap=4)
        out = decode(out_path)
        assert (out.width, out.height, len(out.images)) == (40 * scale, 24 * scale, 3)
        assert stats.model == weights.name


def test_video_model_runs_on_overlapping_clips(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=10, width=32, height=24)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=TemporalMean(clip_len=4), workers=0, clip_overlap=2, crf=0)
    src, out = decode(clip.path), decode(out_path)
    assert_same_timing_and_audio(out, src)
    # Frame 0 lies in the first clip only: it is the mean of frames 0-3.
    first = np.mean([im.astype(float) for im in src.images[:4]], axis=0)
    assert psnr(out.images[0], np.rint(first)) > 40


def test_compare_writes_input_and_result_side_by_side(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=3, width=32, height=24)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=Brighten(30 / 255), workers=0, compare=True)
    src, out = decode(clip.path), decode(out_path)
    assert (out.width, out.height) == (64, 24)
    for image, original in zip(out.images, src.images):
        left, right = image[:, :32].astype(float), image[:, 32:].astype(float)
        assert abs(left.mean() - original.mean()) < 2
        assert abs(right.mean() - original.mean() - 30) < 3


def test_compare_resizes_the_input_to_the_output_size(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=2, width=32, height=24, audio=False)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, model=Identity(scale=2), workers=0, compare=True, crf=0)
    src, out = decode(clip.path), decode(out_path)
    assert (out.width, out.height) == (128, 48)
    x = torch.from_numpy(src.images[0]).permute(2, 0, 1)[None].float()
    bicubic = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    bicubic = bicubic[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
    nearest = src.images[0].repeat(2, axis=0).repeat(2, axis=1)
    # (nearest vs bicubic differ at ~22 dB here; 4:2:0 chroma costs the rest)
    assert psnr(out.images[0][:, :64], bicubic) > 32, "left: the input, resized smoothly"
    assert psnr(out.images[0][:, 64:], nearest) > 32, "right: the model's result"


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_failing_item_fails_the_run_and_leaves_nothing(noisy_clip, tmp_path, workers):
    with pytest.raises(WorkItemError, match="RuntimeError: boom"):
        streamer.run(noisy_clip.path, tmp_path / "out.mp4", model=FailOnBright(threshold=0.0), workers=workers)
    assert leftovers(tmp_path) == []


def test_keep_partial_leaves_a_playable_file_of_the_frames_done(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=8)
    out_path = tmp_path / "out.mp4"
    with pytest.raises(WorkItemError, match="out of calls"):
        streamer.run(clip.path, out_path, model=FailAfter(calls=4), workers=0, keep_partial=True)
    out = decode(out_path)
    assert 1 <= len(out.images) <= 4
    assert leftovers(tmp_path) == ["out.mp4"], "the partial file is finalised under its name, no temp left"


def test_cheap_checks_come_before_loading_the_model(sample_clip, tmp_path):
    missing_weights = str(tmp_path / "nope.pth")
    with pytest.raises(UsageError, match="input file not found"):
        streamer.run(tmp_path / "missing.mp4", tmp_path / "out.mp4", model=missing_weights)
    with pytest.raises(UsageError, match="output directory does not exist"):
        streamer.run(sample_clip.path, tmp_path / "no" / "out.mp4", model=missing_weights)
    with pytest.raises(UsageError, match="larger than --tile-overlap"):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", model=missing_weights, tile=16, tile_overlap=32)
    with pytest.raises(CheckpointError, match="not found"):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", model=missing_weights)
    assert leftovers(tmp_path) == []


def test_task_must_match_the_model(sample_clip, tmp_path):
    with pytest.raises(UsageError, match="x2 model"):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", task="sr2", model=Identity(), workers=0)
    with pytest.raises(UsageError, match="unknown task"):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", task="colorize", workers=0)
    assert leftovers(tmp_path) == []


# -- the bundled models (trained separately; skipped until their weights exist) ----------------

# task, degradation, clean frame size, required PSNR gain over the baseline in dB. Sizes where
# the photo is shown at or below its own resolution (as a camera would film it); denoise at
# the acceptance size 640x360. Gains measured through the whole video path (x264 in, x264 at
# the default crf out, yuv420p both ways): denoise +6.7 dB, sr2 +0.6 dB over a bicubic video,
# deblur +1.6 dB (the bundled deblur model misses the issue's +2 dB goal: benchmarks/RESULTS.md).
BUNDLED = [
    ("denoise", "noise", (640, 360), 5.0),
    ("deblur", "blur", (192, 128), 0.5),
    ("sr2", "down2", (192, 128), 0.3),   # baseline: bicubic upscaling, stored as yuv420p too
]


def _as_yuv420p(images):
    """What a video of these RGB frames holds (the restored output went through the same)."""
    return [av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24").reformat(format="yuv420p")
            .to_ndarray(format="rgb24") for im in images]


@pytest.mark.slow
@pytest.mark.parametrize("task,degradation,size,gain", BUNDLED)
def test_bundled_model_restores(task, degradation, size, gain, clip_factory, decode, tmp_path):
    preset = zoo.default_preset(task)
    if not preset.available():
        pytest.skip(f"bundled weights for {preset.name} are not trained yet ({preset.path.name} missing)")
    clip = clip_factory(frames=3, width=size[0], height=size[1], degradation=degradation)
    out_path = tmp_path / "out.mp4"
    streamer.run(clip.path, out_path, task=task)
    src, out = decode(clip.path), decode(out_path)
    assert_same_timing_and_audio(out, src, scale=2 if task == "sr2" else 1)
    baseline = src.images
    if task == "sr2":
        x = torch.from_numpy(np.stack(src.images)).permute(0, 3, 1, 2).float()
        up = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        baseline = _as_yuv420p(up.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy())
    before = np.mean([psnr(b, c) for b, c in zip(baseline, clip.clean)])
    after = np.mean([psnr(o, c) for o, c in zip(out.images, clip.clean)])
    assert after >= before + gain, f"{task}: {before:.2f} dB -> {after:.2f} dB"


@pytest.mark.parametrize("keep_partial", [False, True])
def test_cancel_event_stops_like_ctrl_c(clip_factory, decode, tmp_path, keep_partial):
    # The CLI sets it from its SIGINT handler, so a Ctrl-C that a library swallowed still stops.
    import threading

    clip = clip_factory(frames=12)
    cancel = threading.Event()

    def progress(done, total):
        if done >= 3:
            cancel.set()

    out_path = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        streamer.run(clip.path, out_path, model=Identity(), workers=0, progress=progress, cancel=cancel,
                     keep_partial=keep_partial, queue_size=1)
    if keep_partial:
        assert 3 <= len(decode(out_path).images) < 12
        assert leftovers(tmp_path) == ["out.mp4"]
    else:
        assert leftovers(tmp_path) == []


class ShapeRecorder(Identity):
    """Identity that records the spatial size of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return super().forward(x)


@pytest.mark.parametrize("tile,width,height,expected", [
    (None, 576, 64, {(64, 576)}),       # wider than 512 px but fewer pixels than one tile: whole
    (64, 96, 64, {(64, 56)}),           # asked for: 2 balanced columns, not 64 + 64
    (0, 96, 64, {(64, 96)}),
])
def test_default_tile_leaves_frames_that_fit_whole(clip_factory, tmp_path, tile, width, height, expected):
    # 640x360 frames used to go through 512-px tiles: 2 x 512 columns of work for 640.
    clip = clip_factory(frames=2, width=width, height=height)
    model = ShapeRecorder()
    options = {} if tile is None else {"tile": tile, "tile_overlap": 16}
    streamer.run(clip.path, tmp_path / "out.mp4", model=model, workers=0, **options)
    assert set(model.sizes) == expected


def test_whole_frames_only_when_the_default_tile_would_cut_them_needlessly():
    from streamer.windows import WindowSettings, whole_frames_if_they_fit

    default = WindowSettings(512, 32, 1, 0)
    assert whole_frames_if_they_fit(default, None, 640, 360).tile == 0          # 230k <= 262k px
    assert whole_frames_if_they_fit(default, None, 1280, 720).tile == 512       # too many pixels
    assert whole_frames_if_they_fit(default, 512, 640, 360).tile == 512         # the user's choice


@pytest.mark.parametrize("workers", [0, 1])
def test_nystrom_fallbacks_are_counted_and_give_exact_results(clip_factory, decode, tmp_path, monkeypatch, workers):
    """NYSTRA_NYSTROM_GUARD=0 makes every Nystrom window-head count as broken down: the run then
    computes exact attention throughout (in worker processes too) and reports how often."""
    from pipelines.attention import guard

    clip = clip_factory(frames=2, width=32, height=24, degradation="noise")
    weights = save_tiny_swinir(tmp_path / "tiny.safetensors")
    runs = {}
    for name, attention, level in (("exact", "exact", "1.5"), ("nystrom", "nystrom", "1.5"),
                                   ("fallback", "nystrom", "0")):
        monkeypatch.setenv("NYSTRA_NYSTROM_GUARD", level)            # spawned workers read it
        monkeypatch.setattr(guard, "GUARD", float(level))            # this process read it at import
        out_path = tmp_path / f"{name}.mp4"
        stats = streamer.run(clip.path, out_path, model=str(weights), attention=attention, workers=workers, crf=0)
        runs[name] = (stats, np.stack(decode(out_path).images).astype(np.int16))
    assert runs["exact"][0].attention_fallbacks == 0 and runs["nystrom"][0].attention_fallbacks == 0
    # 2 frames x 2 blocks x 2 heads x the 8x8 windows of the frame padded to 32x24 (12)
    assert runs["fallback"][0].attention_fallbacks == 2 * 2 * 2 * 12
    assert "fell back to exact attention" in runs["fallback"][0].summary()
    assert np.abs(runs["fallback"][1] - runs["exact"][1]).max() <= 1
    assert np.abs(runs["nystrom"][1] - runs["exact"][1]).max() > 1, "Nystrom must differ, or the test proves nothing"


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_motion_prefilter_runs_on_whole_frames_before_the_model(clip_factory, decode, tmp_path, workers):
    """--prefilter motion-wiener finds each frame's line blur and inverts it before the model
    (here the identity), tiles or not; --compare still shows the frames as decoded."""
    clip = clip_factory(frames=3, width=192, height=128, degradation="motion", audio=False, crf=0)
    out_path = tmp_path / "out.mp4"
    stats = streamer.run(clip.path, out_path, model=Identity(), workers=workers, tile=96, tile_overlap=16,
                         prefilter="motion-wiener", crf=0)
    assert (stats.prefilter, stats.frames_deconvolved) == ("motion-wiener", 3)
    assert "deconvolved in 3 frames" in stats.summary()
    src, out = decode(clip.path), decode(out_path)
    for restored, blurred, clean in zip(out.images, src.images, clip.clean):
        assert psnr(restored, clean) > psnr(blurred, clean) + 2

    compare = tmp_path / "out2.mp4"
    streamer.run(clip.path, compare, model=Identity(), workers=0, prefilter="motion-wiener", compare=True, crf=0)
    side = decode(compare).images[0]
    assert psnr(side[:, :192], src.images[0]) > 40 and psnr(side[:, 192:], out.images[0]) > 40


def test_the_deblur_task_prefilters_unless_told_not_to(clip_factory, decode, tmp_path):
    clip = clip_factory(frames=2, width=160, height=96, degradation="motion", audio=False)
    stats = streamer.run(clip.path, tmp_path / "out.mp4", task="deblur", workers=0)
    assert (stats.prefilter, stats.frames_deconvolved) == ("motion-wiener", 2)
    stats = streamer.run(clip.path, tmp_path / "out2.mp4", task="deblur", workers=0, prefilter="none")
    assert (stats.prefilter, stats.frames_deconvolved) == (None, 0)
    stats = streamer.run(clip.path, tmp_path / "out3.mp4", model=Identity(), workers=0)
    assert stats.prefilter is None   # a model without one gets none


def test_bad_prefilter_options_are_usage_errors(noisy_clip, tmp_path):
    with pytest.raises(UsageError, match="unknown prefilter 'sharpen'"):
        streamer.run(noisy_clip.path, tmp_path / "out.mp4", model=Identity(), prefilter="sharpen")
    with pytest.raises(UsageError, match="for per-frame models"):
        streamer.run(noisy_clip.path, tmp_path / "out.mp4", model=TemporalMean(), prefilter="motion-wiener")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failed_run_keeps_its_stats_on_the_run_object(noisy_clip, tmp_path, workers):
    """``streamer.Run``: the stats of a run that failed part-way say what was done (they are not
    attached to the exception)."""
    run = streamer.Run(noisy_clip.path, tmp_path / "out.mp4",
                       streamer.Options(model=FailAfter(3), workers=workers, queue_size=1))
    with pytest.raises(WorkItemError) as caught:
        run.execute()
    assert not hasattr(caught.value, "stats")
    stats = run.stats
    assert not stats.completed and stats.frames_in >= 3 and stats.frames_out <= 3 * max(1, workers)
    assert stats.worker and stats.seconds > 0 and stats.stage_seconds["decode"] > 0
    assert leftovers(tmp_path) == []


def test_unknown_run_options_name_the_closest_one(sample_clip, tmp_path):
    with pytest.raises(UsageError, match=r"unknown option 'tile_overlp' \(did you mean tile_overlap"):
        streamer.run(sample_clip.path, tmp_path / "out.mp4", model=Identity(), tile_overlp=4)
