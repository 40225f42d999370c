"""Everything of the input besides its video, carried into the output file.

* **Audio**: every stream, copied packet for packet where the output container can hold its
  codec, re-encoded only where it cannot. Copying is the rule (no generation loss, identical
  packets), but a container choice should not silently cost the soundtrack: AAC cannot go into
  WebM, Opus and Vorbis cannot go into MOV, and so on. Such a stream is decoded and re-encoded
  to the container's own audio codec (Opus for WebM and Matroska, AAC elsewhere) at its sample
  rate and channel layout, with a one-line warning. One FFmpeg cannot decode is dropped, with a
  warning.
* **Subtitles**: copied where the container takes them (SubRip/ASS into Matroska, mov_text into
  MP4, ...), otherwise dropped with a warning naming a container that would keep them.
* **Tags**: the container's (title, creation time, location, ...) and each stream's (language,
  title) and dispositions (default, forced, ...), so a player still shows "English" / "Français"
  and picks the same default track. Tags that describe the old encode (encoder, Matroska's
  per-stream statistics, MP4 brands) are left for the muxer to write anew.

Whether a muxer takes a codec is asked of FFmpeg itself (a header written to memory), not read
from its codec list: MOV lists Opus, for one, and then refuses to write the header.

Packets leave in time order, a little ahead of the video (:meth:`Passthrough.mux_until`), so
the muxer interleaves without buffering the whole soundtrack.
"""
from __future__ import annotations

import io
import logging
import os
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Union

import av

log = logging.getLogger(__name__)

# MPEG-TS cannot answer FFmpeg's "do you support this codec" query: the codecs it has stream
# types for (others would be written as opaque data no player decodes).
MPEGTS_CODECS = {"h264", "hevc", "mpeg2video", "mpeg4", "aac", "mp2", "mp3", "ac3", "eac3", "opus", "dts",
                 "dvb_subtitle", "dvb_teletext"}

# Audio encoder for streams that cannot be copied, per muxer, and its bit rate per channel.
_REENCODE_TO = {"webm": "libopus", "matroska": "libopus", "nut": "libopus"}   # else "aac"
_BITS_PER_CHANNEL = {"libopus": 64_000, "aac": 96_000}
# Muxers that write to the network in their header: asked through the muxer of their payload.
_PROBE_AS = {"rtsp": "rtp"}


def muxer_takes(format_name: str, stream: "av.stream.Stream") -> bool:
    """Whether FFmpeg's ``format_name`` muxer writes a header for a copy of ``stream``."""
    codec = stream.codec_context.codec
    if format_name == "mpegts":
        return codec is not None and codec.canonical_name in MPEGTS_CODECS
    probe = av.open(io.BytesIO(), "w", format=_PROBE_AS.get(format_name, format_name))
    try:
        probe.add_stream_from_template(stream)
        probe.start_encoding()
        return True
    except (av.FFmpegError, ValueError):
        return False
    finally:
        try:
            probe.close()
        except (av.FFmpegError, ValueError):
            pass


def _encoder_rate(codec: "av.Codec", rate: int) -> int:
    """``rate`` if the encoder takes it, else the nearest higher rate it takes (or its highest)."""
    rates = sorted(codec.audio_rates or ())
    if not rates or rate in rates:
        return rate
    higher = [r for r in rates if r >= rate]
    return higher[0] if higher else rates[-1]


class Reencode:
    """Decode one input audio stream and encode it into ``output`` with ``encoder``."""

    def __init__(self, source: "av.stream.Stream", output: "av.container.OutputContainer", encoder: str) -> None:
        cc = source.codec_context
        codec = av.Codec(encoder, "w")
        rate = _encoder_rate(codec, cc.sample_rate)
        self.stream = output.add_stream(encoder, rate=rate)
        out_cc = self.stream.codec_context
        out_cc.layout = cc.layout
        out_cc.format = codec.audio_formats[0]
        out_cc.bit_rate = _BITS_PER_CHANNEL.get(encoder, 96_000) * max(1, cc.channels)
        self.stream.time_base = Fraction(1, rate)
        self._source = source
        self.damaged = 0
        self.description = f"{encoder} {out_cc.bit_rate // 1000} kb/s"

    def packets(self, packet: "av.Packet") -> List["av.Packet"]:
        """Encoded packets for one input packet (an empty packet flushes the decoder)."""
        out: List["av.Packet"] = []
        try:
            frames = self._source.codec_context.decode(packet if packet.size else None)
        except av.InvalidDataError:   # a damaged packet: a few ms of silence, not a failed run
            self.damaged += 1
            return out
        for frame in frames:
            out.extend(self.stream.encode(frame))
        return out

    def flush(self) -> List["av.Packet"]:
        return list(self.stream.encode(None))


# Tags the muxer writes anew, or that describe the input's encode rather than its content.
_STALE_TAGS = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "bps",
               "number_of_frames", "number_of_bytes", "vendor_id"}


