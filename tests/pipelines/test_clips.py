"""Clip geometry for video models (pipelines.clips): the official RVRT test's clip starts, blending."""
import numpy as np
import pytest

from pipelines.clips import ClipBlender, ClipSchedule, ClipSpan, clip_spans


def official_clip_starts(n: int, clip_len: int, overlap: int):
    """``d_idx_list`` of the official RVRT test."""
    if n <= clip_len:
        return [0]
    return list(range(0, n - clip_len, clip_len - overlap)) + [n - clip_len]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 9, 16, 17, 33, 100])
@pytest.mark.parametrize("clip_len, overlap", [(1, 0), (2, 1), (4, 0), (8, 2), (8, 7), (16, 4)])
def test_clip_starts_are_the_official_tests(n, clip_len, overlap):
    spans = clip_spans(n, clip_len, overlap)
    assert [s.start for s in spans] == official_clip_starts(n, clip_len, overlap)
    assert all(s.end - s.start == min(clip_len, n) for s in spans), "every clip full length"
    assert spans[-1].end == n and spans[0].overlap == 0
    for before, after in zip(spans, spans[1:]):
        assert after.overlap == before.end - after.start >= overlap


def test_the_schedule_decides_as_frames_arrive():
    schedule = ClipSchedule(4, 1)
    decided = [schedule.push() for _ in range(6)]
    assert decided == [None, None, None, ClipSpan(0, 4), None, None]
    assert schedule.finish() == ClipSpan(2, 6, overlap=2)
    assert schedule.finish() is None


def test_an_identity_model_comes_back_exactly_and_frames_leave_in_order():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (23, 3, 5, 3)).astype(np.uint8)
    blender: ClipBlender[int] = ClipBlender()
    out = []
    for span in clip_spans(23, 6, 2):
        out += blender.add(span, video[span.start:span.end], range(span.start, span.end))
        assert [i for i, _ in out] == list(range(len(out)))
    out += blender.finish()
    assert [i for i, _ in out] == list(range(23))
    assert np.array_equal(np.stack([image for _, image in out]), video)


def test_shared_frames_are_ramped_means():
    blender: ClipBlender[int] = ClipBlender()
    first = np.zeros((4, 1, 1, 1), np.uint8)
    second = np.full((4, 1, 1, 1), 200, np.uint8)
    out = blender.add(ClipSpan(0, 4), first, range(4)) + blender.add(ClipSpan(2, 6, 2), second, range(2, 6))
    out += blender.finish()
    values = [int(image[0, 0, 0]) for _, image in out]
    assert values[:2] == [0, 0] and values[4:] == [200, 200]
    assert 0 < values[2] < values[3] < 200, "the blend ramps from the first clip to the second"


def test_clips_must_follow_each_other():
    blender: ClipBlender[int] = ClipBlender()
    blender.add(ClipSpan(10, 14), np.zeros((4, 1, 1, 3), np.uint8), range(10, 14))  # any first index
    with pytest.raises(ValueError, match="does not follow"):
        blender.add(ClipSpan(15, 19), np.zeros((4, 1, 1, 3), np.uint8), range(15, 19))  # a gap
    with pytest.raises(ValueError, match="payloads"):
        blender.add(ClipSpan(12, 16, 2), np.zeros((4, 1, 1, 3), np.uint8), range(3))
