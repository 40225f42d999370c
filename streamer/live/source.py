"""The live source: a network stream, a listening server, ``lavfi:`` or a webcam, read as it
arrives on a demux thread that owns its container.

Why a thread of its own: FFmpeg must never be closed from another thread while it is inside a
read (it crashes), and a read may block for as long as the network is silent. So the demux
thread opens, reads, decodes and closes its container itself, and hands RGB frames over a
two-frame queue; whoever iterates the source (the pipeline's decode stage) only ever waits on
that queue and can stop at any moment (:meth:`close` asks the thread to end; it is a daemon).

Deadlines are FFmpeg's interrupt callback, which PyAV arms with ``av.open(timeout=(open_s,
read_s))`` and re-arms before every packet read (the ``stimeout``/``rw_timeout`` options are not
honoured by every protocol). Only time spent inside FFmpeg counts: a slow model that makes the
handoff wait never looks like a stall.

- **Stall**: no packet for ``stall_timeout`` seconds (or an open that takes as long): counted
  in ``stalls``, the container closed and reopened.
- **Lost**: the connection fails or (for a sender's stream) ends: reopened the same way.
- Reopening backs off exponentially (0.25 s doubling to 8 s, +-25 % jitter, so a fleet of
  clients does not hammer a camera in step) and gives up after ``reconnect`` consecutive
  failed tries (None: never; 0: fail at once), ending the run with one line (exit 1).
- A successful reopen counts in ``reconnects``; frame indices continue and the
  :class:`~streamer.live.timeline.Timeline` leaves a gap for the time away.
"""
from __future__ import annotations

import dataclasses
import errno
import logging
import queue
import random
import threading
import time
from typing import Callable, Iterator, Optional, Tuple, Union

import av

from ..avutil import describe_av_error
from ..errors import ProcessingError, UsageError
from ..frames import Frame, VideoInfo
from ..sources import FixedSize, VideoSource, _video_info, _video_stream, check_frame_memory
from .audio import AUDIO_WAIT_S, AudioFeed
from .specs import InputSpec
from .timeline import Timeline

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 8.0
DROP_POLICIES = ("oldest", "newest", "none")
HANDOFF_FRAMES = 2        # decoded frames waiting for the pipeline: what bounds this stage's latency
# FFmpeg reads RTP without a description only for static payload types (MPEG-TS: 33).
_RTP_HINT = " (RTP other than MPEG-TS needs the SDP file that describes it: give FILE.sdp as INPUT)"
_POLL_S = 0.05            # how often a waiting side looks at the stop flag

# av.open(spec.target, format=..., options=..., timeout=...) -> an input container. Tests of the
# webcam path substitute this one call (no device exists on the test machines).
Opener = Callable[..., "av.container.InputContainer"]


def open_container(spec: InputSpec, timeout: Tuple[Optional[float], float]) -> "av.container.InputContainer":
    if spec.format is not None and spec.format not in av.formats_available:
        raise UsageError(f"{spec.shown}: this PyAV build's FFmpeg has no {spec.format} input "
                         f"(needed for {spec.kind} inputs)")
    return av.open(spec.target, "r", format=spec.format, options=dict(spec.options), timeout=timeout)


@dataclasses.dataclass(frozen=True)
class _Info:
    info: VideoInfo


@dataclasses.dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()
_Message = Union[Frame, _Info, _Failed, object]


class _Lost(Exception):
    """The stream went away: ``stall`` tells whether it fell silent (rather than failed)."""

    def __init__(self, reason: str, stall: bool) -> None:
        super().__init__(reason)
        self.reason, self.stall = reason, stall


