"""Small models for the streamer tests.

They live in an importable module (not inside a test file) because the CPU pool's spawned
worker processes unpickle them by class name.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.models.base import ModelInfo


class Identity(nn.Module):
    """Returns its input (nearest-upsampled for ``scale`` > 1): restoration must be exact."""

    def __init__(self, scale: int = 1, size_multiple: int = 1) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="identity", task="custom", scale=scale, size_multiple=size_multiple)

    def forward(self, x: Tensor) -> Tensor:
        m = self.info.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input {tuple(x.shape)} is not padded to a multiple of {m}")
        if self.info.scale > 1:
            x = F.interpolate(x, scale_factor=self.info.scale, mode="nearest")
        return x + self.zero


class Brighten(nn.Module):
    """Adds a constant: a visible, exactly predictable change."""

    def __init__(self, amount: float = 10 / 255) -> None:
        super().__init__()
        self.amount = nn.Parameter(torch.tensor(float(amount)))
        self.info = ModelInfo(arch="brighten", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.amount


class ThreadCount(nn.Module):
    """Outputs ``torch.get_num_threads() / 255`` everywhere: shows a worker's thread setting."""

    def __init__(self) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="threads", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        return torch.full_like(x, torch.get_num_threads() / 255) + self.zero


class FailOnBright(nn.Module):
    """Raises on any input whose mean exceeds ``threshold`` (a failing work item)."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="fail", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        if float(x.mean()) > self.threshold:
            raise RuntimeError(f"boom: mean {float(x.mean()):.3f} over {self.threshold}")
        return x + self.zero


class SlowBandFailOnBright(FailOnBright):
    """FailOnBright, but inputs whose mean lies in ``slow_band`` first sleep ``seconds``: an
    early item that finishes (or fails) after a later one has failed on another worker."""

    def __init__(self, threshold: float, slow_band: tuple, seconds: float) -> None:
        super().__init__(threshold)
        self.slow_band, self.seconds = slow_band, seconds

    def forward(self, x: Tensor) -> Tensor:
        import time

        if self.slow_band[0] < float(x.mean()) < self.slow_band[1]:
            time.sleep(self.seconds)
        return super().forward(x)


class FailAfter(nn.Module):
    """Works for ``calls`` forward calls (in this process), then raises."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="fail-after", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        if self.calls <= 0:
            raise RuntimeError("boom: out of calls")
        self.calls -= 1
        return x + self.zero


class KillOnBright(nn.Module):
    """SIGKILLs its own process on a bright input, at most ``times`` times in all (counted
    with marker files in ``marker_dir``, which survive the dead process)."""

    def __init__(self, threshold: float, marker_dir: str, times: int = 1) -> None:
        super().__init__()
        self.threshold, self.marker_dir, self.times = threshold, marker_dir, times
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="kill", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        if float(x.mean()) > self.threshold:
            # Claim a kill slot atomically: two workers seeing a bright tile at the same moment
            # must not both die when only one death is allowed.
            for slot in range(self.times):
                try:
                    os.close(os.open(Path(self.marker_dir) / f"killed-{slot}", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                os.kill(os.getpid(), signal.SIGKILL)
        return x + self.zero


class StopOnBright(KillOnBright):
    """Like :class:`KillOnBright`, but SIGSTOPs its own process: a worker that stops answering
    without dying (the pool must notice, kill and replace it)."""

    def forward(self, x: Tensor) -> Tensor:
        if float(x.mean()) > self.threshold:
            for slot in range(self.times):
                try:
                    os.close(os.open(Path(self.marker_dir) / f"stopped-{slot}", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    continue
                os.kill(os.getpid(), signal.SIGSTOP)
        return x + self.zero


class TemporalMean(nn.Module):
    """A "video model": every output frame is the clip's mean frame (clip_len frames)."""

    def __init__(self, clip_len: int = 4) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="temporal-mean", task="video-denoise", clip_len=clip_len)
        self.seen_lengths: list = []

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W)
        if x.dim() != 5:
            raise ValueError(f"expected a clip (B, T, C, H, W), got {tuple(x.shape)}")
        return x.mean(dim=1, keepdim=True).expand_as(x) + self.zero


class VideoIdentity(nn.Module):
    """A video model (``clip_len`` set) that returns its clip, nearest-upsampled for ``scale`` > 1.

    ``seen`` records the shape of every clip it was given (in the process it runs in);
    ``delay`` seconds of sleep per call make it slower than decoding (back-pressure tests).
    """

    def __init__(self, clip_len: int = 4, scale: int = 1, size_multiple: int = 1, delay: float = 0.0) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.delay = delay
        self.info = ModelInfo(arch="video-identity", task="custom", scale=scale, size_multiple=size_multiple,
                              clip_len=clip_len)
        self.seen: list = []

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W)
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected a clip (B, T, 3, H, W), got {tuple(x.shape)}")
        m = self.info.size_multiple
        if x.shape[-1] % m or x.shape[-2] % m:
            raise ValueError(f"input {tuple(x.shape)} is not padded to a multiple of {m}")
        self.seen.append(tuple(x.shape))
        if self.delay:
            import time

            time.sleep(self.delay)
        if self.info.scale > 1:
            b, t = x.shape[:2]
            x = F.interpolate(x.flatten(0, 1), scale_factor=self.info.scale, mode="nearest")
            x = x.view(b, t, *x.shape[1:])
        return x + self.zero


class ClipPosition(nn.Module):
    """A video model whose output shows where each frame sat in its clip: red and blue are the
    input's, green is ``STEP * position`` grey levels (position 0 .. T-1 in the clip)."""

    STEP = 16

    def __init__(self, clip_len: int = 6) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="clip-position", task="custom", clip_len=clip_len)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C, H, W)
        position = torch.arange(x.shape[1], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        out = x.clone()
        out[:, :, 1] = position * (self.STEP / 255)
        return out + self.zero


class NoiseLevelEcho(nn.Module):
    """A non-blind "video denoiser": takes RGB + a noise-level channel and adds that level to
    the picture, so the output shows which sigma arrived (and in which units)."""

    def __init__(self, clip_len: int = 4) -> None:
        super().__init__()
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="noise-echo", task="video-denoise", clip_len=clip_len, needs_sigma=True)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, 4, H, W)
        if x.dim() != 5 or x.shape[2] != 4:
            raise ValueError(f"expected a clip with a noise-level channel (B, T, 4, H, W), got {tuple(x.shape)}")
        return x[:, :, :3] + x[:, :, 3:] + self.zero


