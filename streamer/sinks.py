"""Video sinks: encode restored frames to a file with PyAV.

The output keeps what the input had: every frame's timestamp (variable frame rate included; the
output pts are the input pts, rescaled to the output stream's time base), the colour tags
(range, matrix, primaries, transfer: BT.2020 with PQ or HLG included), the bit depth and the alpha
plane where the codec takes them (:func:`streamer.encoding.choose_pix_fmt`; 16-bit RGB frames
are converted straight to the 10-bit format, and the alpha plane is copied into the output's,
not restored), the display matrix and pixel shape, and, through
:mod:`streamer.passthrough`, the audio (copied packet for packet, re-encoded only where the
container cannot hold the codec) and subtitle streams, interleaved with the video by time, with
the container's and streams' tags; a live input's audio comes through :mod:`streamer.live.audio`.

The file is written under a hidden temporary name in the output's directory and renamed over
the output only once it is complete, so an interrupted run never leaves a broken file under the
name the user asked for: :meth:`VideoSink.abort` removes the temporary file, or, with
``keep_partial``, finalises the frames written so far into a playable file.

Codec options (crf/preset per encoder) and the pixel-format choice for odd sizes live in
:mod:`streamer.encoding`; ``EncoderSettings`` is re-exported here.
"""
from __future__ import annotations

import glob
import logging
import os
import secrets
from collections import deque
from dataclasses import replace
from fractions import Fraction
from typing import Deque, Dict, List, Optional, Tuple, Union

import av

from .passthrough import MPEGTS_CODECS, Passthrough
from .avutil import describe_av_error, display_path, missing_protocol
from .encoding import EncoderSettings, choose_pix_fmt, encoder_options, video_encoder, what_is_lost
from .errors import ProcessingError, UsageError
from .frames import Frame, VideoInfo
from .live.audio import AudioFeed, LiveAudioMux
from .live.outputs import OutputSpec, parse_output
from .pixfmt import alpha_bits, convert_alpha_bits, resize_nearest, write_alpha
from .sources import PtsRepair

log = logging.getLogger(__name__)

# Output containers we write (extension -> FFmpeg muxer). Image and audio-only formats are
# deliberately absent (the output is a video file), and so is AVI: it stores no presentation
# timestamps, so neither variable frame rate nor reordered (B-)frames survive in it.
CONTAINERS: Dict[str, str] = {
    ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm",
    ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts", ".flv": "flv", ".nut": "nut",
}

__all__ = ["CONTAINERS", "EncoderSettings", "VideoSink", "check_output_path"]