class LiveSource(VideoSource):
    """Frames of a live :class:`InputSpec` as they arrive; ``info.live`` is True."""

    closes_from_any_thread = True   # close() only signals the demux thread

    def __init__(self, spec: InputSpec, stall_timeout: float, reconnect: Optional[int] = None,
                 opener: Opener = open_container, drop: str = "oldest") -> None:
        super().__init__()
        assert spec.live, spec
        if stall_timeout <= 0:
            raise UsageError(f"--stall-timeout must be > 0, got {stall_timeout}")
        if reconnect is not None and reconnect < 0:
            raise UsageError(f"--reconnect must be >= 0, got {reconnect}")
        self.spec, self.path = spec, spec.target
        if drop not in DROP_POLICIES:
            raise UsageError(f"unknown drop policy {drop!r} (choose from {', '.join(DROP_POLICIES)})")
        self.drop = drop
        self.stall_timeout, self.reconnect_limit = stall_timeout, reconnect
        self._opener = opener
        self._feed = AudioFeed(spec.shown)   # the input's first audio stream, as it is demuxed
        self._timeline: Optional[Timeline] = None   # the demux thread's, once the first frame came
        self._handoff: "queue.Queue[_Message]" = queue.Queue(maxsize=HANDOFF_FRAMES)
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._demux, name="live-demux", daemon=True)
        if spec.kind == "listen":
            log.info("waiting for a sender on %s", spec.shown)
        self._thread.start()
        message = self._take()
        if isinstance(message, _Failed):
            self.close()
            raise message.error
        assert isinstance(message, _Info), message
        self.info = message.info
        self._info_at = time.monotonic()

    def audio(self) -> Optional[AudioFeed]:
        """The input's audio, once a packet has described it (waiting up to ``AUDIO_WAIT_S``
        after the first video frame: MPEG-TS muxers send audio in bursts); None when the input
        has none, or it did not come in time (said with a warning)."""
        feed = self._feed
        if not feed.expected:
            return None
        if not feed.described.wait(max(0.0, self._info_at + AUDIO_WAIT_S - time.monotonic())):
            log.warning("%s: no audio packet within %g s of the first video frame: the output has no audio",
                        self.spec.shown, AUDIO_WAIT_S)
            return None
        return feed if feed.stream is not None else None   # (None: it could not be described, said so)

    @property
    def streams_from(self) -> None:
        return None   # a live input cannot be read twice

    # -- the consumer's side ----------------------------------------------------------------

    def _take(self) -> _Message:
        while True:
            try:
                return self._handoff.get(timeout=_POLL_S)
            except queue.Empty:
                if self._quit.is_set():   # closed while waiting (from another thread: safe here)
                    return _END
                if not self._thread.is_alive() and self._handoff.empty():
                    return _Failed(ProcessingError(f"{self.spec.shown}: the reader thread ended unexpectedly"))

    def _frames(self) -> Iterator[Frame]:
        try:
            while True:
                message = self._take()
                if message is _END:
                    return
                if isinstance(message, _Failed):
                    raise message.error
                assert isinstance(message, Frame), message
                yield message
        finally:
            self._quit.set()   # whoever iterated has stopped: the demux thread ends too

    def _close(self) -> None:
        self._quit.set()   # the demux thread closes its own container

    # -- the demux thread -------------------------------------------------------------------

    def _demux(self) -> None:
        timeline: Optional[Timeline] = None
        fixed: Optional[FixedSize] = None
        info: Optional[VideoInfo] = None
        index = 0
        tries = 0                      # consecutive failed opens / losses
        lost_at: Optional[float] = None
        try:
            while not self._quit.is_set():
                try:
                    container = self._open(first=info is None)
                    try:
                        stream = _video_stream(container, self.spec.shown)
                        stream.thread_type = "SLICE"   # (see PyAVSource: frame threads lose frames)
                        audio = container.streams.audio[0] if container.streams.audio else None
                        self._feed.start(audio)
                        for vf in self._decoded(container, stream, audio):
                            arrived = time.monotonic()
                            if info is None:
                                info = self._info(container, stream, vf)
                                timeline = Timeline(info.time_base, info.average_rate)
                                fixed = FixedSize(info.width, info.height, self.spec.shown, info.pix_fmt)
                                self._timeline = timeline
                                self._put(_Info(info))
                            elif lost_at is not None:
                                away = time.monotonic() - lost_at
                                timeline.resume(away)
                                self.reconnects += 1
                                log.warning("%s: reconnected after %.1f s away (reconnect %d): the output has "
                                            "a gap there", self.spec.shown, away, self.reconnects)
                            lost_at, tries = None, 0
                            pts = timeline(vf.pts, vf.time_base or stream.time_base)
                            alpha = fixed.alpha(vf) if info.alpha_bits else None
                            if not self._offer(Frame(index, pts, info.time_base, fixed(vf), arrived=arrived,
                                                     alpha=alpha)):
                                return
                            index += 1
                    finally:
                        container.close()      # this thread's own container: safe here
                    if not self.spec.reconnects_at_eof:
                        break
                    raise _Lost("the stream ended", stall=False)
                except _Lost as lost:
                    if lost.stall:
                        self.stalls += 1
                    lost_at = lost_at if lost_at is not None else time.monotonic()
                    if self.reconnect_limit is not None and tries >= self.reconnect_limit:
                        raise ProcessingError(f"{self.spec.shown}: {lost.reason}; gave up after {tries} "
                                              f"reconnect tries (--reconnect {self.reconnect_limit})") from None
                    delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** tries) * random.uniform(0.75, 1.25)
                    tries += 1
                    log.warning("%s: %s; reconnecting in %.1f s (try %d)", self.spec.shown, lost.reason, delay, tries)
                    if self._quit.wait(delay):
                        return
            self._put(_END)
        except BaseException as err:   # the consumer re-raises it in its own thread
            self._put(_Failed(err))

    def _open(self, first: bool) -> "av.container.InputContainer":
        # A listening server waits for its sender as long as it takes (Ctrl-C stops it);
        # anything else must answer within the stall timeout.
        open_s = None if self.spec.kind == "listen" else self.stall_timeout
        try:
            return self._opener(self.spec, timeout=(open_s, self.stall_timeout))
        except av.ProtocolNotFoundError:
            raise UsageError(f"{self.spec.shown}: this PyAV build's FFmpeg cannot open {self.spec.scheme}:// "
                             f"(protocol not compiled in{', libsrt is missing' if self.spec.scheme == 'srt' else ''})"
                             ) from None
        except (av.FFmpegError, OSError) as err:
            if first and not _is_network_error(err):
                raise UsageError(f"cannot read {self.spec.shown} as a video: {describe_av_error(err)}"
                                 f"{_RTP_HINT if self.spec.scheme == 'rtp' and self.spec.format is None else ''}"
                                 ) from None
            raise self._lost(err, f"opening failed ({describe_av_error(err)})") from None

    def _decoded(self, container, stream, audio) -> Iterator["av.VideoFrame"]:
        """Video frames; audio packets go to the feed (placed on the timeline once it exists)."""
        demux = container.demux(*(s for s in (stream, audio) if s is not None))
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as err:
                raise self._lost(err, f"reading failed ({describe_av_error(err)})") from None
            if audio is not None and packet.stream_index == audio.index:
                self._feed.offer(packet, self._timeline)
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError:
                self.decode_errors += 1   # packet loss on a live stream: skipped, the next keyframe heals it
                continue
            for vf in frames:
                if vf.is_corrupt:
                    self.frames_damaged += 1
                yield vf
            if self._quit.is_set():
                return

    def _info(self, container, stream, first: "av.VideoFrame") -> VideoInfo:
        check_frame_memory(first.width, first.height, self.spec.shown)
        info = _video_info(container, stream, first)
        # A live input cannot be read twice: its audio comes through the feed (see audio()).
        return dataclasses.replace(info, live=True, frames=None, duration=None, has_audio=bool(container.streams.audio))

    def _lost(self, err: BaseException, what: str) -> _Lost:
        if _is_timeout(err):
            return _Lost(f"stalled: nothing received for {self.stall_timeout:g} s", stall=True)
        return _Lost(what, stall=False)

    def _offer(self, frame: Frame) -> bool:
        """Hand a frame over under the drop policy: with a full handoff (the pipeline is behind),
        ``oldest`` replaces the oldest waiting frame, ``newest`` discards this one, ``none``
        waits (latency then grows). Demuxing never waits otherwise: a slow model is not a stall."""
        if self.drop == "none":
            return self._put(frame)
        try:
            self._handoff.put_nowait(frame)
            return not self._quit.is_set()
        except queue.Full:
            pass
        if self.drop == "newest":
            self.frames_dropped += 1
            return not self._quit.is_set()
        try:
            oldest = self._handoff.get_nowait()
        except queue.Empty:
            oldest = None
        if isinstance(oldest, Frame):
            self.frames_dropped += 1
        elif oldest is not None:   # (not a frame: keep its order, wait instead)
            return self._put(oldest) and self._put(frame)
        return self._put(frame)

    def _put(self, message: _Message) -> bool:
        """Hand ``message`` over; False once the consumer has gone."""
        while not self._quit.is_set():
            try:
                self._handoff.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


def _is_network_error(err: BaseException) -> bool:
    return _is_timeout(err) or isinstance(err, (ConnectionError, av.ExitError)) or \
        getattr(err, "errno", None) in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH,
                                        errno.ENETUNREACH, errno.EPIPE, errno.EIO)


def _is_timeout(err: BaseException) -> bool:
    return isinstance(err, (TimeoutError, av.ExitError)) or getattr(err, "errno", None) == errno.ETIMEDOUT

