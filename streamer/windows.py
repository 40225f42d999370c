"""Cutting the frame stream into work items and putting the restored pieces back.

- :class:`ClipWindower` groups frames into clips of ``clip_len`` frames overlapping by
  ``clip_overlap`` (per-frame models: clips of one frame). The last clip is aligned to the end
  of the stream, so no frame is dropped and every clip is full length (unless the whole
  stream is shorter than one clip).
- :class:`TileLayout` cuts a frame size into overlapping tiles and holds their blend weights
  on the output grid (scaled by the model's factor).
- :class:`Cutter` = windower + layout: frames in, indexed :class:`WorkItem` out.
- :class:`Stitcher` takes results *in index order*, blends a clip's tiles with the spatial
  ramps, blends overlapping clips with linear temporal ramps, and emits finished frames in
  order, each paired with the source frame it restores. It holds one clip and the frames that
  clip shares with the next; earlier frames have left.
- :func:`window_settings` fills in what the user left out (video models: the official RVRT test's
  tiles, the model's clip length); :func:`queue_items` sizes the queues between stages.

Where clips start and how they blend is :mod:`pipelines.clips` (the official RVRT test's clip
starts, linear ramps), shared with ``Restorer.restore_video``; a clip of a video model times a
spatial tile is the official test's ``--tile T H W``.

Padding to the model's window multiple happens per tile in :class:`pipelines.restorer.Restorer`
(every tile is padded at its bottom/right and cropped back), so tiles here are plain boxes.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Tuple

import numpy as np

from pipelines import tiling
from pipelines.clips import ClipBlender, ClipSchedule, ClipSpan
from pipelines.pixels import round_pixels
from pipelines.models.base import ModelInfo
from pipelines.tiling import Box

from .errors import ProcessingError, UsageError
from .frames import Clip, Frame


DEFAULT_TILE = 512
DEFAULT_TILE_OVERLAP = 32
# Video models: the official RVRT test's settings (README of JingyunLiang/RVRT: `--tile 0 256 256`
# for deblurring/denoising, 128 px tiles for x4 REDS, `--tile_overlap 2 20 20`); a 16-frame clip
# of 512 px tiles would need several GB of features on a CPU.
DEFAULT_VIDEO_TILE = {4: 128}   # by model scale; other scales: DEFAULT_VIDEO_TILE_OTHER
DEFAULT_VIDEO_TILE_OTHER = 256
DEFAULT_VIDEO_TILE_OVERLAP = 20


@dataclass
class WorkItem:
    """One unit of work for a worker: a spatial tile of a clip."""

    index: int            # global, consecutive: results are reordered by it
    clip_id: int
    clip: Clip            # stays in this process; only ``data`` travels to a worker
    tile: int             # position of ``box`` in the layout
    box: Box              # (top, left, bottom, right) in input pixels
    data: np.ndarray      # (T, h, w, 3) uint8, or uint16 for high bit depth (possibly a view into the frames)


@dataclass
class WorkResult:
    item: WorkItem
    image: np.ndarray     # (T, h*s, w*s, 3), the type of ``item.data``


def check_window_options(tile: int, tile_overlap: int, clip_len: int, clip_overlap: int) -> None:
    """Raise :class:`UsageError` for tile/clip settings that cannot work."""
    if tile < 0:
        raise UsageError(f"--tile must be >= 0 (0 = no tiling), got {tile}")
    if tile_overlap < 0:
        raise UsageError(f"--tile-overlap must be >= 0, got {tile_overlap}")
    if tile > 0 and tile_overlap >= tile:
        raise UsageError(f"--tile ({tile}) must be larger than --tile-overlap ({tile_overlap})")
    if clip_len < 1:
        raise UsageError(f"--clip-len must be >= 1, got {clip_len}")
    if not 0 <= clip_overlap < clip_len:
        raise UsageError(f"--clip-overlap ({clip_overlap}) must be >= 0 and smaller than --clip-len ({clip_len})")


@dataclass(frozen=True)
class WindowSettings:
    """How the stream is cut: clips of ``clip_len`` frames x tiles of ``tile`` pixels."""

    tile: int
    tile_overlap: int
    clip_len: int
    clip_overlap: int


def window_settings(info: ModelInfo, tile: Optional[int] = None, tile_overlap: Optional[int] = None,
                    clip_len: Optional[int] = None, clip_overlap: Optional[int] = None) -> WindowSettings:
    """The user's tile/clip settings (None: not given), with the model's defaults for the rest;
    raises :class:`UsageError` for settings that cannot work."""
    video = info.clip_len is not None
    if tile is None:
        tile = DEFAULT_VIDEO_TILE.get(info.scale, DEFAULT_VIDEO_TILE_OTHER) if video else DEFAULT_TILE
    if tile_overlap is None:
        tile_overlap = DEFAULT_VIDEO_TILE_OVERLAP if video else DEFAULT_TILE_OVERLAP
    clip_len = clip_len or info.clip_len or 1
    if clip_overlap is None:
        clip_overlap = clip_len // 4 if video else 0
    check_window_options(tile, tile_overlap, clip_len, clip_overlap)
    return WindowSettings(tile, tile_overlap, clip_len, clip_overlap)


def whole_frames_if_they_fit(settings: WindowSettings, user_tile: Optional[int], width: int,
                             height: int) -> WindowSettings:
    """No tiles where the default tile was not asked for and the frame has no more pixels than
    one default tile: the default only bounds what one model call holds, and cutting such a
    frame (640x360 in 512-px tiles) only adds overlap work and seams."""
    if user_tile is None and settings.tile > 0 and width * height <= settings.tile ** 2:
        return WindowSettings(0, settings.tile_overlap, settings.clip_len, settings.clip_overlap)
    return settings


def queue_items(queue_size: int, clip_len: int) -> int:
    """Capacity of a queue between stages, in work items: ``queue_size`` for single frames; for
    clips about ``queue_size`` frames' worth (at least 2, so no stage waits on another), which
    keeps what is in flight a few clips rather than ``queue_size`` clips."""
    return queue_size if clip_len <= 1 else max(2, math.ceil(queue_size / clip_len))


class ClipWindower:
    """Frames in, clips out (streaming: memory holds at most one clip of frames); where clips
    start is :class:`pipelines.clips.ClipSchedule`'s rule."""

    def __init__(self, clip_len: int = 1, clip_overlap: int = 0) -> None:
        self.schedule = ClipSchedule(clip_len, clip_overlap)
        self.clip_len = clip_len
        self.clip_overlap = clip_overlap
        self._recent: Deque[Frame] = deque(maxlen=clip_len)  # the last clip_len frames seen

    def push(self, frame: Frame) -> Optional[Clip]:
        self._recent.append(frame)
        return self._clip(self.schedule.push())

    def finish(self) -> Optional[Clip]:
        """The last clip, aligned to the end of the stream, if frames are left over."""
        return self._clip(self.schedule.finish())

    def _clip(self, span: Optional[ClipSpan]) -> Optional[Clip]:
        if span is None:
            return None
        frames = list(self._recent)[-len(span):]
        return Clip(frames=frames, start=frames[0].index, overlap=span.overlap)


