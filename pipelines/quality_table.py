"""The quality table: what each candidate setting of a model costs in PSNR, measured ahead of time.

The dial (``--target-fps``, :mod:`streamer.dial`) trades quality for speed. The speed of a
setting depends on the machine and is measured at the start of each run; its quality cost
depends only on the model, so it is measured once, here: per candidate :class:`Setting`
(attention kernel, landmarks, iterations, window, resolution), the model's output on sample
frames is scored against the clean picture and compared with the reference (exact attention
at the trained window, full resolution, fp32):

    delta_db = PSNR(reference output, clean) - PSNR(candidate output, clean)

The sample frames are :func:`pipelines.precision_auto.calibration_pair` at :data:`SIDE` px
(the astronaut photo, degraded as the model's task expects) plus the same for ``coffee``.
``cost`` is each setting's time relative to the reference at that size on the machine that
made the table: only a hint of which settings to time at the start of a run.

Precision is not a column: ``--precision`` (``auto``: fp32 unless a faster mode is within
0.1 dB, measured and cached by :mod:`pipelines.precision_auto`) applies under every setting.
Tile size is not one either: whole frames are the fastest on a CPU (tiles only add overlap)
and the streamer keeps the run's ``--tile``. Attention is set per model, not per layer: the
bundled models have two attention blocks.

Tables for the bundled models ship in ``pipelines/weights/quality_tables.json`` (made by
``python -m pipelines.quality_table``); any other model gets one measured on first use (a few
seconds) and cached under the user cache dir (``quality/``), keyed by its weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import zoo
from .attention import RUN_DEFAULT, patch_attention
from .download import cache_root
from .loading import load_model
from .models.base import ModelInfo
from .precision import psnr
from .precision_auto import calibration_pair, state_digest
from .rescale import Rescaled
from .restorer import Restorer, describe_model

log = logging.getLogger(__name__)

TABLE_VERSION = 1
SIDE = 192                       # px of each sample frame (at least 2 windows of 64 at half resolution)
PHOTOS = ("astronaut", "coffee")
SHIPPED = Path(__file__).parent / "weights" / "quality_tables.json"
LANDMARKS = (16, 8, 4)
ITERS = (2, 1)
RESOLUTIONS = (1.0, 0.75, 0.6, 0.5)


@dataclass(frozen=True)
class Setting:
    """One point of the dial. ``window`` None: the model's trained window; ``resolution``: the
    fraction of the picture's size the model runs at (:class:`~pipelines.rescale.Rescaled`)."""

    attention: str = RUN_DEFAULT.mode
    landmarks: int = RUN_DEFAULT.landmarks
    iters: int = RUN_DEFAULT.iters
    window: Optional[int] = None
    resolution: float = 1.0

    def label(self) -> str:
        kernel = "exact" if self.attention == "exact" else f"nystrom m{self.landmarks} T{self.iters}"
        window = f" w{self.window}" if self.window else ""
        scale = f" @{self.resolution:g}x" if self.resolution != 1.0 else ""
        return kernel + window + scale

    @property
    def same_model(self) -> Tuple[Optional[int]]:
        """What a running model cannot change between frames (the window: its bias tables)."""
        return (self.window,)


REFERENCE = Setting(attention="exact")


@dataclass
class Entry:
    setting: Setting
    delta_db: float     # PSNR lost against REFERENCE on the sample frames
    cost: float         # time against REFERENCE's where the table was made (a hint)


@dataclass
class QualityTable:
    key: str
    model: str
    entries: List[Entry]
    made_on: Dict[str, str] = field(default_factory=dict)   # capability, torch, date

    def frontier(self) -> List[Entry]:
        """The entries no other entry beats on both cost and delta_db, cheapest last."""
        ordered = sorted(self.entries, key=lambda e: (e.delta_db, e.cost))
        out: List[Entry] = []
        for entry in ordered:
            if not out or entry.cost < out[-1].cost:
                out.append(entry)
        return out

    def delta(self, setting: Setting) -> float:
        for entry in self.entries:
            if entry.setting == setting:
                return entry.delta_db
        raise KeyError(f"no quality figure for {setting.label()}")

    def to_json(self) -> dict:
        return {"key": self.key, "model": self.model, "made_on": self.made_on,
                "entries": [{**asdict(e.setting), "delta_db": round(e.delta_db, 4), "cost": round(e.cost, 3)}
                            for e in self.entries]}

    @classmethod
    def from_json(cls, data: dict) -> "QualityTable":
        entries = []
        for raw in data["entries"]:
            raw = dict(raw)
            delta, cost = float(raw.pop("delta_db")), float(raw.pop("cost"))
            entries.append(Entry(Setting(**raw), delta, cost))
        return cls(str(data["key"]), str(data["model"]), entries, dict(data.get("made_on", {})))


# -- applying a setting ---------------------------------------------------------------------


def dial_model(model: nn.Module) -> Rescaled:
    """``model`` wrapped so that every column of a :class:`Setting` can be set on it."""
    return model if isinstance(model, Rescaled) else Rescaled(model, describe_model(model))


def apply_setting(model: Rescaled, setting: Setting) -> Rescaled:
    """Set ``setting``'s attention and resolution on ``model`` in place (between frames).
    The window is not changed here: :func:`with_window` makes a model at another window."""
    patch_attention(model.inner, setting.attention, landmarks=setting.landmarks, iters=setting.iters)
    model.factor = setting.resolution
    return model


