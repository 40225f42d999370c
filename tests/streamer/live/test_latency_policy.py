"""How a live run keeps latency down when the model is the bottleneck (real lavfi source)."""
from __future__ import annotations

import logging
import queue

from streamer.flow import DemandQueue

from live_peers import live_run
from toy_models import Slow

MODEL_S = 0.5   # the toy model sleeps: its time does not depend on how loaded the machine is


def test_demand_queue_says_when_its_consumer_waits():
    q = DemandQueue(1)
    assert not q.wanted.is_set()
    q.put("a")
    assert q.get() == "a" and not q.wanted.is_set()   # there was an item: no demand said
    try:
        q.get(timeout=0.01)
    except queue.Empty:
        pass
    assert q.wanted.is_set()


def test_a_frame_waits_for_the_model_at_the_source_not_in_a_queue():
    """The decoder takes a frame only when the model asks, so a frame's latency is about one
    model time; with a frame queued behind the one in the model it was two (p50 ~1.0 s here)."""
    stats = live_run("lavfi:testsrc2=size=64x48:rate=20", None, frames=8, seconds=30, model=Slow(MODEL_S),
                     max_latency=3000, serve="0")
    assert stats.frames_out >= 8
    assert stats.latency_ms_p50 < 1.6 * MODEL_S * 1000, stats.latency_ms_p50


def test_a_budget_no_frame_can_make_still_gives_fresh_frames(caplog):
    """A model slower than --max-latency: the run says so once and goes on with the freshest
    frames (before: every frame was dropped as late once the first was measured)."""
    with caplog.at_level(logging.WARNING, logger="streamer.pipeline"):
        stats = live_run("lavfi:testsrc2=size=64x48:rate=20", None, frames=12, seconds=30, model=Slow(MODEL_S),
                         max_latency=200, serve="0")
    assert stats.frames_out >= 12
    assert stats.frames_late >= stats.frames_out - 1
    assert stats.latency_ms_p50 < 1.6 * MODEL_S * 1000
    said = [r.message for r in caplog.records if "no frame can make it" in r.message]
    assert len(said) == 1, said
