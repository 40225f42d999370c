"""``--audit N``: what the run's approximations cost, measured on the user's own footage.

Every Nth written frame, one tile is restored again by the *reference*: the same checkpoint
with exact attention at its trained window, in fp32, in this process on a thread of its own
at low priority (``nice`` +10 where the OS allows per-thread priorities: Linux) so it stays
off the critical path; a frame offered while the previous audit still runs is skipped
(counted), never waited for. The figure per audited tile:

    delta_db = 10 · log10(1 + MSE(written, reference) / MSE(reference, input))

the approximation's error as a share of what the model itself changes, in dB: 0 when the
written tile equals the reference, and the PSNR (against a clean original) the run would lose
if the reference's own error and the approximation's were independent and the reference's
error were as large as its change. (No clean original exists in a real run, so no absolute
PSNR can be given.) ``psnr_db`` (written vs reference) is reported beside it.

The tile: the bottom-right :data:`AUDIT_TILE` pixels of the frame plus :data:`CONTEXT` pixels
of context above and left (not scored), its top-left corner on a multiple of :data:`ALIGN`, so
the reference's windows, shifts and edge padding fall where the run's did.
"""
from __future__ import annotations

import copy
import math
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from pipelines import zoo
from pipelines.attention import patch_attention
from pipelines.loading import load_model
from pipelines.pixels import pixel_max
from pipelines.restorer import Restorer

from .frames import Frame

AUDIT_TILE = 96    # px of input scored per audited frame
CONTEXT = 32       # px of context above and left of it (receptive field), not scored
ALIGN = 64         # the crop starts on multiples of this: windows 8, 16, 32, 64 line up
JOIN_S = 60.0      # how long the end of a run waits for the audits still queued


@dataclass
class AuditReport:
    """The stats' ``audit``: per audited tile ``delta_db`` (see the module doc)."""

    every: int
    count: int = 0
    skipped: int = 0                       # offered while an audit was running
    mean_db: Optional[float] = None
    worst_db: Optional[float] = None
    worst_frame: Optional[int] = None
    psnr_db_min: Optional[float] = None    # written vs reference, the lowest
    reference: str = ""
    deltas: List[Tuple[int, float]] = field(default_factory=list)   # (frame index, delta_db)


def reference_model(model_spec, task: Optional[str], model: nn.Module) -> nn.Module:
    """The reference for the audit: the checkpoint or preset (``model_spec``, else ``task``'s
    default preset) at its trained window with exact attention; for a model object, a copy
    of ``model`` switched to exact attention (its window cannot be changed)."""
    if isinstance(model_spec, nn.Module):
        reference = copy.deepcopy(model)
        patch_attention(reference, "exact")
        return reference
    target = zoo.resolve(model_spec) if model_spec is not None else zoo.default_preset(task)
    return load_model(target, attention="exact")


def audit_box(height: int, width: int) -> Tuple[int, int, int, int]:
    """(top, left, score_top, score_left) of the audited crop of a ``height`` x ``width`` frame:
    the crop runs from (top, left) to the frame's bottom-right corner; scoring starts at
    (score_top, score_left)."""
    def start(size: int) -> Tuple[int, int]:
        score = max(0, size - AUDIT_TILE)
        return (max(0, score - CONTEXT) // ALIGN) * ALIGN, score
    top, score_top = start(height)
    left, score_left = start(width)
    return top, left, score_top, score_left


def delta_db(written: np.ndarray, reference: np.ndarray, model_input: np.ndarray) -> float:
    err = float(np.mean((written.astype(np.float64) - reference) ** 2))
    change = float(np.mean((reference.astype(np.float64) - model_input) ** 2))
    return 10 * math.log10(1 + err / max(change, 1e-6))


class Auditor:
    """Audits every ``every``-th frame offered (:meth:`offer`) on its own thread."""

    def __init__(self, reference: nn.Module, every: int, scale: int, sigma: Optional[float] = None,
                 prefilter: Optional[Callable[[np.ndarray], np.ndarray]] = None, name: str = "") -> None:
        if every < 1:
            raise ValueError(f"audit every N frames needs N >= 1, got {every}")
        self.restorer = Restorer(reference, device="cpu", precision="fp32", sigma=sigma, prefilter=False)
        self.every, self.scale, self.prefilter = every, scale, prefilter
        self.report = AuditReport(every=every, reference=name or "exact attention, trained window, fp32")
        self._inbox: "queue.Queue[Optional[Tuple[Frame, np.ndarray]]]" = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._loop, name="audit", daemon=True)
        self._error: Optional[BaseException] = None
        self._thread.start()

    def offer(self, original: Frame, written: np.ndarray) -> None:
        """``original``: the decoded frame; ``written``: the restored image written for it."""
        if original.index % self.every:
            return
        try:
            self._inbox.put_nowait((original, written))
        except queue.Full:
            self.report.skipped += 1

    def finish(self, timeout: float = JOIN_S) -> AuditReport:
        """Wait (at most ``timeout``) for the audit under way, stop the thread, summarise."""
        try:
            self._inbox.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        report = self.report
        if report.deltas:
            values = [d for _, d in report.deltas]
            report.mean_db = float(np.mean(values))
            report.worst_frame, report.worst_db = max(report.deltas, key=lambda p: p[1])
        return report

    def _loop(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)   # Linux: this thread only
        except (AttributeError, OSError):
            pass
        while True:
            job = self._inbox.get()
            if job is None:
                return
            try:
                self._audit(*job)
            except Exception as err:   # an audit never fails the run; it is left out, counted
                self._error = err
                self.report.skipped += 1

    def _audit(self, original: Frame, written: np.ndarray) -> None:
        image = original.image if self.prefilter is None else self.prefilter(original.image)
        h, w = image.shape[:2]
        top, left, score_top, score_left = audit_box(h, w)
        crop = np.ascontiguousarray(image[top:, left:])
        with torch.inference_mode():
            reference = self.restorer.restore(crop).astype(np.float64)
        s = self.scale
        ref = reference[(score_top - top) * s:, (score_left - left) * s:]
        out = written[score_top * s:, score_left * s:]
        source = image[score_top:, score_left:]
        if s > 1:   # the input at the output's size: what the model's change is measured from
            source = np.repeat(np.repeat(source, s, axis=0), s, axis=1)
        delta = delta_db(out, ref, source.astype(np.float64))
        mse = float(np.mean((out.astype(np.float64) - ref) ** 2))
        psnr = 99.0 if mse == 0 else 10 * math.log10(float(pixel_max(written.dtype)) ** 2 / mse)
        report = self.report
        report.count += 1
        report.deltas.append((original.index, delta))
        report.psnr_db_min = psnr if report.psnr_db_min is None else min(report.psnr_db_min, psnr)