def resizable(model: nn.Module) -> bool:
    return callable(getattr(type(dial_model(model).inner), "resize_window", None))


def with_window(model: Rescaled, window: Optional[int]) -> Rescaled:
    """A copy of ``model`` at ``window`` (None: ``model`` itself)."""
    if window is None:
        return model
    inner = copy.deepcopy(model.inner)
    inner.resize_window(window)
    return Rescaled(inner, inner.info, model.factor)


def candidates(info: ModelInfo, can_resize: bool) -> List[Setting]:
    """Every setting the table scores for a model (exact and Nyström kernels, at the trained
    window and, where the model can be resized, at twice it; each at every resolution)."""
    windows: List[Optional[int]] = [None]
    if can_resize and info.clip_len is None:
        windows.append(2 * info.size_multiple)
    kernels = [("exact", RUN_DEFAULT.landmarks, RUN_DEFAULT.iters)]
    kernels += [("nystrom", m, t) for m in LANDMARKS for t in ITERS]
    return [Setting(a, m, t, w, r) for w in windows for (a, m, t) in kernels for r in RESOLUTIONS]


# -- measuring ---------------------------------------------------------------------------------


def table_key(model: nn.Module, sigma: Optional[float]) -> str:
    """The model's weights, the sample frames and this table's version, hashed."""
    digest = state_digest(dial_model(model).inner)
    for part in (SIDE, PHOTOS, RESOLUTIONS, LANDMARKS, ITERS, sigma, TABLE_VERSION):
        digest.update(repr(part).encode())
    return digest.hexdigest()[:32]


def measure_table(model: nn.Module, sigma: Optional[float] = None, name: str = "") -> QualityTable:
    """Score every :func:`candidates` setting of ``model`` on the sample frames (CPU, fp32)."""
    base = dial_model(model)
    info = describe_model(base.inner)
    if info.clip_len is not None:
        raise ValueError("the quality table is for per-frame models")
    pairs = [calibration_pair(info.task, info.scale, side=SIDE, photo=photo) for photo in PHOTOS]
    settings = candidates(info, resizable(base))
    models = {w: with_window(base, w) for w in {s.window for s in settings}}
    results: Dict[Setting, Tuple[float, float]] = {}
    for setting in [REFERENCE] + [s for s in settings if s != REFERENCE]:
        net = apply_setting(models[setting.window], setting)
        restorer = Restorer(net, device="cpu", sigma=sigma, prefilter=False)
        with torch.inference_mode():
            outs = [restorer.restore_tensor(x) for x, _ in pairs]   # warm-up (and what is scored)
            started = time.perf_counter()
            for x, _ in pairs:
                restorer.restore_tensor(x)
            seconds = time.perf_counter() - started
        score = sum(psnr(out, clean) for out, (_, clean) in zip(outs, pairs)) / len(pairs)
        results[setting] = (score, seconds)
    ref_psnr, ref_s = results[REFERENCE]
    entries = [Entry(s, ref_psnr - p, t / ref_s) for s, (p, t) in results.items()]
    made_on = {"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d")}
    return QualityTable(table_key(model, sigma), name, entries, made_on)


# -- finding a table: shipped, cached, or measured now ------------------------------------------


def _cache_path(key: str) -> Path:
    return cache_root() / "quality" / f"{key}.json"


def shipped_tables(path: Path = SHIPPED) -> Dict[str, QualityTable]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {t["key"]: QualityTable.from_json(t) for t in data.get("tables", [])}


def quality_table(model: nn.Module, sigma: Optional[float] = None, name: str = "",
                  use_cache: bool = True) -> QualityTable:
    """``model``'s table: shipped (bundled models), cached, or measured now and cached."""
    key = table_key(model, sigma)
    shipped = shipped_tables().get(key)
    if shipped is not None:
        return shipped
    path = _cache_path(key)
    if use_cache:
        try:
            return QualityTable.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    log.warning("measuring the quality table of %s once (every setting on sample frames; cached in %s)",
                name or "this model", path.parent)
    table = measure_table(model, sigma, name)
    if use_cache:
        _write_json(path, table.to_json())
    return table


def _write_json(path: Path, data: dict) -> None:
    """Atomically (a temporary name, renamed); a read-only cache only costs a measurement."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass


def markdown(table: QualityTable, rows: Sequence[Entry] = ()) -> str:
    """A small markdown table (the frontier by default) for the README."""
    rows = list(rows) or table.frontier()
    lines = [f"| {table.model} setting | ΔPSNR (dB) | time vs exact |", "|---|---|---|"]
    lines += [f"| {e.setting.label()} | {e.delta_db:.3f} | {e.cost:.2f} |" for e in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Measure the bundled models' tables into ``pipelines/weights/quality_tables.json``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.quality_table", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=SHIPPED)
    parser.add_argument("--markdown", action="store_true", help="print the frontiers as markdown too")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tables = []
    for preset in zoo.presets():
        if preset.bundled:
            table = measure_table(load_model(preset, attention=None), name=preset.name)
            tables.append(table.to_json())
            if args.markdown:
                print(markdown(table) + "\n")
    _write_json(args.out, {"version": TABLE_VERSION, "tables": tables})
    print(json.dumps({"written": str(args.out), "models": [t["model"] for t in tables]}))


if __name__ == "__main__":
    main()
