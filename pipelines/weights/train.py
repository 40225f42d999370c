"""Train one bundled default model (small SwinIR) on scikit-image's photos, on a CPU.

    python -m pipelines.weights.train --task denoise --iters 3000 --minutes 40

Exact attention, L1 (Charbonnier) loss, Adam, linear warm-up then cosine decay over
``--iters`` iterations, random crops (multiples of the window) with flips, rotations and a
small brightness gain; most degraded inputs pass through yuv420p (``--video-share``), as the
frames a video decoder hands the model have. ``--init`` starts from a checkpoint (a second
cosine cycle); ``--nystrom-consistency`` adds the gap between Nyström and exact attention to
the loss (see :class:`NystromConsistency`). A seed fixes everything (data stream included), so two runs with the
same arguments and thread count give the same weights. ``--minutes`` caps the wall time: the
run then stops early and still writes its weights (the log says so). A training state is
saved every ``--save-every`` minutes under ``--work-dir``; ``--resume`` continues from it.
The output is a plain state dict in safetensors, which ``pipelines.load_model`` reads back.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..attention import WindowAttentionBase, patch_attention
from ..loading import load_model
from ..models.swinir import SwinIR, SwinIRConfig
from . import ARCHITECTURES, MAX_BYTES, TASKS, bundled_path
from .data import TRAIN_IMAGES, VIDEO_SHARE, CropSampler, load_photo


# Input crops (multiples of the window 16) and batch sizes: about 16-33k input tokens a step.
DEFAULT_CROP = {"denoise": 64, "deblur": 64, "sr2": 48, "sr4": 32}
DEFAULT_BATCH = {"denoise": 8, "deblur": 8, "sr2": 12, "sr4": 16}


def build_model(config: SwinIRConfig, seed: int) -> SwinIR:
    """A freshly initialised SwinIR that starts as a sensible identity-like restorer.

    Linears get the official trunc-normal init. Then, because the CPU budget allows only a
    few thousand steps, the model starts where a cheap classical method is rather than from
    noise: without an upsampler the last conv is zeroed, so the model starts as the identity
    (its global skip); with ``pixelshuffledirect`` the first conv passes the image through
    channels 0-2 and the pixel-shuffle conv starts as bilinear interpolation of them, with
    the body's contribution zeroed, so the model starts as bilinear upscaling.
    """
    torch.manual_seed(seed)
    model = SwinIR(config)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    with torch.no_grad():
        if config.upsampler == "":
            nn.init.zeros_(model.conv_last.weight)
            nn.init.zeros_(model.conv_last.bias)
        elif config.upsampler == "pixelshuffledirect":
            _start_as_bilinear(model, config)
    return patch_attention(model, "exact")


def bilinear_taps(scale: int) -> Tensor:
    """``(scale, 3)``: 3-tap weights giving each of the ``scale`` sub-pixel phases by bilinear
    interpolation (half-pixel centres, as ``F.interpolate(align_corners=False)``)."""
    taps = torch.zeros(scale, 3)
    for phase in range(scale):
        offset = (phase + 0.5) / scale - 0.5  # in [-0.5, 0.5): where the phase sits between pixels
        side = 0 if offset < 0 else 2
        taps[phase, 1] = 1 - abs(offset)
        taps[phase, side] = abs(offset)
    return taps


def _start_as_bilinear(model: SwinIR, config: SwinIRConfig) -> None:
    chans, scale = config.in_chans, config.upscale
    first = model.conv_first
    first.weight[:chans].zero_()
    first.bias[:chans].zero_()
    for c in range(chans):
        first.weight[c, c, 1, 1] = 1.0
    conv = model.upsample[0]  # (chans * scale^2, embed_dim, 3, 3) before PixelShuffle
    conv.weight.zero_()
    conv.bias.zero_()
    taps = bilinear_taps(scale)
    for c in range(chans):
        for i in range(scale):
            for j in range(scale):  # PixelShuffle reads channel c*s*s + i*s + j for phase (i, j)
                conv.weight[c * scale * scale + i * scale + j, c] = taps[i][:, None] * taps[j][None, :]
    body_out = model.conv_after_body
    for p in body_out.parameters() if isinstance(body_out, nn.Sequential) else [body_out.weight, body_out.bias]:
        nn.init.zeros_(p)


class NystromConsistency:
    """Training-only regulariser: how far Nyström attention lands from exact attention.

    Each window-attention layer still runs (and back-propagates through) exact attention;
    alongside, it runs PnP-Nyström on the same q, k, v and records the mean squared gap
    between the two outputs (relative to the exact output's mean square). Adding ``weight`` x that gap to the loss teaches the model
    attention patterns that the training-free approximation reproduces, without ever
    feeding Nyström outputs forward. Installed as instance attributes, so nothing reaches
    the state dict.
    """

    def __init__(self, model: nn.Module, landmarks: int, iters: int) -> None:
        self.landmarks, self.iters = landmarks, iters
        self.gaps: list = []
        for module in model.modules():
            if isinstance(module, WindowAttentionBase):
                module.attend = self._wrap(module)

    def _wrap(self, module: WindowAttentionBase):
        base = type(module).attend

        def attend(q, k, v, grid, make_bias=None, bias_key=None):
            exact = base(module, q, k, v, grid, make_bias, bias_key)
            if torch.is_grad_enabled():
                saved = module.attention_mode, module.landmarks, module.iters
                module.attention_mode, module.landmarks, module.iters = "nystrom", self.landmarks, self.iters
                try:
                    approx = base(module, q, k, v, grid, make_bias, bias_key)
                finally:
                    module.attention_mode, module.landmarks, module.iters = saved
                # Relative, so that shrinking the attention output cannot close the gap.
                energy = torch.mean(exact.detach() ** 2) + 1e-8
                self.gaps.append(torch.mean((approx - exact) ** 2) / energy)
            return exact

        return attend

    def pop(self) -> Tensor:
        """The summed gap of the last forward (and forget it)."""
        total = torch.stack(self.gaps).sum() if self.gaps else torch.zeros(())
        self.gaps.clear()
        return total


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """A smooth L1: sqrt(d^2 + eps^2), nearly L1 but differentiable at 0."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def learning_rate(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def inference_state_dict(model: nn.Module) -> dict:
    """The plain state dict to ship: contiguous tensors, float32 (masks included, see __init__)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path, meta: dict) -> int:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(inference_state_dict(model), str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return path.stat().st_size


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--iters", type=int, default=3000, help="iterations (the cosine schedule's length)")
    p.add_argument("--minutes", type=float, default=None, help="stop early after this wall time")
    p.add_argument("--stop-at", type=int, default=None, help="stop at this step (resume later)")
    p.add_argument("--batch", type=int, default=None, help="crops per step (default: per task)")
    p.add_argument("--crop", type=int, default=None, help="input crop side (default: per task)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-floor", type=float, default=1e-5)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", nargs="+", default=list(TRAIN_IMAGES), help="skimage.data photo names")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="default: the bundled file of the task")
    p.add_argument("--work-dir", type=Path, default=None, help="default: /tmp/nystra-weights/<task>")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between training states")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's state")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (a second cosine cycle; the architecture is the file's)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--video-share", type=float, default=VIDEO_SHARE,
                   help="share of inputs stored as yuv420p first, as decoded video frames are")
    p.add_argument("--prefilter", choices=("motion-wiener",), default=None,
                   help="deblur: train behind this prefilter (pipelines.deconvolution)")
    p.add_argument("--nystrom-consistency", type=float, default=0.0, metavar="WEIGHT",
                   help="weight of the exact-vs-Nystrom attention gap in the loss (0: off)")
    p.add_argument("--consistency-landmarks", type=int, default=16)
    p.add_argument("--consistency-iters", type=int, default=2)
    # Architecture overrides (defaults: pipelines.weights.ARCHITECTURES[task]).
    p.add_argument("--embed-dim", type=int)
    p.add_argument("--depths", type=int, nargs="+")
    p.add_argument("--heads", type=int, nargs="+")
    p.add_argument("--window", type=int)
    p.add_argument("--mlp-ratio", type=float)
    p.add_argument("--resi", choices=("1conv", "3conv"))
    return p.parse_args(argv)


def make_config(args: argparse.Namespace) -> SwinIRConfig:
    fields = dict(ARCHITECTURES[args.task])
    overrides = {"embed_dim": args.embed_dim, "depths": args.depths, "num_heads": args.heads,
                 "window_size": args.window, "mlp_ratio": args.mlp_ratio, "resi_connection": args.resi}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if args.window is not None:
        fields["img_size"] = 2 * args.window  # smallest size with shifted windows: 4 stored masks
    if args.depths is not None and args.heads is None:
        fields["num_heads"] = (fields["num_heads"][0],) * len(args.depths)
    return SwinIRConfig(**fields)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init is not None:
        model = patch_attention(load_model(args.init), "exact")  # the file's own architecture
        config = model.config
    else:
        config = make_config(args)
        model = build_model(config, args.seed)
    crop = args.crop or DEFAULT_CROP[args.task]
    batch = args.batch or DEFAULT_BATCH[args.task]
    if crop % config.window_size:
        raise SystemExit(f"--crop {crop} is not a multiple of the window {config.window_size}")
    out = args.out or bundled_path(args.task)
    work = args.work_dir or Path("/tmp/nystra-weights") / args.task
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    step, spent = 0, 0.0
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, spent = int(state["step"]), float(state["seconds"])
        print(f"resumed at step {step} ({spent / 60:.1f} min already spent)", flush=True)

    consistency = (NystromConsistency(model, args.consistency_landmarks, args.consistency_iters)
                   if args.nystrom_consistency > 0 else None)
    sampler = CropSampler(args.task, [load_photo(n) for n in args.images], crop, video_share=args.video_share,
                          prefilter=args.prefilter)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"task": args.task, "config": asdict(config), "params": params, "crop": crop,
                      "batch": batch, "images": args.images, "iters": args.iters, "lr": args.lr, "seed": args.seed,
                      "nystrom_consistency": args.nystrom_consistency, "init": None if args.init is None else str(args.init),
                      "video_share": sampler.video_share, "prefilter": args.prefilter, "threads": torch.get_num_threads()}), flush=True)

    def save_state() -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "generator": gen.get_state(), "step": step, "seconds": spent}, work / "state.tmp")
        os.replace(work / "state.tmp", state_path)

    start = time.perf_counter() - spent
    last_save = time.perf_counter()
    running, stopped_early = None, False
    while step < args.iters:
        if (args.minutes is not None and time.perf_counter() - start > 60 * args.minutes) or step == args.stop_at:
            stopped_early = True
            break
        lr = learning_rate(step, args.iters, args.lr, args.warmup, args.lr_floor)
        for group in optimizer.param_groups:
            group["lr"] = lr
        degraded, clean = sampler.batch(batch, gen)
        loss = charbonnier(model(degraded), clean)
        gap = consistency.pop() if consistency is not None else torch.zeros(())
        total = loss + args.nystrom_consistency * gap
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        pair = torch.tensor([loss.item(), gap.item()])
        running = pair if running is None else 0.98 * running + 0.02 * pair
        spent = time.perf_counter() - start
        if step % args.log_every == 0 or step == args.iters:
            print(f"step {step}/{args.iters} loss {running[0]:.5f} gap {running[1]:.2e} lr {lr:.2e} {spent / 60:.1f} min", flush=True)
        if time.perf_counter() - last_save > 60 * args.save_every:
            save_state()
            last_save = time.perf_counter()

    save_state()
    meta = {"task": args.task, "steps": step, "planned_steps": args.iters, "seed": args.seed,
            "minutes": round(spent / 60, 1), "trainer": "pipelines.weights.train",
            "recipe": json.dumps({"lr": args.lr, "batch": batch, "crop": crop, "warmup": args.warmup,
                                  "nystrom_consistency": args.nystrom_consistency,
                                  "video_share": sampler.video_share, "prefilter": args.prefilter,
                                  "init": None if args.init is None else Path(args.init).name})}
    size = save_weights(model.eval(), out, meta)
    if stopped_early:
        print(f"time budget reached at step {step} of {args.iters}", flush=True)
    print(json.dumps({"wrote": str(out), "bytes": size, "steps": step, "minutes": round(spent / 60, 1)}), flush=True)
    if size > MAX_BYTES:
        print(f"warning: {out} is {size} bytes, over the {MAX_BYTES}-byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
