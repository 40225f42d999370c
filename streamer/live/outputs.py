"""What OUTPUT names: a file (written under a temporary name, renamed when complete), ``-``
(standard output) or a network URL we send to, parsed into one typed :class:`OutputSpec`.

Network outputs and ``-`` are watched as they are written, so they always get live writing
(low-latency encoding, packets flushed as muxed); network outputs also keep their clock while
the source is away (:mod:`streamer.live.clocked`). Nothing here opens anything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from ..errors import UsageError
from .specs import url_scheme

# Protocol -> the muxer its stream is written in. RTSP is pushed as a client (ANNOUNCE/RECORD,
# e.g. to MediaMTX); RTMP carries FLV; UDP, SRT and TCP carry MPEG-TS.
NETWORK_MUXERS: Dict[str, str] = {
    "rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv", "udp": "mpegts", "srt": "mpegts",
    "tcp": "mpegts",
}
# NUT: FFmpeg's own streamable container, read by `ffplay -` and `ffmpeg -i -` without probing
# trouble, for any codec we encode.
STDOUT_MUXER = "nut"
# MPEG-TS over UDP: 7 TS packets a datagram (1316 bytes) fit any Ethernet MTU without IP
# fragmentation; FFmpeg's default (1472) splits the last TS packet across datagrams.
UDP_PACKET_SIZE = "1316"


@dataclass(frozen=True)
class OutputSpec:
    """How to open one output. ``kind``: file, stdout or network.

    ``target`` is what ``av.open`` gets, ``format`` the muxer to force (None: by extension),
    ``options`` the muxer's options; ``scheme`` the URL's protocol (empty for the others).
    """

    kind: str
    target: str
    shown: str
    format: Optional[str] = None
    options: Dict[str, str] = field(default_factory=dict)
    scheme: str = ""

    def __post_init__(self) -> None:
        assert self.kind in ("file", "stdout", "network"), self.kind
        assert (self.format is None) == (self.kind == "file"), self

    @property
    def live(self) -> bool:
        """Watched while written: low-latency encoding and flushing whatever the input."""
        return self.kind != "file"

    @property
    def always_on(self) -> bool:
        """Keeps its clock while no frame comes (viewers stay connected); a file gets the gap."""
        return self.kind == "network"


def parse_output(text: str) -> OutputSpec:
    """The :class:`OutputSpec` for OUTPUT; :class:`UsageError` (one line) for a protocol we do not send."""
    if text == "-":
        return OutputSpec("stdout", "pipe:1", "standard output", format=STDOUT_MUXER)
    scheme = url_scheme(text)
    if scheme is None:
        return OutputSpec("file", text, text)
    if scheme not in NETWORK_MUXERS:
        raise UsageError(f"unsupported output protocol {scheme}:// (supported: "
                         f"{', '.join(s + '://' for s in NETWORK_MUXERS)}, a file, or - for standard output)")
    target, options = text, {}
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = "tcp"    # a push through NAT/firewalls: no lost packets
    if scheme == "udp" and "pkt_size=" not in text:
        target += ("&" if "?" in text else "?") + f"pkt_size={UDP_PACKET_SIZE}"
    return OutputSpec("network", target, text, format=NETWORK_MUXERS[scheme], options=options, scheme=scheme)
