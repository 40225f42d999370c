"""Audio of a live input, carried into the output on the video's timeline.

A file input's audio is read a second time from the file (:mod:`streamer.passthrough`); a live
input cannot be read twice, so its demux thread hands the audio packets over as it reads them:

- :class:`AudioFeed` (the demux thread's side) places each packet on the output timeline the
  video's :class:`~streamer.live.timeline.Timeline` has built (same rebase, same gaps after a
  reconnect, same 33-bit unwrapping) and queues it. The queue is a ring of
  ``AUDIO_QUEUE_PACKETS`` (about 20 s of AAC or Opus, far more than the latency budget keeps
  video waiting): when nobody takes packets the oldest are overwritten, so audio never blocks
  the demux thread and never delays a video frame. A packet that cannot be placed (before the
  first video frame, after a reconnect before the new stream's first frame, or not after the
  last one) is skipped: the output gets a short audio gap, never a step back.
- :class:`LiveAudioMux` (the sink's side) muxes the queued packets up to each video packet's
  time, copied where the container takes the codec, else re-encoded, else dropped, as
  :func:`streamer.passthrough.add_audio` decides for file inputs.

The output stream is described by a *template*: the first audio packet and its stream's
parameters written to an in-memory Matroska file and read back, so it outlives the network
container (closed and reopened by every reconnect). Matroska's muxer also turns an ADTS AAC
stream (MPEG-TS carries AAC so, without the AudioSpecificConfig MP4 and RTSP need up front)
into a proper one; the packets themselves then go through FFmpeg's ``aac_adtstoasc`` filter.
"""
from __future__ import annotations

import io
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Deque, List, Optional

import av
from av.bitstream import BitStreamFilterContext

from ..passthrough import Reencode, add_audio
from .timeline import Timeline

log = logging.getLogger(__name__)

# How long after the first video frame the first audio packet may come (measured: 0-40 ms for
# ffmpeg's MPEG-TS sender over UDP, with AAC, Opus or MP2; the wait is only for a late one).
AUDIO_WAIT_S = 1.0
AUDIO_QUEUE_PACKETS = 1024   # ~21 s of 48 kHz AAC (1024 samples a packet), 20 s of 20 ms Opus
ALIGN_SLACK_S = 1.0          # a clocked output re-anchors audio when it is off by more than this


@dataclass(frozen=True)
class _Queued:
    seconds: float        # on the output timeline
    packet: "av.Packet"


def _template(stream: "av.audio.stream.AudioStream", first: "av.Packet") -> "av.container.InputContainer":
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        copy = out.add_stream_from_template(stream)
        out.start_encoding()
        first.stream = copy
        out.mux(first)
    return av.open(io.BytesIO(buffer.getvalue()), "r", format="matroska")


def _is_adts(stream: "av.stream.Stream") -> bool:
    cc = stream.codec_context
    return cc.name == "aac" and not cc.extradata


def _same_kind(a: "av.stream.Stream", b: "av.stream.Stream") -> bool:
    ca, cb = a.codec_context, b.codec_context
    return (ca.name, ca.sample_rate, ca.channels) == (cb.name, cb.sample_rate, cb.channels)


class AudioFeed:
    """The demux thread's audio: call :meth:`start` for each (re)opened container's audio
    stream and :meth:`offer` for each of its packets; the sink takes them with :meth:`take`."""

    def __init__(self, shown: str, capacity: int = AUDIO_QUEUE_PACKETS) -> None:
        assert capacity > 0, capacity
        self.shown = shown
        self.template: Optional["av.container.InputContainer"] = None
        self.expected = False         # the first container has an audio stream
        self.described = threading.Event()   # set once the template exists
        self.overwritten = 0          # queued packets nobody took in time (ring full)
        self.skipped = 0              # packets not placeable on the timeline
        self._queue: Deque[_Queued] = deque(maxlen=capacity)
        self._stream: Optional["av.stream.Stream"] = None
        self._bsf: Optional[BitStreamFilterContext] = None
        self._last = float("-inf")
        self._warned_kind = False

    @property
    def stream(self) -> Optional["av.stream.Stream"]:
        """The template's stream: what the output's audio stream is made from (None: no audio yet)."""
        return self.template.streams.audio[0] if self.template is not None else None

    # -- the demux thread --------------------------------------------------------------------

    def start(self, stream: Optional["av.stream.Stream"]) -> None:
        """A container was (re)opened; ``stream`` is its audio stream (None: it has none)."""
        self._stream, self._bsf = None, None
        if stream is None:
            return
        self.expected = True
        if self.template is not None and not _same_kind(stream, self.stream):
            if not self._warned_kind:
                self._warned_kind = True
                log.warning("%s: the audio changed to %s after a reconnect (it was %s): no audio from now on",
                            self.shown, stream.codec_context.name, self.stream.codec_context.name)
            return
        if self.template is None and self.described.is_set():
            return   # (it could not be described: said once)
        self._stream = stream
        if _is_adts(stream):
            self._bsf = BitStreamFilterContext("aac_adtstoasc", stream)

    def offer(self, packet: "av.Packet", timeline: Optional[Timeline]) -> None:
        """Place ``packet`` (of the stream given to :meth:`start`) and queue it; never blocks."""
        if self._stream is None or not packet.size:
            return
        if self.template is None:
            try:
                self.template = _template(self._stream, _copy(packet))   # (muxing takes the packet it gets)
            except (av.FFmpegError, ValueError) as err:   # audio is never worth the video: go on without
                log.warning("%s: %s audio cannot be passed through (%s): the output has no audio",
                            self.shown, self._stream.codec_context.name, err)
                self._stream = None
            self.described.set()
            if self._stream is None:
                return
        placed = timeline.place(packet.pts, packet.time_base) if timeline is not None else None
        if placed is None or placed <= self._last:
            self.skipped += 1
            return
        try:
            filtered = self._bsf.filter(packet) if self._bsf is not None else [packet]
        except av.FFmpegError:   # a damaged ADTS header: this packet is lost, the next one heals
            self.skipped += 1
            return
        for out in filtered:
            if out.has_sidedata("new_extradata"):   # (the template has it; muxers would write it twice)
                out = _copy(out)
            if len(self._queue) == self._queue.maxlen:
                self.overwritten += 1
            self._queue.append(_Queued(float(placed), out))
        self._last = placed

    # -- the sink's side ----------------------------------------------------------------------

    def take(self, before: float) -> List[_Queued]:
        """The queued packets placed before ``before`` seconds, in order."""
        taken = []
        while self._queue and self._queue[0].seconds < before:
            taken.append(self._queue.popleft())
        return taken


