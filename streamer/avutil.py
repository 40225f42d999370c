"""Small helpers shared by the PyAV source and sink: FFmpeg logging and error wording."""
from __future__ import annotations

import os

import av
import av.logging


def quiet_ffmpeg(verbose: bool = False) -> None:
    """Keep FFmpeg's log lines off the user's terminal (the default), or route them to Python
    logging at VERBOSE level for debugging.

    Quiet means PyAV's ``None`` level: FFmpeg messages are dropped before they reach Python.
    We do not use a level such as ERROR by default because PyAV's Python log callback can
    deadlock with FFmpeg's worker threads (threaded decoding and encoding) and costs a lock
    per message; the errors we report come from the raised ``av.FFmpegError`` instead.
    """
    av.logging.set_level(av.logging.VERBOSE if verbose else None)
    # SVT-AV1 writes its banner and warnings to stderr itself; 1 = errors only. It reads the
    # variable when an encoder starts, so this must happen before the first libsvtav1 encode.
    if verbose:
        os.environ.pop("SVT_LOG", None)
    else:
        os.environ.setdefault("SVT_LOG", "1")


def describe_av_error(err: BaseException) -> str:
    """One line for an FFmpeg/PyAV error: its strerror (and log detail, if any), no file path
    (the caller names the file) and no newlines."""
    if isinstance(err, av.FFmpegError):
        text = err.strerror or type(err).__name__
        log = getattr(err, "log", None)
        if log and len(log) >= 3 and log[2]:
            text = f"{text} ({str(log[2]).strip()})"
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


def missing_protocol(shown: str, scheme: str, action: str = "open") -> str:
    """The one line for a URL whose protocol this PyAV build's FFmpeg lacks (the wheels have no
    libsrt, so srt:// is the usual case); ``action`` is "open" (an input) or "write"."""
    why = ", libsrt is missing" if scheme == "srt" else ""
    return f"{shown}: this PyAV build's FFmpeg cannot {action} {scheme}:// (protocol not compiled in{why})"


def display_path(path: str) -> str:
    """The path as the user would like to read it in a message (relative when shorter)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # different drive (Windows)
        return path
    return rel if len(rel) < len(path) else path


quiet_ffmpeg()