def copy_tags(source, target) -> None:
    """Copy a container's or stream's tags (``metadata``) minus the stale ones; and, for
    streams, the disposition flags."""
    for key, value in source.metadata.items():
        lowered = key.lower()
        if lowered not in _STALE_TAGS and not lowered.startswith("_statistics"):
            target.metadata[key] = value
    if hasattr(source, "disposition"):
        target.disposition = source.disposition


def _codec_name(stream: "av.stream.Stream") -> str:
    """The format's name ("ass"), not the decoder's ("ssa")."""
    codec = stream.codec_context.codec
    return codec.canonical_name if codec is not None else stream.codec_context.name


def add_audio(stream: "av.stream.Stream", output: "av.container.OutputContainer",
              kind: Optional[str] = None) -> Union["av.stream.Stream", Reencode, None]:
    """An output stream for ``stream`` in ``output``: a copy where the muxer takes the codec,
    else a :class:`Reencode` (with a warning), else None (dropped, with a warning). ``kind``
    names the output in the warnings (".mov file"; default: the muxer's name)."""
    container = output.format.name
    kind = kind or f"{container} output"
    name = _codec_name(stream)
    if muxer_takes(container, stream):
        return output.add_stream_from_template(stream)
    codec = stream.codec_context.codec
    if codec is None or not codec.is_decoder:
        log.warning("%s audio cannot go into a %s and cannot be decoded: audio stream %d "
                    "dropped", name, kind, stream.index)
        return None
    reencode = Reencode(stream, output, _REENCODE_TO.get(container, "aac"))
    log.warning("%s audio cannot go into a %s: audio stream %d re-encoded as %s "
                "(choose .mkv to copy it unchanged)", name, kind, stream.index, reencode.description)
    return reencode


class Passthrough:
    """Audio, subtitles and tags of the input file ``source`` into ``output``, whose video
    stream is ``video``; see the module docstring."""

    def __init__(self, source: str, output: "av.container.OutputContainer",
                 video: Optional["av.stream.Stream"] = None) -> None:
        self._output = output
        self._input = av.open(source)
        self._copies: Dict[int, "av.stream.Stream"] = {}
        self._reencodes: Dict[int, Reencode] = {}
        container = output.format.name
        kind = os.path.splitext(str(output.name))[1] or f".{container}"   # what the user typed
        copy_tags(self._input, output)
        if video is not None and self._input.streams.video:
            copy_tags(self._input.streams.video[0], video)
        for stream in self._input.streams:
            if stream.type == "audio":
                self._add_audio(stream, kind)
            elif stream.type == "subtitle":
                if muxer_takes(container, stream):
                    self._copies[stream.index] = output.add_stream_from_template(stream)
                else:
                    log.warning("%s subtitles cannot go into a %s file: subtitle stream %d dropped "
                                "(choose .mkv to keep it)", _codec_name(stream), kind, stream.index)
                    continue
            else:
                continue
            added = self._copies.get(stream.index) or self._reencodes.get(stream.index)
            if added is not None:
                copy_tags(stream, added if isinstance(added, av.stream.Stream) else added.stream)
        kept = [self._input.streams[i] for i in sorted((*self._copies, *self._reencodes))]
        self._packets: Iterator["av.Packet"] = self._input.demux(*kept) if kept else iter(())
        self._pending: Optional["av.Packet"] = None
        self._finished = False

    def _add_audio(self, stream: "av.stream.Stream", kind: str) -> None:
        added = add_audio(stream, self._output, f"{kind} file")
        if isinstance(added, Reencode):
            self._reencodes[stream.index] = added
        elif added is not None:
            self._copies[stream.index] = added

    @staticmethod
    def _seconds(packet: "av.Packet") -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        return float(ts * packet.time_base) if ts is not None else float("-inf")

    def mux_until(self, seconds: float) -> None:
        """Mux every packet that starts before ``seconds``."""
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            packet = self._pending
            if packet.size and self._seconds(packet) >= seconds:
                return
            self._pending = None
            index = packet.stream_index
            if index in self._reencodes:
                for encoded in self._reencodes[index].packets(packet):
                    self._output.mux(encoded)
            elif packet.size:   # (size 0: the demuxer's end-of-stream marker)
                packet.stream = self._copies[index]
                self._output.mux(packet)

    def finish(self, seconds: float = float("inf")) -> None:
        """Mux up to ``seconds``, drain the re-encoders and close the input."""
        if self._finished:
            return
        self.mux_until(seconds)
        for index, reencode in self._reencodes.items():
            for encoded in reencode.flush():
                self._output.mux(encoded)
            if reencode.damaged:
                log.warning("audio stream %d: %d damaged packet(s) could not be decoded and were skipped",
                            index, reencode.damaged)
        self._finished = True
        self.close()

    def close(self) -> None:
        self._input.close()
