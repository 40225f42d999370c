"""Video sources: where decoded frames come from.

``open_source(spec)`` checks the input as far as it can up front (the file exists and is
readable, FFmpeg recognises it, it has a video stream, the first frame decodes) so that the CLI
fails with one clear line before it spends time loading a model. It returns a
:class:`VideoSource`: a context manager that yields :class:`~streamer.frames.Frame` objects
(RGB uint8, or uint16 for 10/12-bit input; pts in the stream's time base) once.

High bit depth: a stream whose samples have more than 8 bits is decoded to ``rgb48le`` (uint16),
so 10-bit input reaches the model and the encoder without an 8-bit step; 8-bit input stays
``rgb24`` (half the bytes through every queue). Alpha: a stream with an alpha plane gives each
frame its plane as decoded (``Frame.alpha``), for the sink to write back where the output
codec holds alpha.

Files are read with PyAV (any container and codec FFmpeg reads, threaded decoding) or, with
``decoder="decord"``, with decord (an optional extra; files only, AV1 falls back to PyAV).
Pipes (``-``, a FIFO) are read by PyAV through a :class:`~streamer.pipes.PipeReader` with a
deadline. Live inputs (URLs, webcams, ``lavfi:``) are :class:`streamer.live.source.LiveSource`,
chosen by :func:`streamer.live.inputs.open_input`; they reuse this module's stream description
(:func:`_video_info`) and :class:`FixedSize`, which scales a frame whose size changed mid-stream.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import resource
import stat
import struct
from fractions import Fraction
from typing import Iterator, Optional, Tuple

import av
import numpy as np

from .avutil import describe_av_error, display_path
from .errors import ProcessingError, UsageError
from .frames import Frame, VideoInfo
from .live.specs import DEFAULT_STALL_TIMEOUT, parse_input
from .pipes import PipeReader, is_pipe
from .pixfmt import alpha_bits, read_alpha, resize_nearest, rgb_format, sample_bits

log = logging.getLogger(__name__)

DECODERS = ("pyav", "decord")

# Packets that may fail to decode before a run gives up (``--max-decode-errors``). FFmpeg
# conceals most damage inside frames (counted as ``frames_damaged``, restored as decoded);
# this counts only packets it could not decode at all. 200 is 0.1 % of a two-hour film at
# 24 fps: enough for the scattered glitches of a broadcast recording or a scratched disc
# image, while a file that is mostly garbage still stops early with one line.
DEFAULT_MAX_DECODE_ERRORS = 200

# What a run holds per input pixel at its peak, in bytes: measured 70 B/px for an 8K input
# (7680x4320, 33.2 Mpx: 2.32 GB peak RSS with the default 512-px tiles, in one process),
# rounded up: decoded frames, the RGB copy, the stitcher's float32 canvas and weights.
BYTES_PER_PIXEL_AT_PEAK = 80


def open_source(spec: str, decoder: str = "pyav",
                max_decode_errors: int = DEFAULT_MAX_DECODE_ERRORS,
                pipe_timeout: float = DEFAULT_STALL_TIMEOUT) -> "VideoSource":
    """Open ``spec`` (a file path, a FIFO, or ``-`` for standard input) for reading; raise
    :class:`UsageError` with one line if it cannot be read as a video. Live inputs (URLs,
    devices, ``lavfi:``) are opened by :func:`streamer.live.inputs.open_input`.

    A pipe (FIFO, ``-`` on a pipe) is read through a :class:`~streamer.pipes.PipeReader`:
    ``pipe_timeout`` seconds without data end the run with one line instead of a hang."""
    if decoder not in DECODERS:
        raise UsageError(f"unknown decoder {decoder!r} (choose from {', '.join(DECODERS)})")
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise UsageError("no input given")
    spec = os.fspath(spec)
    if _looks_like_url(spec):
        raise UsageError(f"{spec} is a live input: streamer.live.inputs.open_input opens those")
    if spec == "-" or is_pipe(spec):
        shown = "standard input" if spec == "-" else display_path(spec)
        if spec != "-" and not os.access(spec, os.R_OK):
            raise UsageError(f"cannot read input {shown}: permission denied")
        if spec == "-" and not is_pipe("/dev/stdin"):
            spec = f"/proc/self/fd/{os.dup(0)}"   # a file redirected to stdin: seekable, read as a file
        else:
            if decoder == "decord":
                log.warning("decord cannot read a pipe: reading %s with PyAV instead", shown)
            return PyAVSource(spec, max_decode_errors=max_decode_errors,
                              file=PipeReader(None if spec == "-" else spec, pipe_timeout, shown), shown=shown)
    check_input_file(spec)
    source = PyAVSource(spec, max_decode_errors=max_decode_errors)
    if decoder == "decord":
        return _decord_or_fallback(source)
    return source


def _looks_like_url(spec: str) -> bool:
    return parse_input(spec).live


def check_input_file(path: str) -> None:
    """The filesystem checks that come before FFmpeg sees the file."""
    shown = display_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"input file not found: {shown}") from None
    except PermissionError:
        raise UsageError(f"cannot read input {shown}: permission denied") from None
    except OSError as err:
        raise UsageError(f"cannot read input {shown}: {describe_av_error(err)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"input is a directory, not a video file: {shown}")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise UsageError(f"input file is empty: {shown}")
    if not stat.S_ISREG(st.st_mode):
        return   # reading a byte of a FIFO would wait for a writer forever, and consume the byte
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise UsageError(f"cannot read input {shown}: permission denied") from None
    except OSError as err:
        raise UsageError(f"cannot read input {shown}: {describe_av_error(err)}") from None


class VideoSource:
    """Base class: ``info`` describes the video stream, iteration yields frames once.

    Subclasses implement :meth:`_frames` and :meth:`_close`. ``decode_errors`` counts packets
    that could not be decoded (skipped), ``frames_damaged`` frames the decoder flagged as
    corrupt (errors concealed) and passed on.
    """

    info: VideoInfo
    path: str
    # Whether close() is safe while another thread is inside iteration (PyAV's is not: the
    # container would be closed under FFmpeg).
    closes_from_any_thread = False
    frames_dropped = 0     # frames a live source discarded because the pipeline was behind
    drop = "none"          # its drop policy (streamer.live.source.DROP_POLICIES)

    def __init__(self) -> None:
        self._iterated = False
        self._closed = False
        self.decode_errors = 0
        self.frames_damaged = 0
        self.reconnects = 0   # live sources: times the input came back after a stall or loss
        self.stalls = 0       # live sources: times nothing arrived within the stall timeout

    @property
    def streams_from(self) -> Optional[str]:
        """Where the sink may reopen the input for its audio and subtitles; None where the
        input cannot be read twice (a pipe, a live stream)."""
        return self.path

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise ProcessingError("video source is closed")
        if self._iterated:
            raise ProcessingError("a video source can be iterated only once")
        self._iterated = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class PtsRepair:
    """Gives every frame a strictly increasing pts: missing ones (some containers, raw streams)
    or ones that go backwards are replaced by the previous pts plus one frame's duration
    (from the stream's average rate; if unknown, the last step seen, at first 1/30 s)."""

    def __init__(self, time_base: Fraction, rate: Optional[Fraction]) -> None:
        self.step = max(1, round(1 / ((rate or 30) * time_base)))
        self._learn_step = not rate
        self.last: Optional[int] = None
        self.repaired = 0

    def __call__(self, pts: Optional[int]) -> int:
        if pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
            self.repaired += 1
        elif self.last is not None and self._learn_step:
            self.step = pts - self.last
        self.last = pts
        return pts


def _video_info(container: "av.container.InputContainer", stream: "av.video.stream.VideoStream",
                first: "av.VideoFrame") -> VideoInfo:
    tb = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
    rate = stream.average_rate or stream.guessed_rate or None
    duration = None
    if stream.duration is not None:
        duration = float(stream.duration * tb)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    frames = stream.frames or None
    if frames is None and duration and rate:
        frames = int(round(duration * rate))  # an estimate; the stream may say otherwise
    cc = stream.codec_context
    return VideoInfo(
        width=first.width,
        height=first.height,
        time_base=tb,
        average_rate=Fraction(rate) if rate else None,
        frames=frames,
        duration=duration,
        codec_name=cc.name,
        pix_fmt=first.format.name,
        # The first frame's tags are what the decoder really reports (the stream's parameters
        # can be unset for codecs that carry them in the bitstream only).
        color_range=_tag(first.color_range, cc.color_range, unspecified=0),
        color_space=_tag(first.colorspace, cc.colorspace, unspecified=2),
        color_primaries=_tag(first.color_primaries, cc.color_primaries, unspecified=2),
        color_trc=_tag(first.color_trc, cc.color_trc, unspecified=2),
        has_audio=bool(container.streams.audio),
        display_matrix=_display_matrix(first),
        sample_aspect_ratio=_pixel_shape(stream),
        alpha_bits=alpha_bits(first.format.name),
    )


def _pixel_shape(stream: "av.video.stream.VideoStream") -> Optional[Fraction]:
    """The stream's sample aspect ratio; None when square or unknown (0/1)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    if not sar or sar.numerator <= 0 or sar == 1:
        return None
    return Fraction(sar)


_IDENTITY_MATRIX = (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)


def _display_matrix(frame: "av.VideoFrame") -> Optional[Tuple[int, ...]]:
    """The frame's display matrix (rotation / flips for players), None if absent or identity."""
    for side_data in frame.side_data:
        if getattr(side_data.type, "name", "") == "DISPLAYMATRIX":
            matrix = struct.unpack("<9i", bytes(side_data)[:36])
            return None if matrix == _IDENTITY_MATRIX else matrix
    return None


def _tag(frame_value, stream_value, unspecified: int) -> Optional[int]:
    """A colour tag as an int, None when FFmpeg says "unspecified" (or "reserved", 0 and 3)."""
    for value in (frame_value, stream_value):
        value = int(value) if value is not None else unspecified
        if value != unspecified and not (unspecified == 2 and value in (0, 3)):
            return value
    return None


class PyAVSource(VideoSource):
    """Decodes the first video stream of anything FFmpeg opens, with threaded decoding.

    Damaged input is restored as far as FFmpeg can decode it, as ``ffmpeg -i`` plays it:
    frames with concealed errors pass on (counted), packets that do not decode at all are
    skipped (counted) and their frames leave a gap in the timeline, since every frame keeps
    its own pts. Only past ``max_decode_errors`` such packets does the run stop.
    A picture attached as cover art (MP3, M4A) is not a video stream.
    """

    def __init__(self, path: str, options: Optional[dict] = None,
                 max_decode_errors: int = DEFAULT_MAX_DECODE_ERRORS, file: Optional[PipeReader] = None,
                 shown: Optional[str] = None) -> None:
        super().__init__()
        self.path = path
        self.max_decode_errors = max_decode_errors
        self._pts_from: Optional[int] = None     # restrict(): the frame range's pts bounds
        self._pts_end: Optional[int] = None
        self.shown = shown = shown or display_path(path)
        self._file = file
        try:
            self._container = av.open(file if file is not None else path, "r", options=options or {})
        except (av.FFmpegError, OSError, ProcessingError) as err:
            if file is not None:
                file.close()
            raise UsageError(f"cannot read {shown} as a video file: {describe_av_error(err)}") from None
        try:
            self._stream = _video_stream(self._container, shown)
            check_frame_memory(self._stream.codec_context.width, self._stream.codec_context.height, shown)
            # Slice threads, not frame threads: with frame threads FFmpeg drops frames of a
            # truncated or damaged file without reporting an error (2 of 8 in the corpus's cut
            # MP4, which `ffmpeg -i` decodes whole). The price is small beside any model: 1080p
            # H.264 decoded and converted to RGB at 101 fps with slice threads against 124 with
            # both, on 2 loaded cores (2026-12-06).
            self._stream.thread_type = "SLICE"
            self._stream.thread_count = 0
            self._decoded = self._decode()
            try:
                first = next(self._decoded)
            except StopIteration:
                raise UsageError(f"no decodable video frame in {shown}") from None
            except ProcessingError as err:
                raise UsageError(str(err)) from None
            self.info = _video_info(self._container, self._stream, first)
            if file is not None and self.info.has_audio:
                # Audio is copied by reopening the input: a pipe cannot be read twice.
                log.warning("%s: audio from a pipe is not passed through", shown)
                self.info = dataclasses.replace(self.info, has_audio=False)
        except BaseException:
            self._close()
            self._closed = True
            raise
        self._first: Optional[av.VideoFrame] = first
        self._pts = PtsRepair(self.info.time_base, self.info.average_rate)
        self._rgb = FixedSize(self.info.width, self.info.height, shown, self.info.pix_fmt)

    @property
    def streams_from(self) -> Optional[str]:
        return None if self._file is not None else self.path

    def restrict(self, pts_from: int, pts_end: Optional[int]) -> None:
        """Yield only frames with ``pts_from <= pts < pts_end`` (pts in the stream's time base;
        ``pts_from`` a keyframe's): seeks there, so decoding starts at that keyframe, as a whole
        pass would decode it. Call before iterating."""
        if self._iterated:
            raise ProcessingError("restrict() must come before iteration")
        self._first = None
        self._container.seek(pts_from, stream=self._stream, backward=True, any_frame=False)
        self._pts_from, self._pts_end = pts_from, pts_end
        self._decoded = self._decode()

    def _decode(self) -> Iterator["av.VideoFrame"]:
        """The stream's frames in presentation order, skipping packets that fail to decode."""
        for packet in self._container.demux(self._stream):
            try:
                frames = packet.decode()   # the last (empty) packet flushes the decoder
            except av.FFmpegError as err:
                self.decode_errors += 1
                if self.decode_errors > self.max_decode_errors:
                    raise ProcessingError(
                        f"{self.shown}: more than {self.max_decode_errors} video packets failed "
                        f"to decode (last: {describe_av_error(err)}); the file is too damaged "
                        f"(--max-decode-errors N raises the limit)") from None
                continue
            for vf in frames:
                if vf.pts is not None and self._pts_from is not None and vf.pts < self._pts_from:
                    continue   # decoded from the keyframe before the range: not part of it
                if vf.pts is not None and self._pts_end is not None and vf.pts >= self._pts_end:
                    return
                if vf.is_corrupt:
                    self.frames_damaged += 1
                yield vf

    def _frames(self) -> Iterator[Frame]:
        index = 0
        tb = self.info.time_base
        try:
            while True:
                if self._first is not None:
                    vf, self._first = self._first, None
                else:
                    try:
                        vf = next(self._decoded)
                    except StopIteration:
                        break
                    except (av.FFmpegError, ValueError) as err:   # demuxing itself failed
                        raise ProcessingError(
                            f"reading {self.shown} failed at frame {index}: "
                            f"{describe_av_error(err)}") from None
                yield Frame(index=index, pts=self._pts(vf.pts), time_base=tb, image=self._rgb(vf),
                            alpha=self._rgb.alpha(vf) if self.info.alpha_bits else None)
                index += 1
        finally:
            if self._pts.repaired:
                log.warning("%s: %d frame(s) had missing or non-increasing timestamps; "
                            "synthesised them", self.shown, self._pts.repaired)
            if self.decode_errors or self.frames_damaged:
                log.warning("%s is damaged: %d video packet(s) could not be decoded and were skipped (a gap "
                            "in the timeline), %d frame(s) had errors concealed by the decoder",
                            self.shown, self.decode_errors, self.frames_damaged)

    def _close(self) -> None:
        self._first = None
        self._container.close()
        if self._file is not None:
            self._file.close()


class FixedSize:
    """Decoded frames as RGB arrays at the first frame's size: ``rgb24`` (uint8), or ``rgb48le``
    (uint16) where the stream's format ``pix_fmt`` has more than 8 bits. Cameras and broadcast
    streams may change size mid-stream; the output keeps the size chosen at the start, so a frame
    of another size is scaled to it (bicubic), with one warning per run."""

    def __init__(self, width: int, height: int, shown: str, pix_fmt: Optional[str] = None) -> None:
        assert width > 0 and height > 0, (width, height)
        self.width, self.height, self.shown = width, height, shown
        self.format = rgb_format(sample_bits(pix_fmt))
        self.scaled = 0

    def __call__(self, vf: "av.VideoFrame") -> "np.ndarray":
        # to_ndarray converts with the frame's own matrix and range tags.
        if (vf.width, vf.height) == (self.width, self.height):
            return vf.to_ndarray(format=self.format)
        if not self.scaled:
            log.warning("%s: the picture size changed mid-stream from %dx%d to %dx%d: scaling to %dx%d",
                        self.shown, self.width, self.height, vf.width, vf.height, self.width, self.height)
        self.scaled += 1
        return vf.to_ndarray(format=self.format, width=self.width, height=self.height, interpolation="BICUBIC")

    def alpha(self, vf: "av.VideoFrame") -> "np.ndarray":
        """The frame's alpha plane at the first frame's size."""
        return resize_nearest(read_alpha(vf), self.height, self.width)


def check_frame_memory(width: int, height: int, shown: str) -> None:
    """Refuse, before a frame is decoded, a picture size this machine cannot restore (a hostile or
    broken header can declare 16000x16000: FFmpeg would allocate it): one line with what it needs."""
    need = width * height * BYTES_PER_PIXEL_AT_PEAK
    have = _memory_available()
    if have is not None and need > have:
        raise UsageError(f"{shown} declares {width}x{height} frames: restoring them needs about "
                         f"{need / 2**30:.1f} GiB of memory, this machine has {have / 2**30:.1f} GiB available")


def _memory_available() -> Optional[int]:
    """Bytes this process may still use: the least of Linux's MemAvailable, the container's
    cgroup limit (``memory.max`` less what the cgroup uses) and the address-space rlimit.
    None where none is known."""
    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            cap = fh.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                limits.append(int(cap) - int(fh.read()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits) if limits else None


def _video_stream(container: "av.container.InputContainer", shown: str) -> "av.video.stream.VideoStream":
    """The first video stream that is not an attached picture (cover art)."""
    streams = list(container.streams.video)
    moving = [st for st in streams if not _is_attached_picture(st)]
    if not moving:
        if streams:
            raise UsageError(f"no video stream in {shown} (only a cover picture)")
        raise UsageError(f"no video stream in {shown}")
    return moving[0]


def _is_attached_picture(stream: "av.stream.Stream") -> bool:
    disposition = stream.disposition
    flag = getattr(av.stream.Disposition, "attached_pic", None)
    return bool(flag is not None and disposition & flag)


# --- decord --------------------------------------------------------------------------------------

# Codecs decord's bundled FFmpeg (4.x) cannot decode: the file is read with PyAV instead.
_DECORD_UNSUPPORTED = {"av1", "libdav1d", "libaom-av1"}


def _decord_or_fallback(probe: PyAVSource) -> VideoSource:
    """A :class:`DecordSource` for ``probe``'s file, or ``probe`` itself (with a warning) where
    decord cannot read the file. ``probe`` has already validated the file and knows its info."""
    shown = display_path(probe.path)
    if sample_bits(probe.info.pix_fmt) > 8 or probe.info.alpha_bits:
        log.warning("decord decodes to 8-bit RGB: reading %s (%s) with PyAV instead", shown, probe.info.pix_fmt)
        return probe
    if probe.info.codec_name in _DECORD_UNSUPPORTED:
        log.warning("decord cannot decode %s video: reading %s with PyAV instead",
                    probe.info.codec_name, shown)
        return probe
    try:
        import decord  # noqa: F401
    except ImportError:
        probe.close()
        raise UsageError("decoder 'decord' is not installed: pip install 'nystra-stream[decord]' "
                         "(or use the default decoder, pyav)") from None
    try:
        source = DecordSource(probe.path, probe.info)
    except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
        log.warning("decord cannot read %s (%s): using PyAV instead", shown, " ".join(str(err).split())[:200])
        return probe
    probe.close()
    return source


def presentation_pts(path: str) -> Iterator[Optional[int]]:
    """The video packets' pts in presentation order, read by demuxing only (no decoding).

    Packets arrive in decode order; a small heap re-sorts them (B-frame reordering is far
    shallower than the window)."""
    import heapq

    window = 32
    heap: list = []
    with av.open(path) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.pts is None:
                if packet.size:
                    yield None
                continue
            heapq.heappush(heap, packet.pts)
            if len(heap) > window:
                yield heapq.heappop(heap)
    while heap:
        yield heapq.heappop(heap)


class DecordSource(VideoSource):
    """Frames decoded by decord (sequentially, in its own threads); pts from the container's
    packets (exact, where decord's float32 timestamps would drift on long files)."""

    def __init__(self, path: str, info: VideoInfo) -> None:
        super().__init__()
        import decord

        self.path = path
        self.info = info
        self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=0)
        if len(self._reader) == 0:
            raise RuntimeError("no frames")

    def _frames(self) -> Iterator[Frame]:
        repair = PtsRepair(self.info.time_base, self.info.average_rate)
        pts_iter = presentation_pts(self.path)
        try:
            for index in range(len(self._reader)):
                try:
                    image = self._reader.next().asnumpy()
                except StopIteration:
                    break
                except Exception as err:
                    reason = " ".join(str(err).split())[:200]
                    raise ProcessingError(f"decord failed at frame {index} of {display_path(self.path)}: "
                                          f"{reason}") from None
                yield Frame(index=index, pts=repair(next(pts_iter, None)), time_base=self.info.time_base,
                            image=image)
        finally:
            pts_iter.close()

    def _close(self) -> None:
        self._reader = None
