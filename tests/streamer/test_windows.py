"""Clip windows, tiles and the stitcher (streamer/windows.py)."""
from __future__ import annotations

from fractions import Fraction
from typing import Callable, List

import numpy as np
import pytest

from streamer.errors import ProcessingError, UsageError
from streamer.frames import Frame
from streamer.windows import ClipWindower, Cutter, Stitcher, WorkResult, check_window_options


def make_frames(n: int, h: int = 20, w: int = 30, seed: int = 0, pts_step: int = 1) -> List[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(i, i * pts_step, Fraction(1, 30), rng.integers(0, 256, (h, w, 3)).astype(np.uint8))
            for i in range(n)]


def run_through(frames: List[Frame], cutter: Cutter, restore: Callable) -> List:
    """Cut, "restore" each item with ``restore(item) -> (T, h*s, w*s, 3)``, stitch."""
    items = []
    for frame in frames:
        items += cutter.push(frame)
    items += cutter.finish()
    assert [it.index for it in items] == list(range(len(items)))
    stitcher = Stitcher(cutter.layout)
    out = []
    for item in items:
        out += stitcher.add(WorkResult(item, restore(item)))
    return out + stitcher.finish()


@pytest.mark.parametrize("n,clip_len,overlap", [(1, 1, 0), (9, 1, 0), (13, 5, 2), (12, 4, 0), (10, 4, 3),
                                                (3, 5, 2), (5, 5, 1), (6, 5, 1), (20, 6, 2)])
def test_clip_windows_cover_every_frame_without_gaps(n, clip_len, overlap):
    windower = ClipWindower(clip_len, overlap)
    frames = make_frames(n, 2, 2)
    clips = [c for c in (windower.push(f) for f in frames) if c is not None]
    last = windower.finish()
    if last is not None:
        clips.append(last)
    covered = set()
    prev_end = None
    for clip in clips:
        indices = [f.index for f in clip.frames]
        assert indices == list(range(clip.start, clip.start + len(indices))), "consecutive frames"
        assert len(indices) == min(clip_len, n), "every clip full length (unless the stream is shorter)"
        expected_overlap = 0 if prev_end is None else prev_end - clip.start
        assert clip.overlap == expected_overlap
        if prev_end is not None and clip is not clips[-1]:
            assert clip.overlap == overlap, "regular clips overlap by the setting"
        covered.update(indices)
        prev_end = indices[-1] + 1
    assert covered == set(range(n))
    assert prev_end == n


def test_per_frame_windows_emit_each_frame_at_once():
    windower = ClipWindower(1, 0)
    for frame in make_frames(4, 2, 2):
        clip = windower.push(frame)
        assert clip is not None and clip.frames == [frame] and clip.overlap == 0
    assert windower.finish() is None


@pytest.mark.parametrize("tile,overlap,clip_len,clip_overlap", [
    (0, 0, 1, 0), (64, 16, 1, 0), (50, 13, 1, 0), (17, 11, 1, 0), (40, 7, 4, 2), (0, 0, 3, 1), (33, 5, 5, 4),
])
def test_identity_through_cutter_and_stitcher_is_exact(tile, overlap, clip_len, clip_overlap):
    """333x197 (not a multiple of anything) with odd tile and clip settings."""
    frames = make_frames(7, 197, 333)
    cutter = Cutter(clip_len, clip_overlap, tile, overlap, scale=1)
    out = run_through(frames, cutter, lambda item: item.data.copy())
    assert [src.index for src, _ in out] == list(range(7)), "each frame once, in order"
    for (src, restored), frame in zip(out, frames):
        assert src is frame
        assert (restored.index, restored.pts, restored.time_base) == (frame.index, frame.pts, frame.time_base)
        assert np.array_equal(restored.image, frame.image)


def test_upscaled_tiles_are_placed_on_the_scaled_grid():
    frames = make_frames(2, 45, 71)
    cutter = Cutter(1, 0, 20, 6, scale=2)
    out = run_through(frames, cutter, lambda item: item.data.repeat(2, axis=1).repeat(2, axis=2))
    for (_, restored), frame in zip(out, frames):
        assert np.array_equal(restored.image, frame.image.repeat(2, axis=0).repeat(2, axis=1))


