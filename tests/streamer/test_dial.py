"""The dial (``--target-fps``, issue 17): the chooser and the hysteresis controller as pure
functions of a table and timings, and a run that reaches twice what the default settings do."""
import copy
import dataclasses
import math
import queue
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch

import streamer
from pipelines import zoo
from pipelines.loading import load_model
from pipelines.quality_table import Entry, QualityTable, Setting, apply_setting, dial_model
from pipelines.restorer import Restorer
from streamer import dial
from streamer.dial import Controller, Timed, choose, ladder, to_calibrate
from streamer.errors import UsageError
from streamer.frames import Frame
from streamer.options import Options, check_options
from streamer.pool import CpuPool
from streamer.windows import Cutter
from streamer.workers import DeviceWorker

EXACT = Setting("exact")
FULL = Setting()                         # Nyström m16 T2, full resolution
CHEAP = Setting(landmarks=4, iters=1)
HALF = Setting(resolution=0.5)
WIDE = Setting(window=32)


def timed(*rows):
    return [Timed(s, d, f) for s, d, f in rows]


# -- choosing ---------------------------------------------------------------------------------


def test_choose_takes_the_least_loss_among_the_settings_fast_enough():
    rows = timed((EXACT, 0.0, 1.0), (FULL, 0.01, 2.0), (CHEAP, 0.02, 2.5), (HALF, 2.4, 8.0))
    assert choose(rows, target=2.0, headroom=1.0) == (rows[1], True)
    assert choose(rows, target=2.0, headroom=1.1) == (rows[2], True)   # 2.0 < 2.2: the headroom counts
    assert choose(rows, target=0.5, headroom=1.1) == (rows[0], True)
    assert choose(rows, target=6.0, headroom=1.1) == (rows[3], True)


def test_choose_falls_back_to_the_fastest_and_says_so():
    rows = timed((EXACT, 0.0, 1.0), (HALF, 2.4, 8.0), (CHEAP, 0.02, 2.5))
    assert choose(rows, target=20.0) == (rows[1], False)
    with pytest.raises(ValueError):
        choose([], target=1.0)


def test_choose_breaks_a_quality_tie_with_speed():
    rows = timed((FULL, 0.01, 2.0), (CHEAP, 0.01, 3.0))
    assert choose(rows, target=1.0)[0] == rows[1]


def test_ladder_keeps_one_window_and_drops_rungs_that_are_slower_and_worse():
    rows = timed((FULL, 0.01, 2.0), (CHEAP, 0.02, 1.9), (Setting(resolution=0.75), 1.4, 3.0), (HALF, 2.4, 8.0),
                 (WIDE, 0.1, 2.5))
    rungs = ladder(rows, window=None)
    assert [r.setting for r in rungs] == [FULL, Setting(resolution=0.75), HALF]
    assert [r.setting for r in ladder(rows, window=32)] == [WIDE]


def test_to_calibrate_times_the_default_then_the_best_of_each_resolution():
    entries = [Entry(FULL, 0.01, 0.5), Entry(CHEAP, 0.011, 0.4), Entry(EXACT, 0.0, 1.0),
               Entry(Setting(resolution=0.5, landmarks=4), 2.4, 0.1), Entry(HALF, 2.41, 0.12),
               Entry(WIDE, 0.2, 0.5)]
    table = QualityTable("k", "m", entries)
    picked = [e.setting for e in to_calibrate(table, FULL, [None])]
    # full resolution: exact has the least loss but CHEAP is within TIE_DB of... no: EXACT is 0.0,
    # FULL 0.01 and CHEAP 0.011 are within 0.02 of it; the cheapest of those (CHEAP) stands for it.
    assert picked == [FULL, CHEAP, Setting(resolution=0.5, landmarks=4)]
    assert WIDE in [e.setting for e in to_calibrate(table, FULL, [None, 32])]


# -- the hysteresis controller (fake time) ---------------------------------------------------------


def feed(controller, fps, start, seconds, step=0.25):
    """Samples every ``step`` s from ``start`` for ``seconds``; the first step taken, with its time."""
    t = start
    while t < start + seconds - 1e-9:
        change = controller.observe(t, fps)
        if change is not None:
            return t, change
        t += step
    return None


RUNGS = timed((FULL, 0.01, 3.0), (Setting(resolution=0.75), 1.4, 5.0), (HALF, 2.4, 9.0))


