"""``--audit N`` (issue 17): ~0 dB when the run is the reference, a positive cost with a
deliberately poor Nyström setting (1 landmark)."""
import numpy as np
import pytest

import streamer
from streamer.audit import ALIGN, AUDIT_TILE, audit_box, delta_db


def _run(clip, tmp_path, name, **options):
    return streamer.run(str(clip.path), str(tmp_path / name), task="denoise", workers=0, precision="fp32",
                        audit=2, **options)


@pytest.fixture
def clip(clip_factory):
    # Larger than the audited tile, so the crop (aligned to 64 px, with context) is a real crop.
    return clip_factory(frames=4, width=256, height=192, degradation="noise", audio=False)


def test_audit_is_zero_when_the_run_is_the_reference_and_positive_with_one_landmark(clip, tmp_path):
    exact = _run(clip, tmp_path, "exact.mp4", attention="exact").audit
    poor = _run(clip, tmp_path, "poor.mp4", attention="nystrom", landmarks=1, iters=1).audit
    assert exact["count"] + exact["skipped"] == 2 and exact["count"] >= 1   # frames 0 and 2
    assert exact["mean_db"] < 0.01 and exact["psnr_db_min"] > 50
    assert poor["count"] >= 1 and poor["mean_db"] > 0.01 and poor["mean_db"] > 10 * exact["mean_db"]
    assert poor["worst_frame"] in (0, 2) and poor["worst_db"] >= poor["mean_db"]
    assert poor["psnr_db_min"] < exact["psnr_db_min"]


def test_audit_box_lines_up_with_the_windows():
    top, left, score_top, score_left = audit_box(192, 256)
    assert (top, left) == (64, 128) and top % ALIGN == 0 and left % ALIGN == 0
    assert (192 - score_top, 256 - score_left) == (AUDIT_TILE, AUDIT_TILE)
    assert audit_box(48, 64) == (0, 0, 0, 0)


def test_delta_db():
    x = np.zeros((4, 4, 3))
    ref = np.full((4, 4, 3), 10.0)
    assert delta_db(ref, ref, x) == 0
    assert delta_db(ref + 10, ref, x) == pytest.approx(10 * np.log10(2))