def test_tiles_blend_across_the_overlap_with_a_ramp():
    """Tiles that disagree (each adds its own tile number) meet in a linear ramp."""
    frames = [Frame(0, 0, Fraction(1, 30), np.zeros((10, 100, 3), np.uint8))]
    cutter = Cutter(1, 0, 60, 20)   # columns 0-60 and 40-100: overlap 40..60
    out = run_through(frames, cutter, lambda item: np.full(item.data.shape, 100 * item.tile, np.uint8))
    row = out[0][1].image[0, :, 0].astype(int)
    assert (row[:40] == 0).all() and (row[60:] == 100).all()
    assert (np.diff(row[40:60]) >= 0).all() and np.abs(np.diff(row[39:61])).max() <= 6
    assert row[49] < 50 < row[50]


def test_overlapping_clips_blend_with_a_linear_temporal_ramp():
    """Each clip "restores" its frames to its own constant: overlapping frames move linearly
    from one clip's value to the next; frames outside overlaps keep their clip's value."""
    frames = make_frames(12, 4, 4)
    cutter = Cutter(6, 4, 0, 0)      # clips start at 0, 2, 4, 6 (the last at 12 - 6 = 6)
    out = run_through(frames, cutter, lambda item: np.full(item.data.shape, 40 * (item.clip_id + 1), np.uint8))
    values = [int(restored.image[0, 0, 0]) for _, restored in out]
    assert len(values) == 12
    assert values[0] == values[1] == 40, "only the first clip covers frames 0 and 1"
    assert values[-2:] == [160, 160], "only the last clip covers frames 10 and 11"
    assert all(b >= a for a, b in zip(values, values[1:])), "no jump back at a clip border"
    assert max(b - a for a, b in zip(values, values[1:])) < 40, "no jump at a clip border"


def test_stitcher_holds_frames_until_the_next_clip_says_how_they_blend():
    frames = make_frames(8, 2, 2)
    cutter = Cutter(4, 2, 0, 0)
    items = [it for f in frames for it in cutter.push(f)]
    stitcher = Stitcher(cutter.layout)
    first = stitcher.add(WorkResult(items[0], items[0].data.copy()))
    assert first == [], "frames 2-3 are shared with the next clip; 0-1 wait for its overlap too"
    second = stitcher.add(WorkResult(items[1], items[1].data.copy()))
    assert [src.index for src, _ in second] == [0, 1]


def test_stitcher_refuses_results_out_of_order():
    frames = make_frames(3, 8, 8)
    cutter = Cutter(1, 0, 0, 0)
    items = [it for f in frames for it in cutter.push(f)]
    stitcher = Stitcher(cutter.layout)
    with pytest.raises(ProcessingError, match="expected 0"):
        stitcher.add(WorkResult(items[1], items[1].data.copy()))


def test_wrong_result_shape_is_an_error():
    frames = make_frames(1, 8, 8)
    cutter = Cutter(1, 0, 0, 0, scale=2)
    item = cutter.push(frames[0])[0]
    with pytest.raises(ProcessingError, match="expected"):
        Stitcher(cutter.layout).add(WorkResult(item, item.data.copy()))


def test_frame_size_change_mid_stream_is_an_error():
    cutter = Cutter(1, 0, 0, 0)
    cutter.push(make_frames(1, 8, 8)[0])
    with pytest.raises(ProcessingError, match="size changes"):
        cutter.push(Frame(1, 1, Fraction(1, 30), np.zeros((9, 8, 3), np.uint8)))


def test_per_frame_tiles_are_views_not_copies():
    frame = make_frames(1, 40, 40)[0]
    items = Cutter(1, 0, 24, 8).push(frame)
    assert len(items) == 4 and all(np.shares_memory(it.data, frame.image) for it in items)


@pytest.mark.parametrize("tile,overlap,clip_len,clip_overlap,message", [
    (16, 16, 1, 0, "larger than --tile-overlap"), (8, 32, 1, 0, "larger than --tile-overlap"),
    (-1, 0, 1, 0, "--tile"), (64, -2, 1, 0, "--tile-overlap"), (0, 0, 0, 0, "--clip-len"),
    (0, 0, 4, 4, "--clip-overlap"),
])
def test_bad_window_settings_are_usage_errors(tile, overlap, clip_len, clip_overlap, message):
    with pytest.raises(UsageError, match=message):
        check_window_options(tile, overlap, clip_len, clip_overlap)