def test_controller_steps_down_after_three_seconds_below_and_not_before():
    c = Controller(RUNGS, start=0, target=4.0)
    assert feed(c, 3.7, 0.0, 20.0) is None           # above 0.9 x 4: nothing
    c = Controller(RUNGS, start=0, target=4.0, headroom=1.0)
    when, (old, new, reason) = feed(c, 3.0, 0.0, 10.0)
    # 3 fps at the 3-fps rung: the 5-fps rung is predicted at 5 >= 4, enough: one rung down.
    assert math.isclose(when, 3.0) and old.setting == FULL and new.setting == Setting(resolution=0.75)
    assert "3 s" in reason and c.index == 1


def test_controller_steps_down_as_far_as_the_calibrated_ratios_say_it_takes():
    c = Controller(RUNGS, start=0, target=4.0, headroom=1.0)
    _, (_, new, _) = feed(c, 2.0, 0.0, 10.0)   # 2 fps: the 5-fps rung would give 3.3, the 9-fps one 6
    assert new.setting == HALF and c.index == 2
    c = Controller(RUNGS, start=0, target=40.0)
    _, (_, new, _) = feed(c, 2.0, 0.0, 10.0)   # out of reach: the fastest
    assert new.setting == HALF


def test_controller_forgets_a_dip_shorter_than_three_seconds():
    c = Controller(RUNGS, start=0, target=4.0)
    assert feed(c, 3.0, 0.0, 2.0) is None
    assert feed(c, 5.0, 2.0, 20.0) is None           # the window's mean climbs back over 0.9 x 4
    assert c.index == 0


def test_controller_steps_up_after_ten_seconds_above_only_if_the_better_rung_would_hold():
    c = Controller(RUNGS, start=2, target=4.0)
    # 5 fps > 1.2 x 4 at the half-size rung; the next better rung (5/9 of its speed) would run
    # 2.8 fps: below the target, so it stays.
    assert feed(c, 5.0, 0.0, 30.0) is None and c.index == 2
    # 8 fps: 8 x 5/9 = 4.4 >= 4 -> up, 10 s after the window's mean (2 s) says so.
    when, (old, new, _) = feed(c, 8.0, 30.0, 30.0)
    assert 10.0 <= when - 30.0 <= 10.0 + dial.WINDOW_S and new.setting == Setting(resolution=0.75)


def test_controller_stays_at_the_ends_of_the_ladder():
    c = Controller(RUNGS, start=2, target=100.0)
    assert feed(c, 9.0, 0.0, 20.0) is None and c.index == 2
    c = Controller(RUNGS, start=0, target=1.0)
    assert feed(c, 9.0, 0.0, 20.0) is None and c.index == 0


def test_controller_checks_its_arguments():
    with pytest.raises(ValueError):
        Controller([], 0, 1.0)
    with pytest.raises(ValueError):
        Controller(RUNGS, 0, 0.0)


def test_the_dial_takes_no_attention_options_and_only_the_cpu():
    with pytest.raises(UsageError, match="--landmarks"):
        check_options(Options(task="denoise", target_fps=5, landmarks=4))
    check_options(Options(task="denoise", target_fps=5, window=32))


def test_max_latency_alone_does_not_turn_the_dial_on(sample_clip, tmp_path):
    stats = streamer.run(str(sample_clip.path), str(tmp_path / "o.mp4"), task="denoise", workers=0,
                         max_latency=500, precision="fp32")
    assert stats.dial is None


# -- the run (acceptance 3) --------------------------------------------------------------------------


def test_the_dial_reaches_twice_what_the_default_settings_reach(clip_factory, tmp_path):
    clip = clip_factory(frames=48, width=640, height=360, degradation="noise", audio=False)
    opts = dict(task="denoise", precision="fp32")

    def default_fps(name):
        return streamer.run(str(clip.path), str(tmp_path / name), frames=12, **opts).fps_steady

    before = default_fps("before.mp4")
    target = 2 * before
    run = streamer.run(str(clip.path), str(tmp_path / "dial.mp4"), target_fps=target, audit=30, **opts)
    # The machine is shared: the default again, right after. Where other work slowed it meanwhile,
    # "twice the default" is twice what the default reaches under that load.
    baseline = min(before, default_fps("after.mp4"))
    d = run.dial
    assert d["target_fps"] == target and d["calibration_s"] < 5.0
    assert set(d["chosen"]) == {"attention", "landmarks", "iters", "window", "resolution"}
    assert d["predicted_delta_db"] > 0 and len(d["timed"]) >= 3
    # Where it stepped, each change says from what, to what and why.
    assert all({"frame", "time_s", "from", "to", "reason"} <= set(c) for c in d["changes"])
    # Measured: the steady rate of the whole run (generous: the machine is shared).
    assert run.fps_steady >= 0.9 * 2 * baseline, (run.fps_steady, before, baseline, d)
    assert run.audit["count"] >= 1 and run.audit["mean_db"] > 0   # what it cost, audited on the footage


