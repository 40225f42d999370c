"""INPUT -> the source that reads it: files, FIFOs and ``-`` through
:func:`streamer.sources.open_source`, live specs through :class:`~streamer.live.source.LiveSource`."""
from __future__ import annotations

from ..errors import UsageError
from ..options import Options
from ..sources import VideoSource, open_source
from .source import LiveSource
from .specs import InputSettings, parse_input


def open_input(text: str, opts: Options) -> VideoSource:
    """Open INPUT ``text`` as ``opts`` asks; :class:`UsageError` (one line) when it cannot be."""
    spec = parse_input(text, InputSettings(listen=opts.listen, rtsp_transport=opts.rtsp_transport,
                                           input_size=opts.input_size, input_rate=opts.input_rate,
                                           input_format=opts.input_format))
    if not spec.live:
        if opts.reconnect is not None:
            raise UsageError(f"--reconnect is for live inputs (URLs, lavfi:, webcams), not {text}")
        return open_source(text, decoder=opts.decoder, max_decode_errors=opts.max_decode_errors,
                           pipe_timeout=opts.stall_timeout)
    # An http(s) file arrives as fast as it downloads, not in real time: nothing to drop by default.
    drop = opts.drop or ("none" if spec.scheme in ("http", "https") else "oldest")
    return LiveSource(spec, stall_timeout=opts.stall_timeout, reconnect=opts.reconnect, drop=drop)

