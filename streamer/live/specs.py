"""What INPUT names: a file, a network URL (as a client or, with ``--listen``, as a server),
``lavfi:GRAPH``, a webcam or standard input, parsed into one typed :class:`InputSpec`.

The spec says how FFmpeg is to open the input (the target, the demuxer to force, the options
it needs) and how the run treats it: ``live`` inputs are read as they arrive (stalls detected,
reconnects), the others at the model's pace like a file. Nothing here opens anything.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..errors import UsageError

# Defaults of the "live input" options (streamer.options states them through these names).
DEFAULT_STALL_TIMEOUT = 5.0
RTSP_TRANSPORTS = ("tcp", "udp")

# Protocols a client may read (anything FFmpeg opens; these are the ones we name and test).
CLIENT_SCHEMES = ("rtsp", "rtsps", "udp", "rtp", "srt", "rtmp", "rtmps", "tcp", "http", "https")
# Protocols where FFmpeg can wait for a sender (``--listen``), and the options that make it.
LISTEN_OPTIONS: Dict[str, Dict[str, str]] = {
    # FFmpeg's rtsp listener fails at once ("Numerical result out of range") unless it has a
    # positive listen_timeout (seconds): wait a day for the pusher (Ctrl-C stops it sooner).
    "rtsp": {"rtsp_flags": "listen", "listen_timeout": "86400"},
    "rtmp": {"listen": "1"},
    "srt": {"mode": "listener"},
    "tcp": {"listen": "1"},
}
# Live inputs whose end of stream is the end of the run; for the others (a stream from a
# sender) an end of stream means the sender went away: reconnect.
ENDS_AT_EOF = ("lavfi", "http", "https")

_WEBCAM = re.compile(r"^(?:webcam:(\d+)|(/dev/video\d+))$")
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class InputSettings:
    """The "live input" options a spec needs (fields of ``streamer.options.Options``)."""

    listen: bool = False
    rtsp_transport: str = "tcp"
    input_size: Optional[str] = None
    input_rate: Optional[float] = None
    input_format: Optional[str] = None


@dataclass(frozen=True)
class InputSpec:
    """How to open one input. ``kind``: file, stdin, url, listen, lavfi or webcam.

    ``target`` is what ``av.open`` gets, ``format`` the demuxer to force (None: probe),
    ``options`` FFmpeg's options for it; ``scheme`` the URL's protocol (empty for others).
    """

    kind: str
    target: str
    shown: str
    format: Optional[str] = None
    options: Dict[str, str] = field(default_factory=dict)
    scheme: str = ""

    def __post_init__(self) -> None:
        assert self.kind in ("file", "stdin", "url", "listen", "lavfi", "webcam"), self.kind

    @property
    def live(self) -> bool:
        """Read as it arrives (stalls, reconnects), not at the model's pace."""
        return self.kind in ("url", "listen", "lavfi", "webcam")

    @property
    def reconnects_at_eof(self) -> bool:
        """An end of stream means the sender went away (not the end of the input)."""
        return self.kind in ("url", "listen", "webcam") and self.scheme not in ENDS_AT_EOF


def parse_input(spec: str, settings: InputSettings = InputSettings()) -> InputSpec:
    """The :class:`InputSpec` for INPUT; :class:`UsageError` (one line) for what cannot work."""
    if settings.rtsp_transport not in RTSP_TRANSPORTS:
        raise UsageError(f"unknown rtsp_transport {settings.rtsp_transport!r} (choose from "
                         f"{', '.join(RTSP_TRANSPORTS)})")
    device = _WEBCAM.match(spec)
    scheme = url_scheme(spec)
    if settings.listen and (device or scheme is None):
        raise UsageError(f"--listen needs a URL to listen on ({', '.join(s + '://' for s in LISTEN_OPTIONS)}), "
                         f"not {spec}")
    if any(v is not None for v in (settings.input_size, settings.input_rate, settings.input_format)) \
            and not device:
        raise UsageError("--input-size, --input-rate and --input-format are for webcams (webcam:N, /dev/videoN)")
    if spec == "-":
        return InputSpec("stdin", "-", "standard input")
    if spec.startswith("lavfi:"):
        graph = spec[len("lavfi:"):]
        if not graph:
            raise UsageError("lavfi: needs a filter graph, e.g. lavfi:testsrc2=size=640x360:rate=30")
        # Paced at real time: a lavfi graph otherwise runs as fast as it can, like a file.
        paced = graph if graph.rstrip().endswith("realtime") else graph + ",realtime"
        return InputSpec("lavfi", paced, spec, format="lavfi", scheme="lavfi")
    if device:
        path = device.group(2) or f"/dev/video{device.group(1)}"
        return InputSpec("webcam", path, spec, format="v4l2", options=_webcam_options(settings), scheme="v4l2")
    if scheme is None:
        if spec.lower().endswith(".sdp"):
            # An SDP file describes an RTP session: FFmpeg may then open udp/rtp sockets.
            return InputSpec("url", spec, spec, format="sdp", scheme="rtp",
                             options={"protocol_whitelist": "file,udp,rtp,crypto,data"})
        return InputSpec("file", spec, spec)
    if scheme not in CLIENT_SCHEMES:
        raise UsageError(f"unsupported input protocol {scheme}:// (supported: "
                         f"{', '.join(s + '://' for s in CLIENT_SCHEMES)}, lavfi:GRAPH, webcam:N, -)")
    if settings.listen:
        if scheme not in LISTEN_OPTIONS:
            raise UsageError(f"--listen works for {', '.join(s + '://' for s in LISTEN_OPTIONS)}, not {scheme}://")
        options = dict(LISTEN_OPTIONS[scheme])
        return InputSpec("listen", spec, spec, format="rtsp" if scheme == "rtsp" else None,
                         options=options, scheme=scheme)
    options = {}
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = settings.rtsp_transport
    if scheme == "udp":
        # A slow reader must not make FFmpeg give up: it keeps a 10 MB ring buffer of datagrams.
        options.update({"overrun_nonfatal": "1", "fifo_size": "50000"})
    return InputSpec("url", spec, spec, options=options, scheme=scheme)


def url_scheme(spec: str) -> Optional[str]:
    """``rtsp`` for ``rtsp://...``; None where ``spec`` is no URL (a path, ``-``)."""
    scheme, sep, _ = spec.partition("://")
    if sep and scheme.isalnum():
        return scheme.lower()
    return None


def parse_size(text: str) -> Tuple[int, int]:
    match = _SIZE.match(text)
    if not match or not all(int(v) > 0 for v in match.groups()):
        raise UsageError(f"--input-size wants WxH (e.g. 1280x720), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _webcam_options(settings: InputSettings) -> Dict[str, str]:
    options = {}
    if settings.input_size is not None:
        w, h = parse_size(settings.input_size)
        options["video_size"] = f"{w}x{h}"
    if settings.input_rate is not None:
        if settings.input_rate <= 0:
            raise UsageError(f"--input-rate must be > 0, got {settings.input_rate}")
        options["framerate"] = f"{settings.input_rate:g}"
    if settings.input_format is not None:
        options["input_format"] = settings.input_format
    return options