# -- a change reaches the workers between frames ------------------------------------------------------


def _frames(n):
    rng = np.random.default_rng(3)
    return [Frame(i, i, Fraction(1, 30), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for i in range(n)]


@pytest.mark.parametrize("kind", ["in-process", "processes"])
def test_a_retuned_worker_runs_the_new_setting_from_the_next_frame_on(kind):
    model = dial_model(load_model(zoo.default_preset("denoise"), attention=None))
    cutter = Cutter(1, 0, 0, 0, 1)
    items = [it for f in _frames(4) for it in cutter.push(f)] + cutter.finish()
    expected = {}
    for setting in (FULL, HALF):
        restorer = Restorer(copy.deepcopy(apply_setting(model, setting)), prefilter=False)
        expected[setting] = [restorer.restore_pixels(torch.from_numpy(it.data)).numpy() for it in items]
    apply_setting(model, FULL)
    worker = DeviceWorker(model) if kind == "in-process" else CpuPool(model, workers=1)
    inbox, results, stop = queue.Queue(), queue.Queue(), threading.Event()
    worker.start()
    thread = threading.Thread(target=worker.run, args=(inbox, results.put, stop), daemon=True)
    thread.start()
    try:
        got = []
        for i, item in enumerate(items):
            if i == 2:
                worker.retune(HALF)
            inbox.put(item)
            got.append(results.get(timeout=60).image)
        inbox.put(None)
        thread.join(10)
    finally:
        stop.set()
        worker.terminate()
    for i, image in enumerate(got):
        setting = FULL if i < 2 else HALF
        assert np.array_equal(image, expected[setting][i]), (i, setting)
    assert not np.array_equal(expected[FULL][3], expected[HALF][3])


def test_a_target_out_of_reach_runs_the_fastest_setting_with_one_warning(sample_clip, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="streamer.dial"):
        stats = streamer.run(str(sample_clip.path), str(tmp_path / "o.mp4"), task="denoise", workers=0,
                             precision="fp32", target_fps=1e6)
    d = stats.dial
    warnings = [r.getMessage() for r in caplog.records if "out of reach" in r.getMessage()]
    assert len(warnings) == 1 and f"{d['predicted_fps']:.1f} fps" in warnings[0]
    assert not d["reached"] and d["predicted_fps"] == max(t["fps"] for t in d["timed"])
    assert stats.frames_out == sample_clip.n_frames


def test_a_live_run_follows_its_target_and_keeps_its_accounting(tmp_path):
    # A live source (lavfi, paced at real time) for 4 s; the dial at the source's rate.
    stats = streamer.run("lavfi:testsrc2=size=320x180:rate=10", str(tmp_path / "live.mkv"), task="denoise",
                         precision="fp32", target_fps=10, duration=4)
    assert stats.live and stats.dial is not None and stats.dial["target_fps"] == 10
    assert stats.frames_in == stats.frames_out + stats.frames_dropped and stats.frames_out > 0
    for change in stats.dial["changes"]:   # where the load made it step, each step says why
        assert change["from"] != change["to"] and "target" in change["reason"]


class FakeWorker:   # a Tunable that records what it is told
    lanes = 2

    def __init__(self):
        self.settings = []

    def retune(self, setting):
        self.settings.append(setting)


@pytest.mark.parametrize("live", [True, False])
def test_the_dial_reads_capacity_from_busy_time_and_for_files_from_what_is_written(live, capsys):
    model = dial_model(load_model(zoo.default_preset("denoise"), attention=None))
    rows = timed((FULL, 0.01, 4.0), (Setting(resolution=0.75), 1.4, 6.0), (HALF, 2.4, 12.0))
    d = dial.Dial(rows, {None: model}, target=3.0, calibration_s=1.0)
    assert d.report.chosen["resolution"] == 1.0 and "target fps 3" in capsys.readouterr().err
    worker = FakeWorker()
    # 10 s at 2 frames a second written, while the workers' busy time says 2 lanes x 2 fps = 4.
    for i in range(1, 21):
        d.frame_done(i, i * 0.5, busy_seconds=i * 0.5, worker=worker, live=live)
    if live:   # a live source paces the writes: the model itself keeps up (4 >= 0.9 x 3)
        assert worker.settings == [] and d.report.changes == []
    else:      # a file writes as fast as the run can: 2 < 0.9 x 3 for 3 s -> down
        assert worker.settings and worker.settings[0].resolution < 1.0
        change = d.report.changes[0]
        assert change["from"] == "nystrom m16 T2" and change["to"] == worker.settings[0].label()
        assert "target" in change["reason"] and change["frame"] > 6   # not before 3 s of it
        assert d.report.final == dataclasses.asdict(worker.settings[-1])
