"""SpyNet as RVRT uses it: the official flow (reference fixture), flow warping, small frames."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipelines.models.spynet import SpyNet, flow_warp

FIXTURES = Path(os.environ.get("NYSTRA_FIXTURES", "/work/shared/fixtures"))
SPYNET = FIXTURES / "rvrt_spynet.pt"
needs_fixtures = pytest.mark.skipif(not SPYNET.exists(), reason="reference fixtures not available")


@pytest.fixture(scope="module")
def reference():
    return torch.load(SPYNET, weights_only=True)


@pytest.fixture(scope="module")
def spynet(reference) -> SpyNet:
    model = SpyNet().eval()
    model.load_state_dict(reference["state_dict"]["params"], strict=True)  # float16 values, exact in float32
    return model


@needs_fixtures
def test_reproduces_official_flow(reference, spynet):
    inputs = reference["input"]
    assert inputs["ref"].shape[-2:] == (40, 56)  # not multiples of 32: the resize-and-rescale path
    with torch.inference_mode():
        flow = spynet(inputs["ref"], inputs["supp"])
    assert flow.shape == reference["output"].shape
    assert torch.allclose(flow, reference["output"], atol=1e-4, rtol=0)


@needs_fixtures
def test_small_frames_resize_to_the_minimum_processing_size(spynet):
    """Frames under 33 px (where the official code fails) run at 64 px and are scaled back:
    the same as upsizing them by hand to 64 px (where nothing further is resized)."""
    gen = torch.Generator().manual_seed(0)
    ref, supp = torch.rand(2, 1, 3, 20, 24, generator=gen)
    with torch.inference_mode():
        flow = spynet(ref, supp)
        big = [F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False) for x in (ref, supp)]
        manual = F.interpolate(spynet(*big), size=(20, 24), mode="bilinear", align_corners=False)
    manual = manual * torch.tensor([24 / 64, 20 / 64]).view(1, 2, 1, 1)
    assert flow.shape == (1, 2, 20, 24)
    assert torch.allclose(flow, manual, atol=1e-6)


def test_flow_warp_zero_flow_is_identity_and_integer_flow_shifts():
    x = torch.rand(2, 3, 5, 7)
    zero = torch.zeros(2, 2, 5, 7)
    assert torch.allclose(flow_warp(x, zero), x, atol=1e-6)
    right = zero.clone()
    right[:, 0] = 1.0  # dx = +1: output pixel (y, x) reads input (y, x + 1)
    warped = flow_warp(x, right)
    assert torch.allclose(warped[..., :-1], x[..., 1:], atol=1e-6)
    assert torch.count_nonzero(warped[..., -1]) == 0  # beyond the right edge: zero padding
    down = zero.clone()
    down[:, 1] = 2.0  # dy = +2
    assert torch.allclose(flow_warp(x, down, padding_mode="border")[..., -1, :], x[..., -1, :], atol=1e-6)
    assert torch.allclose(flow_warp(x, down)[..., :-2, :], x[..., 2:, :], atol=1e-6)


def test_rejects_frames_of_different_sizes():
    with pytest.raises(ValueError):
        SpyNet()(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 48))