def _copy(packet: "av.Packet") -> "av.Packet":
    """The packet's data and timestamps (no side data) in a packet of its own."""
    copy = av.Packet(bytes(packet))
    copy.pts, copy.dts, copy.duration, copy.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    return copy


class LiveAudioMux:
    """Muxes an :class:`AudioFeed` into ``output`` alongside its video (the
    ``streamer.sinks.VideoSink`` passthrough for live inputs)."""

    def __init__(self, feed: AudioFeed, output: "av.container.OutputContainer") -> None:
        assert feed.stream is not None, "an audio feed without a template"
        self._feed = feed
        self._output = output
        name = str(output.name)
        kind = f"{os.path.splitext(name)[1]} file" if "://" not in name and os.path.splitext(name)[1] else None
        self._out = add_audio(feed.stream, output, kind)   # a copy, a Reencode or None (dropped)
        # Output seconds = feed seconds + offset. A file's video keeps the feed's timeline (0); a
        # clocked network output re-stamps the video with its own clock (:meth:`align`).
        self._offset = 0.0
        self._aligned = False
        self._last = float("-inf")   # output seconds of the last packet muxed (time bases may change)
        self._start: Optional[float] = None   # where the video starts: no sound before its first picture
        self._finished = False

    def align(self, timeline_s: float, output_s: float) -> None:
        """The video frame at ``timeline_s`` on the input's timeline went out at ``output_s``."""
        offset = output_s - timeline_s
        if not self._aligned or abs(offset - self._offset) > ALIGN_SLACK_S:
            self._offset, self._aligned = offset, True

    def mux_until(self, seconds: float) -> None:
        """Mux every queued packet that starts before ``seconds`` (output time: the sink calls this
        with each video packet's, so the first call says where the video starts)."""
        if self._start is None:
            self._start = seconds
        if self._out is None:
            self._feed.take(float("inf"))   # dropped: keep the ring from holding stale packets
            return
        for item in self._feed.take(seconds - self._offset):
            packet, seconds = item.packet, item.seconds + self._offset
            # (before the first picture: frames that came while the run started were dropped;
            # not after the last packet: a re-anchored clock stepped back, never overlap)
            if seconds < self._start or seconds <= self._last:
                self._feed.skipped += 1
                continue
            self._last = seconds
            packet.pts = packet.dts = round(Fraction(seconds) / packet.time_base)
            if isinstance(self._out, Reencode):
                for encoded in self._out.packets(packet):
                    self._output.mux(encoded)
            else:
                packet.stream = self._out
                self._output.mux(packet)

    def finish(self, seconds: float = float("inf")) -> None:
        if self._finished:
            return
        self._finished = True
        self.mux_until(seconds)
        if isinstance(self._out, Reencode):
            for encoded in self._out.flush():
                self._output.mux(encoded)
            if self._out.damaged:
                log.warning("%s: %d damaged audio packet(s) could not be decoded and were skipped",
                            self._feed.shown, self._out.damaged)
        lost = self._feed.overwritten
        if lost:
            log.warning("%s: %d audio packet(s) dropped: the output fell more than %d packets behind the input",
                        self._feed.shown, lost, AUDIO_QUEUE_PACKETS)
        self.close()

    def close(self) -> None:
        if self._feed.template is not None:
            self._feed.template.close()
