"""``nystra-stream batch JOBS.yaml``: validate, plan, skip what is done, run the rest, report."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from typing import Dict, List, Optional

import av
from tqdm import tqdm

from ..errors import StreamerError, UsageError
from . import manifest, report, segments
from .executors import LocalExecutor, Outcome
from .plan import Task, plan
from .ray_executor import RayExecutor
from .schema import validate
from .yamlfile import load

log = logging.getLogger(__name__)
PROG = "nystra-stream batch"
EXECUTORS = ("local", "ray")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Run the restoration jobs of a YAML job file: each "
                                     "finished job is recorded and skipped next time.")
    parser.add_argument("jobs_file", metavar="JOBS.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (jobs, outputs, run or skip and "
                        "why, resolved settings) and run nothing")
    parser.add_argument("--force", action="store_true", help="redo every job, done or not")
    parser.add_argument("--only", nargs="+", metavar="NAME", default=[], help="run only these jobs")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="jobs at once, sharing the cores "
                        "(default 1)")
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help="where jobs run (default local)")
    parser.add_argument("--ray-address", metavar="auto|ray://HOST:PORT", help="the Ray cluster to use with "
                        "--executor ray (default: a Ray instance on this machine, started for the batch)")
    parser.add_argument("--report", metavar="PATH", help="write the JSON report here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-job lines")
    return parser


def _frames_of(path: str) -> Optional[int]:
    """The input's frame count as its container states it (no decoding), None if unknown."""
    try:
        with av.open(path) as container:
            st = container.streams.video[0]
            if st.frames:
                return st.frames
            if st.duration is not None and st.average_rate:
                return int(round(float(st.duration * st.time_base * st.average_rate)))
    except (av.FFmpegError, OSError, IndexError):
        pass
    return None


def run(argv: List[str], out=None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if args.jobs < 1:
        raise UsageError("--jobs must be >= 1")
    tasks = plan(validate(load(args.jobs_file)), only=args.only)
    decisions = [(False, "--force") if args.force else manifest.decide(t.input, t.output, t.options) for t in tasks]
    if args.dry_run:
        for task, (skip, why) in zip(tasks, decisions):
            settings = ", ".join(f"{k}={v}" for k, v in sorted(task.options.items())) or "defaults"
            print(f"{'skip' if skip else 'run '}  {task.name}: {task.input} -> {task.output}  ({why}; {settings})",
                  file=out)
        return 0
    skipped = [Outcome(t, "skipped", why=why) for t, (skip, why) in zip(tasks, decisions) if skip]
    todo = [t for t, (skip, _) in zip(tasks, decisions) if not skip]
    pieces, whole = _split(todo, args.jobs)
    outcomes = _join(_execute(pieces, skipped, args, out), whole, args)
    entries = [report.entry(o) for o in outcomes]
    if not args.quiet:
        print(report.table(entries), file=out)
    if args.report:
        report.write_report(args.report, args.jobs_file, args.executor, entries)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _split(todo: List[Task], jobs: int) -> tuple:
    """Segmented tasks replaced by their pieces (those not done before); (pieces, segmented tasks)."""
    pieces: List[Task] = []
    whole: Dict[str, List[Task]] = {}
    for task in todo:
        count = task.segments
        if count == "auto":
            count = segments.auto_segment_count(task.input, jobs)
        if count in ("off", 1) or count is None:
            pieces.append(task)
            continue
        plans = segments.plan_segments(task.input, int(count))
        if segments.claim_parts(task.input, task.output, task.options, plans):
            log.warning("%s: the parts of an earlier run were made from another input, options or cuts: "
                        "redoing them", task.name)
        whole[task.name] = []
        for plan_ in plans:
            part = segments.part_path(task.output, plan_.index)
            piece = Task(f"{task.name}#{plan_.index + 1}", task.input, part,
                         {**task.options, "frame_range": [plan_.start, plan_.end], "copy_streams": False},
                         timeout=task.timeout, retries=task.retries, line=task.line, part_of=task)
            whole[task.name].append(piece)
            if not os.path.exists(part):   # a part is renamed into place only when complete
                pieces.append(piece)
    return pieces, whole


def _join(outcomes: List[Outcome], whole: Dict[str, List[Task]], args: argparse.Namespace) -> List[Outcome]:
    """Each segmented task's parts joined into its output, once all of them are done."""
    failed = {o.task.name: o for o in outcomes if o.status == "failed"}
    result = [o for o in outcomes if o.task.part_of is None]
    for name, parts in whole.items():
        task = parts[0].part_of
        done = [o for o in outcomes if o.task.part_of is task and o.status == "done"]
        bad = [failed[p.name] for p in parts if p.name in failed]
        seconds = sum(o.seconds for o in done)
        if bad:
            outcome = Outcome(task, "failed", error=f"segment {bad[0].task.name}: {bad[0].error}", code=bad[0].code,
                              seconds=seconds)
        else:
            try:
                segments.join_segments(task.input, [p.output for p in parts], task.output)
                stats = {"frames_in": sum(p.options["frame_range"][1] - p.options["frame_range"][0] for p in parts),
                         "segments": len(parts)}
                stats["frames_out"] = stats["frames_in"]
                stats["fps"] = stats["frames_out"] / seconds if seconds else 0.0
                manifest.write(task.input, task.output, task.options, stats)
                outcome = Outcome(task, "done", stats=stats, seconds=seconds,
                                  worker=f"{len(parts)} segments")
            except StreamerError as err:
                outcome = Outcome(task, "failed", error=" ".join(str(err).split()), code=1, seconds=seconds)
        if not args.quiet:
            tqdm.write(report.line(outcome))
        result.append(outcome)
    return result


def _execute(todo: List[Task], skipped: List[Outcome], args: argparse.Namespace, out) -> List[Outcome]:
    totals = {t.name: (t.options["frame_range"][1] - t.options["frame_range"][0]) if t.part_of is not None
              else _frames_of(t.input) or 0 for t in todo}
    done = {t.name: 0 for t in todo}
    lock = threading.Lock()
    bar = tqdm(total=sum(totals.values()) or None, unit="frame", disable=args.quiet or not todo,
               file=sys.stderr, dynamic_ncols=True)
    for outcome in skipped:
        if not args.quiet:
            tqdm.write(report.line(outcome), file=out)

    def progress(task: Task, frames: int, total: Optional[int]) -> None:
        with lock:
            if total and total != totals[task.name]:
                bar.total = (bar.total or 0) + total - totals[task.name]
                totals[task.name] = total
            bar.update(max(0, frames - done[task.name]))
            done[task.name] = max(done[task.name], frames)

    def finished(outcome: Outcome) -> None:
        if outcome.task.part_of is not None and outcome.status == "done":
            with lock:
                bar.update(max(0, outcome.stats.get("frames_out", 0) - done[outcome.task.name]))
            return
        with lock:
            if outcome.status == "done":
                bar.update(max(0, outcome.stats.get("frames_out", 0) - done[outcome.task.name]))
            if not args.quiet:
                tqdm.write(report.line(outcome), file=out)

    try:
        executor = RayExecutor(args.ray_address, args.jobs) if args.executor == "ray" else LocalExecutor(args.jobs)
        ran = executor.run(todo, progress, finished) if todo else []
    finally:
        bar.close()
    order = {id(t): i for i, t in enumerate(todo)}
    return skipped + sorted(ran, key=lambda o: order[id(o.task)])
