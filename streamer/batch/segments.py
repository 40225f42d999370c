"""Segment-parallel runs: one long video restored as K pieces at once, then joined.

:func:`plan_segments` cuts the file at keyframes into pieces of about equal duration (a
demux-only scan; fewer pieces if it has fewer keyframes, never an empty one). Each piece is an
ordinary run over a :class:`~streamer.ranges.FrameRange` (:func:`run_segment`): it seeks to its
keyframe, decodes exactly as a whole pass would, and writes its frames, video only, with their
original timestamps, to a part file (atomic, like every output). :func:`join_segments` copies
the parts' packets in order into the output and muxes the source's audio, subtitles and tags
once, so a per-frame model with a lossless codec gives the single-process output bit for bit.

Parts live in ``.NAME.parts/`` next to the output and are kept until the join succeeds: an
interrupted job redoes only the parts that are missing (a part is renamed into place only when
complete). Encoders must start each part on a keyframe and not reorder across it: parts are
written without B-frames (``bf=0``), so the joined stream's decode order is its presentation
order at every seam.

Video models are split too: a clip model's frames depend on their neighbours, so each piece
decodes from the clip grid before its start and a clip past its end and writes only its own frames
(:meth:`streamer.pipeline.Run._restrict`): every frame sees the clips and blend weights of one pass.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import av

from ..errors import ProcessingError, UsageError
from . import manifest
from ..passthrough import Passthrough
from ..ranges import FrameIndex, FrameRange
from ..sinks import temp_path

SECONDS_PER_SEGMENT_MIN = 10.0   # `segments: auto`: no piece shorter than this


@dataclass(frozen=True)
class SegmentPlan:
    index: int
    start: int           # output frames [start, end) of the source's video
    end: int

    @property
    def frames(self) -> FrameRange:
        return FrameRange(self.start, self.end)


def plan_segments(input_path: str, count: int) -> List[SegmentPlan]:
    """Up to ``count`` pieces of about equal duration, each starting on a keyframe."""
    index = FrameIndex.scan(input_path)
    total = len(index)
    if total == 0:
        raise UsageError(f"{input_path}: no video frames to split")
    first, last = index.pts[0], index.pts[-1]
    cuts = [0]
    for k in range(1, max(1, count)):
        target = first + (last - first) * k / count
        nearest = min(index.keyframes, key=lambda f: abs(index.pts[f] - target))
        if nearest > cuts[-1]:
            cuts.append(nearest)
    cuts.append(total)
    return [SegmentPlan(i, a, b) for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def auto_segment_count(input_path: str, workers: int) -> int:
    """``segments: auto``: one piece per worker, none shorter than :data:`SECONDS_PER_SEGMENT_MIN`."""
    with av.open(input_path) as container:
        seconds = (container.duration or 0) / av.time_base
    return max(1, min(workers, int(seconds // SECONDS_PER_SEGMENT_MIN)))


def parts_dir(output: str) -> str:
    directory, name = os.path.split(os.path.abspath(output))
    return os.path.join(directory, f".{name}.parts")


def part_path(output: str, index: int) -> str:
    return os.path.join(parts_dir(output), f"part-{index:04d}.nut")


PLAN_FILE = "plan.json"   # in the parts folder: what its parts were made from


def claim_parts(input_path: str, output: str, options: Dict[str, Any], plans: List[SegmentPlan]) -> bool:
    """Make the parts folder of ``output`` this task's: parts left by an interrupted run are kept
    only if they were made from the same input, options, model, tool version and cuts (recorded
    in its ``plan.json``); otherwise they are removed, so a changed job never joins stale pieces.
    Returns whether earlier parts were discarded."""
    folder = parts_dir(output)
    record = {**manifest.expected(input_path, options), "cuts": [[p.start, p.end] for p in plans]}
    path = os.path.join(folder, PLAN_FILE)
    try:
        with open(path) as fh:
            recorded = json.load(fh)
    except (OSError, ValueError):
        recorded = None
    discarded = False
    if recorded != json.loads(json.dumps(record, default=str)):
        for old in glob.glob(os.path.join(glob.escape(folder), "part-*.nut")):
            os.remove(old)
            discarded = True
        os.makedirs(folder, exist_ok=True)
        temp = path + ".tmp"
        with open(temp, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True, default=str)
        os.replace(temp, path)
    return discarded


def join_segments(input_path: str, parts: List[str], output: str) -> None:
    """The parts' video in order, plus the source's other streams and tags, into ``output``
    (atomic); the parts are removed only once the output is in place."""
    for part in parts:
        if not os.path.exists(part):
            raise ProcessingError(f"segment {part} is missing")
    temp = temp_path(output)
    try:
        with av.open(parts[0]) as first, av.open(temp, "w") as out:
            template = first.streams.video[0]
            video = out.add_stream_from_template(template)
            passthrough = Passthrough(input_path, out, video)
            last_dts = None
            for part in parts:
                with av.open(part) as container:
                    stream = container.streams.video[0]
                    for packet in container.demux(stream):
                        if not packet.size:
                            continue
                        if last_dts is not None and packet.dts is not None and packet.dts <= last_dts:
                            raise ProcessingError(f"segment {part} overlaps the one before it")
                        last_dts = packet.dts
                        if packet.dts is not None:
                            passthrough.mux_until(float(packet.dts * packet.time_base))
                        packet.stream = video
                        out.mux(packet)
            passthrough.finish()
        os.replace(temp, output)
    except (av.FFmpegError, OSError) as err:
        _remove(temp)
        raise ProcessingError(f"joining the segments of {output} failed: {' '.join(str(err).split())}") from None
    except BaseException:
        _remove(temp)
        raise
    for part in parts:   # the parts, their plan, and their folder once it is empty; nothing else
        _remove(part)
    _remove(os.path.join(os.path.dirname(os.path.abspath(parts[0])), PLAN_FILE))
    try:
        os.rmdir(os.path.dirname(os.path.abspath(parts[0])))
    except OSError:
        pass


def _remove(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)