class Slow(nn.Module):
    """Identity that sleeps ``seconds`` per call: for interruption tests."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.zero = nn.Parameter(torch.zeros(1))
        self.info = ModelInfo(arch="slow", task="custom")

    def forward(self, x: Tensor) -> Tensor:
        import time

        time.sleep(self.seconds)
        return x + self.zero


def tiny_swinir(scale: int = 1, window: int = 8, seed: int = 0) -> nn.Module:
    """A randomly initialised, very small SwinIR (real architecture, real attention)."""
    from pipelines.models.swinir import SwinIR, SwinIRConfig

    torch.manual_seed(seed)
    config = SwinIRConfig(img_size=2 * window, embed_dim=12, depths=(2,), num_heads=(2,), window_size=window,
                          upscale=scale, upsampler="pixelshuffledirect" if scale > 1 else "")
    return SwinIR(config).eval()


def save_tiny_swinir(path: Path, scale: int = 1, window: int = 8) -> Path:
    from safetensors.torch import save_file

    model = tiny_swinir(scale, window)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)



# A small RVRT (real architecture: SpyNet, deformable alignment, 3-D window attention) with
# random weights: 12 channels, one block per stage. Frames of any size >= 8 px work (SpyNet
# pads to 64 px internally); the cost is mostly SpyNet's, about a second per 12-frame clip.
TINY_RVRT = dict(embed_dims=(12, 12, 12), num_heads=(2, 2, 2), depths=(1, 1, 1), num_blocks=(1, 1, 1),
                 deformable_groups=4, attention_heads=12, mlp_ratio=1.0, inputconv_groups=(1, 1, 1, 1, 1, 1))
RVRT_TASKS = {"vsr": dict(upscale=4), "video-deblur": dict(upscale=1),
              "video-denoise": dict(upscale=1, nonblind_denoising=True)}


def tiny_rvrt(task: str = "vsr", seed: int = 0) -> nn.Module:
    """A small RVRT for ``task`` with every parameter perturbed (zero-initialised ones too, so
    every input, the noise-level channel included, changes the output)."""
    from pipelines.models.rvrt import RVRT, RVRTConfig

    torch.manual_seed(seed)
    model = RVRT(RVRTConfig(**TINY_RVRT, **RVRT_TASKS[task]))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.02 * torch.randn(tensor.shape))
    return model.eval()


def save_tiny_rvrt(path: Path, task: str = "vsr", seed: int = 0) -> Path:
    """The official checkpoint layout: ``{"params": state_dict}`` in a .pth file."""
    torch.save({"params": tiny_rvrt(task, seed).state_dict()}, str(path))
    return path
