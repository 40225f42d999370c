"""``Stats``: what a run did (the ``--stats`` JSON), filled in by :class:`streamer.pipeline.Run`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional

from pipelines.quality_table import Setting


@dataclass
class Stats:
    """What a run did; ``to_dict()`` is the ``--stats`` JSON."""

    input: str
    output: Optional[str]                   # None: no output (--serve only)
    model: str = ""
    worker: str = ""
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    startup_seconds: Optional[float] = None  # until the first restored frame was written
    fps_steady: Optional[float] = None       # frames after the first / time after the first
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0                # this process
    peak_frames_held: int = 0               # most frames decoded and not yet written at once
    workers_peak_rss_mb: float = 0.0        # largest worker process (CPU pool)
    latency_ms_p50: Optional[float] = None  # decode of a frame -> its restored frame encoded
    latency_ms_p95: Optional[float] = None
    latency_ms_p99: Optional[float] = None
    live: bool = False
    frames_dropped: int = 0                 # live: frames_in = frames_out + frames_dropped
    frames_late: int = 0                    # written later than --max-latency (it could not be met)
    drop_reasons: Dict[str, int] = field(default_factory=dict)
    worker_restarts: int = 0
    attention_fallbacks: int = 0            # window-heads where Nyström broke down and exact ran
    prefilter: Optional[str] = None         # whole-frame step before the model, if any
    precision: Optional[str] = None         # fp32 / bf16 / fp16 / int8: what ran (--precision)
    precision_auto: Optional[dict] = None   # --precision auto: per mode {seconds, psnr} it chose from
    audit: Optional[dict] = None            # --audit N: streamer.audit.AuditReport
    dial: Optional[dict] = None             # --target-fps F: streamer.dial.DialReport
    frames_deconvolved: int = 0             # frames where it found a motion blur and inverted it
    decode_errors: int = 0                  # input packets that did not decode (skipped: a gap)
    frames_damaged: int = 0                 # input frames decoded with errors concealed
    reconnects: int = 0                     # live input: times it came back after a stall or loss
    stalls: int = 0                         # live input: times nothing arrived for --stall-timeout
    frames_repeated: int = 0                # network output: the last frame again while none came
    frames_no_signal: int = 0               # network output: "no signal" frames (after --stub-after)
    serve: Optional[dict] = None            # --serve: url, viewers_peak, requests, jpeg_*, post_seconds
    completed: bool = False
    kept_partial: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lat = f", latency p50 {self.latency_ms_p50:.0f} ms p95 {self.latency_ms_p95:.0f} ms" \
            if self.latency_ms_p50 is not None else ""
        if self.live and self.latency_ms_p99 is not None:
            lat += f" p99 {self.latency_ms_p99:.0f} ms, {self.frames_dropped} dropped"
            lat += f", {self.reconnects} reconnects" if self.reconnects else ""
        fallbacks = (f", Nyström fell back to exact attention on {self.attention_fallbacks} window-heads"
                     if self.attention_fallbacks else "")
        if self.prefilter == "motion-wiener":
            fallbacks += f", motion blur found and deconvolved in {self.frames_deconvolved} frames"
        if self.dial is not None:
            fallbacks += f", dial: {Setting(**(self.dial['final'] or self.dial['chosen'])).label()} " \
                         f"for {self.dial['target_fps']:g} fps ({len(self.dial['changes'])} changes)"
        return (f"{self.frames_out}/{self.frames_in} frames in {self.seconds:.1f} s ({self.fps:.2f} fps{lat}), "
                f"peak RSS {self.peak_rss_mb:.0f} MB, {self.worker}{fallbacks}")