def check_output_path(path: str, input_path: Optional[str] = None) -> None:
    """Raise :class:`UsageError` (one line) if ``path`` cannot be our output file (a network
    URL or ``-`` is checked when it is opened: its peer answers then)."""
    if not path:
        raise UsageError("no output given")
    path = os.fspath(path)
    if parse_output(path).kind != "file":
        return
    shown = display_path(path)
    if path.endswith(os.sep) or os.path.isdir(path):
        raise UsageError(f"output is a directory, give a file name: {shown}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".avi":
        raise UsageError(f"AVI cannot keep the input's frame timing: write {os.path.splitext(shown)[0]}.mkv "
                         "or .mp4 instead")
    if ext not in CONTAINERS:
        known = " ".join(sorted(CONTAINERS))
        what = f"extension {ext!r}" if ext else "no extension"
        raise UsageError(f"output {shown} has {what}: use one of {known}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"output directory does not exist: {display_path(directory)}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to the output directory {display_path(directory)}: permission denied")
    if input_path is not None and _same_file(path, os.fspath(input_path)):
        raise UsageError(f"output {shown} is the input file: choose another name")


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def temp_path(path: str) -> str:
    """A hidden name next to ``path`` that keeps its extension (FFmpeg picks the muxer by it)."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(directory, f".{stem}.partial-{secrets.token_hex(4)}{ext}")


def live_encoder_options(codec: str, rate: Optional[Fraction]) -> Dict[str, str]:
    """Low-latency encoding for a live input: a keyframe about every second (a player or a
    recording cut short starts cleanly within a second) and, for x264, no look-ahead."""
    options = {"g": str(max(1, round(rate or 30)))}
    if codec == "libx264":
        options["tune"] = "zerolatency"
    return options


def live_container_options(path: str) -> Dict[str, str]:
    """Muxer options that keep a file written from a live input playable at every moment, so a
    `kill -9` or a power cut leaves a recording of everything encoded so far: packets flushed as
    they are muxed, and MP4/MOV fragmented (an index per fragment instead of one at the end)."""
    options = {"flush_packets": "1"}
    if os.path.splitext(path)[1].lower() in (".mp4", ".mov", ".m4v"):
        options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
    return options


def partial_files(path: str) -> List[str]:
    """Temporary files of ``path`` (:func:`temp_path`) left by a process killed mid-write."""
    directory, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    return glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(stem)}.partial-*{glob.escape(ext)}"))


def _container_accepts(output: "av.container.OutputContainer", codec: "av.Codec") -> bool:
    if output.format.name == "mpegts":
        return codec.canonical_name in MPEGTS_CODECS
    if output.format.name == "rtsp":   # FFmpeg's RTSP muxer lists no codecs: its header write checks
        return True
    return codec.name in output.supported_codecs


# Frame sample type -> the packed RGB format it is handed to swscale as.
_RGB = {"uint8": "rgb24", "uint16": "rgb48le"}

# FFmpeg colour enums -> swscale matrix constants (where they differ; equal values pass through).
_SWS_MATRIX = {6: 5, 10: 9}     # smpte170m -> itu601, bt2020 constant luminance -> bt2020


class VideoSink:
    """Encodes frames to ``path``; see the module docstring. Use as a context manager: an
    exception inside the ``with`` block aborts (nothing is left under ``path``)."""

    def __init__(self, path: str, info: VideoInfo, width: int, height: int,
                 settings: EncoderSettings = EncoderSettings(), streams_from: Optional[str] = None,
                 live: Optional[bool] = None, live_audio: Optional[AudioFeed] = None) -> None:
        check_output_path(path, streams_from)   # streams_from is the input: never write over it
        self.path = os.fspath(path)
        # A network URL or "-" is written to directly (nothing to rename) and always live.
        self.spec: OutputSpec = parse_output(self.path)
        self._shown = display_path(self.path) if self.spec.kind == "file" else self.spec.shown
        self.width, self.height = int(width), int(height)
        settings = settings.for_output(self.path)
        self.settings = settings
        self.frames_written = 0
        self._done: Optional[Tuple[str, Optional[str]]] = None   # ("closed"|"aborted", kept path)
        self._passthrough: Union[Passthrough, LiveAudioMux, None] = None
        self._last_end = 0.0        # seconds: where the last written frame ends
        self._temp = temp_path(self.path) if self.spec.kind == "file" else self.spec.target
        self._output: Optional["av.container.OutputContainer"] = None
        self._unmuxed: Deque["av.Packet"] = deque()
        # Live writing (low-latency encoding, a file playable at every moment) follows the input
        # unless asked for: ``live=True`` gives it to a file input too (--live-output).
        live = self.spec.live or (info.live if live is None else live)
        self.live = live

        if live:
            settings = replace(settings, no_reordering=True)
        codec = video_encoder(settings.codec)
        options = encoder_options(settings)
        if live:
            options.update(live_encoder_options(settings.codec, info.average_rate))
        self.pix_fmt = choose_pix_fmt(codec, settings.pix_fmt, info.pix_fmt, self.width, self.height)
        lost = what_is_lost(info.pix_fmt, self.pix_fmt, codec.name)
        if lost:
            log.warning("the input is %s: %s", info.pix_fmt, lost)
        # Alpha planes go from the input's bits to the output's (None: not written).
        self._alpha_bits = (info.alpha_bits, alpha_bits(self.pix_fmt)) \
            if info.alpha_bits and alpha_bits(self.pix_fmt) else None
        self.time_base = info.time_base
        self._pts = PtsRepair(info.time_base, info.average_rate)
        self._matrix = _SWS_MATRIX.get(info.color_space, info.color_space) if info.color_space else None
        self._range = info.color_range or None

        try:
            container_options = live_container_options(self.path) if live else {}
            self._output = av.open(self._temp, "w", format=self.spec.format,
                                   container_options={**container_options, **self.spec.options})
            if live and self.spec.kind == "file":
                log.info("recording live to %s as it arrives (playable at every moment, even "
                            "after a crash); it is renamed to %s when the run ends", display_path(self._temp),
                            self._shown)
            if not _container_accepts(self._output, codec):
                raise UsageError(f"{codec.name} video cannot go into {self._container_name()}: "
                                 f"choose another codec or container")
            self._video = self._output.add_stream(settings.codec, rate=info.average_rate or None,
                                                  options=options)
            if info.display_matrix is not None:   # the input's rotation / flips, for players
                self._video.set_display_matrix(list(info.display_matrix))
            cc = self._video.codec_context
            self._video.width, self._video.height = self.width, self.height
            self._video.pix_fmt = self.pix_fmt
            self._video.time_base = info.time_base
            cc.time_base = info.time_base
            cc.thread_count = 0
            if info.sample_aspect_ratio is not None:   # anamorphic input: same pixel shape out
                cc.sample_aspect_ratio = self._video.sample_aspect_ratio = info.sample_aspect_ratio
            for attr, value in (("color_range", info.color_range), ("colorspace", info.color_space),
                                ("color_primaries", info.color_primaries), ("color_trc", info.color_trc)):
                if value:
                    setattr(cc, attr, value)
            if streams_from is not None:
                self._passthrough = Passthrough(streams_from, self._output, self._video)
            elif live_audio is not None:   # a live input's audio, as its demux thread reads it
                self._passthrough = LiveAudioMux(live_audio, self._output)
            # Write the header now: a codec that refuses these settings fails here, before
            # any frame has been processed (and a network output connects to its peer).
            self._start()
        except UsageError:
            self._discard()
            raise
        except (av.FFmpegError, ValueError, OSError) as err:
            self._discard()
            raise UsageError(f"cannot encode {self._shown} with {settings.codec} at "
                             f"{self.width}x{self.height} {self.pix_fmt}: {describe_av_error(err)}") from None
        except BaseException:
            self._discard()
            raise

    def _start(self) -> None:
        if self.spec.kind == "file":
            self._output.start_encoding()
            return
        try:
            self._output.start_encoding()
        except av.ProtocolNotFoundError:
            raise UsageError(missing_protocol(self.spec.shown, self.spec.scheme, "write")) from None
        except (av.FFmpegError, OSError) as err:
            raise UsageError(f"cannot send to {self.spec.shown}: {describe_av_error(err)}") from None

    def _container_name(self) -> str:
        if self.spec.kind == "file":
            return f"a {os.path.splitext(self.path)[1]} file"
        return f"{self.spec.format} ({self.spec.shown})"

    # -- writing ----------------------------------------------------------------------------

    def write(self, frame: Frame) -> None:
        if self._done is not None:
            raise ProcessingError(f"sink for {self._shown} is already {self._done[0]}")
        image = frame.image
        if image.dtype.name not in _RGB or image.shape != (self.height, self.width, 3):
            raise ProcessingError(f"frame {frame.index}: expected a {self.height}x{self.width}x3 uint8 or uint16 "
                                  f"image, got {image.dtype} {tuple(image.shape)}")
        pts = frame.pts
        if pts is not None and frame.time_base != self.time_base:
            pts = round(pts * frame.time_base / self.time_base)
        pts = self._pts(pts)
        vf = av.VideoFrame.from_ndarray(image if image.flags.c_contiguous else image.copy(),
                                        format=_RGB[image.dtype.name])
        # Convert with the input's matrix and range so a decode -> encode pass is colour-neutral.
        vf = vf.reformat(format=self.pix_fmt, dst_colorspace=self._matrix, dst_color_range=self._range)
        if self._alpha_bits is not None and frame.alpha is not None:
            alpha = resize_nearest(frame.alpha, self.height, self.width)
            write_alpha(vf, convert_alpha_bits(alpha, *self._alpha_bits))
        vf.pts = pts
        vf.time_base = self.time_base
        try:
            self._unmuxed.extend(self._video.encode(vf))
            self._mux_pending()
        except av.FFmpegError as err:
            raise ProcessingError(f"encoding {self._shown} failed at frame {frame.index}: "
                                  f"{describe_av_error(err)}") from None
        self.frames_written += 1
        self._last_end = float((pts + self._pts.step) * self.time_base)

    def align_audio(self, timeline_s: float, output_s: float) -> None:
        """A clocked writer re-stamped the frame at ``timeline_s`` (the input's timeline) to
        ``output_s``: a live input's audio follows (see :class:`LiveAudioMux`)."""
        if isinstance(self._passthrough, LiveAudioMux):
            self._passthrough.align(timeline_s, output_s)

    def _mux_pending(self) -> None:
        # Encoded packets wait in a queue until muxed, so a KeyboardInterrupt between two
        # packets loses none of them: abort(keep_partial=True) muxes the rest.
        while self._unmuxed:
            packet = self._unmuxed.popleft()
            if self._passthrough is not None and packet.dts is not None:
                self._passthrough.mux_until(float(packet.dts * packet.time_base))
            self._output.mux(packet)

    # -- finishing ---------------------------------------------------------------------------

    def close(self, video_only_end: bool = False) -> None:
        """Flush the encoder, copy the rest of the audio (with ``video_only_end``, only up to
        the end of the video: the input was cut short), finalise and rename to ``path``."""
        if self._done is not None:
            return
        if not self.frames_written:
            self.abort()
            raise ProcessingError(f"no frames were written: {self._shown} not created")
        try:
            # A live input's audio ends with its video: what came after the last frame has no picture.
            cut = video_only_end or isinstance(self._passthrough, LiveAudioMux)
            self._finalise(audio_until=self._last_end if cut else float("inf"))
        except BaseException as err:
            self.abort()
            if isinstance(err, (av.FFmpegError, OSError)):
                raise ProcessingError(f"finishing {self._shown} failed: {describe_av_error(err)}") from None
            raise
        self._done = ("closed", self.path)

    def abort(self, keep_partial: bool = False) -> Optional[str]:
        """Stop writing. Remove the temporary file, or (``keep_partial`` and at least one frame
        written) finalise it into a playable file under ``path`` with the audio up to the last
        frame. Returns the path kept, or None. Safe to call more than once."""
        if self._done is not None:
            return self._done[1]
        kept: Optional[str] = None
        if keep_partial and self.frames_written:
            try:
                self._finalise(audio_until=self._last_end)
                kept = self.path
            except BaseException as err:  # a partial file is best effort: fall back to nothing
                log.warning("could not keep the partial output %s: %s", self._shown, describe_av_error(err))
                self._discard()
        else:
            self._discard()
        self._done = ("aborted", kept)
        return kept

    def _finalise(self, audio_until: float) -> None:
        self._mux_pending()
        self._unmuxed.extend(self._video.encode(None))
        self._mux_pending()
        if self._passthrough is not None:
            self._passthrough.finish(audio_until)
        self._output.close()
        if self.spec.kind == "file":
            os.replace(self._temp, self.path)

    def _discard(self) -> None:
        for part in (self._passthrough, self._output):
            try:
                if part is not None:
                    part.close()
            except Exception:
                pass
        if self.spec.kind != "file":
            return
        try:
            os.remove(self._temp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if getattr(self, "_done", "x") is None:
            try:
                self.abort()
            except Exception:
                pass



class NoOutput:
    """The sink of a run with no OUTPUT (``--serve`` only: frames are shown, not written)."""

    path = None

    def __init__(self) -> None:
        self.frames_written = 0

    def write(self, frame: Frame) -> None:
        self.frames_written += 1

    def close(self, video_only_end: bool = False) -> None:
        pass

    def abort(self, keep_partial: bool = False) -> Optional[str]:
        return None