class TileLayout:
    """Tiles of one frame size: input boxes, output boxes and normalised blend weights."""

    def __init__(self, height: int, width: int, tile: int, overlap: int, scale: int = 1) -> None:
        self.height, self.width, self.scale = height, width, scale
        self.boxes: List[Box] = tiling.tile_boxes(height, width, tile, overlap)
        self.out_boxes: List[Box] = [tiling.scale_box(b, scale) for b in self.boxes]
        self.weights: List[np.ndarray] = (
            [] if len(self.boxes) == 1
            else [w[..., None] for w in tiling.blend_weights(self.out_boxes, height * scale, width * scale)]
        )

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def out_size(self) -> Tuple[int, int]:
        return self.height * self.scale, self.width * self.scale


class Cutter:
    """Frames in, indexed work items out (clips, then tiles of each clip).

    ``prefilter``: a whole-frame step (image in, same shape and type out) applied before tiling,
    e.g. the bundled deblurrer's motion deconvolution; the clip keeps the frames as decoded
    (for ``--compare``), the work items carry the prefiltered pixels.
    """

    def __init__(self, clip_len: int = 1, clip_overlap: int = 0, tile: int = 0,
                 tile_overlap: int = 0, scale: int = 1,
                 prefilter: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> None:
        check_window_options(tile, tile_overlap, clip_len, clip_overlap)
        self.windower = ClipWindower(clip_len, clip_overlap)
        self.tile, self.tile_overlap, self.scale = tile, tile_overlap, scale
        self.prefilter = prefilter
        self.layout: Optional[TileLayout] = None
        self._next_index = 0
        self._next_clip = 0

    def push(self, frame: Frame) -> List[WorkItem]:
        h, w = frame.image.shape[:2]
        if self.layout is None:
            self.layout = TileLayout(h, w, self.tile, self.tile_overlap, self.scale)
        elif (h, w) != (self.layout.height, self.layout.width):
            raise ProcessingError(
                f"frame {frame.index} is {w}x{h}, earlier frames were "
                f"{self.layout.width}x{self.layout.height} (size changes mid-stream are not supported)"
            )
        return self._cut(self.windower.push(frame))

    def finish(self) -> List[WorkItem]:
        return self._cut(self.windower.finish())

    def _cut(self, clip: Optional[Clip]) -> List[WorkItem]:
        if clip is None:
            return []
        assert self.layout is not None
        images = [f.image for f in clip.frames]
        if self.prefilter is not None:
            images = [self.prefilter(image) for image in images]
        if len(images) == 1:
            stack = images[0][None]  # a view: no copy for per-frame models
        else:
            stack = np.stack(images)
        clip_id = self._next_clip
        self._next_clip += 1
        items = []
        for k, (t, l, b, r) in enumerate(self.layout.boxes):
            items.append(WorkItem(self._next_index, clip_id, clip, k, (t, l, b, r), stack[:, t:b, l:r]))
            self._next_index += 1
        return items


class Stitcher:
    """Ordered results in, finished ``(source frame, restored frame)`` pairs out."""

    def __init__(self, layout: TileLayout) -> None:
        self.layout = layout
        self._clip_id: Optional[int] = None
        self._clip: Optional[Clip] = None
        self._tiles_seen = 0
        self._canvas: Optional[np.ndarray] = None   # float32 accumulator of the current clip
        self._single: Optional[np.ndarray] = None  # the one tile when the layout has one
        self._dtype = np.dtype(np.uint8)   # the current clip's sample type (uint16: high bit depth)
        # Temporal blending (pipelines.clips): a finished clip waits there until the next one
        # says how many frames they share.
        self._blender: ClipBlender[Frame] = ClipBlender()
        self._next_index = 0

    def add(self, result: WorkResult) -> List[Tuple[Frame, Frame]]:
        item = result.item
        if item.index != self._next_index:
            raise ProcessingError(f"internal error: result {item.index} arrived, expected {self._next_index}")
        self._next_index += 1
        if item.clip_id != self._clip_id:
            if self._clip is not None:
                raise ProcessingError(f"internal error: clip {self._clip_id} is missing tiles")
            self._start_clip(item)
        self._paste(item, result.image)
        self._tiles_seen += 1
        if self._tiles_seen < len(self.layout):
            return []
        clip, restored = self._clip, self._finish_clip()
        return self._blend_clip(clip, restored)

    def finish(self) -> List[Tuple[Frame, Frame]]:
        """Flush what is held at the end of the stream."""
        if self._clip is not None:
            raise ProcessingError(f"stream ended with clip {self._clip_id} incomplete")
        return [(source, _restored_frame(source, image)) for source, image in self._blender.finish()]

    # -- spatial -------------------------------------------------------------------------

    def _start_clip(self, item: WorkItem) -> None:
        self._clip_id, self._clip, self._tiles_seen = item.clip_id, item.clip, 0
        if len(self.layout) > 1:
            h, w = self.layout.out_size
            self._canvas = np.zeros((len(item.clip.frames), h, w, 3), np.float32)
            self._dtype = item.data.dtype

    def _paste(self, item: WorkItem, image: np.ndarray) -> None:
        t, l, b, r = self.layout.out_boxes[item.tile]
        expected = (len(item.clip.frames), b - t, r - l, 3)
        if image.shape != expected:
            raise ProcessingError(f"work item {item.index}: model returned {image.shape}, expected {expected}")
        if self._canvas is None:
            self._single = image
        else:
            self._canvas[:, t:b, l:r] += image * self.layout.weights[item.tile]

    def _finish_clip(self) -> np.ndarray:
        if self._canvas is not None:
            restored = round_pixels(self._canvas, self._dtype)
        else:
            restored = self._single
        self._clip, self._clip_id, self._canvas, self._single = None, None, None, None
        return restored

    # -- temporal ------------------------------------------------------------------------

    def _blend_clip(self, clip: Clip, restored: np.ndarray) -> List[Tuple[Frame, Frame]]:
        span = ClipSpan(clip.start, clip.start + len(clip.frames), clip.overlap)
        return [(source, _restored_frame(source, image)) for source, image in self._blender.add(span, restored, clip.frames)]


def _restored_frame(source: Frame, image: np.ndarray) -> Frame:
    # The alpha plane is not restored: it goes out as it came in.
    return Frame(index=source.index, pts=source.pts, time_base=source.time_base, image=image, alpha=source.alpha)
