"""The small bundled default checkpoints (package data) and how they were made.

``train.py`` trains them (``python -m pipelines.weights.train --task denoise``), ``evaluate.py``
measures them on held-out photos; ``README.md`` records the commands, seeds and data.
This module only names the files and the architectures, so importing it stays cheap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

WEIGHTS_DIR = Path(__file__).resolve().parent

TASKS = ("denoise", "deblur", "sr2", "sr4")

# File names the presets in ``pipelines.zoo`` point at.
FILES: Dict[str, str] = {task: f"swinir_tiny_{task}.safetensors" for task in TASKS}

# The architectures (``SwinIRConfig`` fields) ``train.py`` builds for each task; the
# checkpoints describe themselves, so loading never needs this table. Window 16 with the
# shifted-window masks stored for img_size 32 (4 windows, 1 MB per shifted block).
_BODY = dict(img_size=32, in_chans=3, embed_dim=32, depths=(2,), num_heads=(1,), window_size=16,
             mlp_ratio=2.0, resi_connection="1conv", img_range=1.0)
ARCHITECTURES: Dict[str, dict] = {
    "denoise": dict(_BODY, upscale=1, upsampler=""),
    "deblur": dict(_BODY, upscale=1, upsampler=""),
    "sr2": dict(_BODY, upscale=2, upsampler="pixelshuffledirect"),
    "sr4": dict(_BODY, upscale=4, upsampler="pixelshuffledirect"),
}

# The largest file a bundled checkpoint may be (the limit).
MAX_BYTES = 8 * 1024 * 1024


def bundled_path(task: str) -> Path:
    """Where the bundled checkpoint of ``task`` lives (it may be absent in a source checkout)."""
    if task not in FILES:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    return WEIGHTS_DIR / FILES[task]
