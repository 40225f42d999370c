"""Precision modes (issue 17): each runs on the CPU, int8 falls back cleanly from the fast paths,
``auto`` picks within its quality bound and caches what it measured."""
import numpy as np
import pytest
import torch
from torch import nn

from pipelines import precision as P
from pipelines.loading import load_model
from pipelines.models.layers import linear_into, plain_linear
from pipelines.models.swinir import SwinIR, SwinIRConfig
from pipelines.precision_auto import cache_path, choose_precision, model_key
from pipelines.restorer import Restorer


@pytest.fixture(scope="module")
def denoiser():
    return load_model("swinir-tiny-denoise", attention=None)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((8, 8, 1)))
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_each_cpu_precision_runs_close_to_fp32(denoiser, frame, mode):
    want = Restorer(denoiser, precision="fp32").restore(frame)
    got = Restorer(denoiser, precision=mode).restore(frame)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert 30 < _psnr(got, want) < 99   # close, and not secretly fp32


def test_fp16_is_refused_on_cpu_and_auto_must_be_resolved(denoiser, frame):
    cpu = torch.device("cpu")
    with pytest.raises(P.PrecisionError, match="needs --device cuda"):
        P.check_precision("fp16", cpu)
    # The CUDA path's arithmetic still runs on the CPU in a library call (tests without a GPU).
    half = Restorer(load_model("swinir-tiny-denoise", attention=None), precision="fp16")  # converts in place
    assert half.dtype == torch.float16 and half.restore(frame).shape == frame.shape
    with pytest.raises(ValueError, match="resolve precision 'auto'"):
        Restorer(denoiser, precision="auto")
    with pytest.raises(P.PrecisionError, match="unknown precision"):
        P.check_precision("fp8", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        Restorer(denoiser, precision="fp8")
    with pytest.raises(P.PrecisionError, match="for --device cpu"):
        P.check_precision("int8", torch.device("cuda"))


def test_int8_leaves_the_callers_model_alone(denoiser):
    quantised = P.prepare_model(denoiser, "int8")
    assert quantised is not denoiser
    assert all(plain_linear(m) for m in denoiser.modules() if isinstance(m, nn.Linear))
    assert not any(plain_linear(m) for m in quantised.modules() if "Linear" in type(m).__name__)


def test_linear_into_falls_back_for_a_quantised_layer():
    torch.manual_seed(0)
    layer = nn.Linear(64, 96)
    quantised = torch.ao.quantization.quantize_dynamic(nn.Sequential(layer), {nn.Linear}, dtype=torch.qint8)[0]
    x = torch.randn(2, 50, 64)
    with torch.inference_mode():
        got = linear_into(quantised, x, "test.int8")   # its .weight is a method: read as a tensor it fails
        torch.testing.assert_close(got, quantised(x))
        torch.testing.assert_close(got, layer(x), atol=0.05, rtol=0.05)


def test_int8_wide_swinir_skips_the_head_major_path():
    """Width 60 at window 8 takes the head-major q/k/v path in fp32 (it reads qkv.weight);
    quantised, the layer computes q, k, v through qkv(x) and matches fp32 closely."""
    torch.manual_seed(0)
    cfg = SwinIRConfig(img_size=16, embed_dim=60, depths=(2,), num_heads=(6,), window_size=8, mlp_ratio=2.0,
                       upscale=1, upsampler="")
    model = SwinIR(cfg).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        want = model(x)
        got = P.prepare_model(model, "int8")(x)
    assert float((got - want).abs().max()) < 0.05


def test_pick_takes_the_fastest_within_the_bound():
    M = P.Measurement
    ms = {"fp32": M(1.0, 30.0), "bf16": M(0.5, 29.95), "int8": M(0.3, 29.5)}
    assert P.pick(ms) == "bf16"                  # int8 is faster but costs 0.5 dB
    assert P.pick(ms, bound_db=1.0) == "int8"
    ms["bf16"] = M(1.5, 30.0)
    ms["int8"] = M(0.3, 29.0)
    assert P.pick(ms) == "fp32"


def test_auto_measures_once_then_reads_the_cache(denoiser, tmp_path, monkeypatch):
    monkeypatch.setenv("NYSTRA_HOME", str(tmp_path))
    choice = choose_precision(denoiser, "cpu")
    assert set(choice.measurements) == {"fp32", "bf16", "int8"} and not choice.cached
    assert choice.precision in choice.measurements
    assert choice.cost_db(choice.precision) <= P.QUALITY_BOUND_DB
    fastest_allowed = min((m for m in choice.measurements if choice.cost_db(m) <= P.QUALITY_BOUND_DB),
                          key=lambda m: choice.measurements[m].seconds)
    assert choice.precision == fastest_allowed
    key = model_key(denoiser, torch.device("cpu"), None)
    assert cache_path(key).is_file() and str(tmp_path) in str(cache_path(key))
    again = choose_precision(denoiser, "cpu")
    assert again.cached and again.precision == choice.precision
    assert torch.backends.cpu.get_cpu_capability() in cache_path(key).read_text()
    assert "precision auto: " + choice.precision in again.describe()


def test_auto_falls_back_to_fp32_for_a_model_that_cannot_calibrate(tmp_path, monkeypatch):
    """A SwinIR with an absolute position embedding runs only at 16x16: the calibration
    frames fail, auto says fp32 unmeasured and caches nothing (the run reports the real error)."""
    monkeypatch.setenv("NYSTRA_HOME", str(tmp_path))
    model = SwinIR(SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                                upscale=1, upsampler="", ape=True)).eval()
    choice = choose_precision(model, "cpu")
    assert choice.precision == "fp32" and not choice.measurements and "not measured" in choice.describe()
    assert not (tmp_path / "precision").exists() or not any((tmp_path / "precision").iterdir())


def test_a_mode_that_fails_drops_out():
    def run(mode):
        if mode == "bf16":
            raise RuntimeError("no bf16 kernel")
        return torch.zeros(1, 3, 4, 4)
    ms = P.measure_modes(run, torch.zeros(1, 3, 4, 4), ("fp32", "bf16", "int8"), reps=1)
    assert set(ms) == {"fp32", "int8"}
