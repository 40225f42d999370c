"""Reading a pipe, FIFO or standard input under a deadline.

FFmpeg reading a pipe blocks in ``read(2)`` for as long as the writer is silent, and opening
a FIFO for reading blocks until a writer opens it (the byte-probe that checks a regular file
would hang forever there). :class:`PipeReader` is the file-like object PyAV reads instead: it
opens without blocking and waits for data with ``select`` and a deadline, so a silent writer
ends the run with one line rather than never.
"""
from __future__ import annotations

import os
import select
import stat
import time
from typing import Optional

from .errors import ProcessingError

_POLL_S = 0.05   # how often a FIFO with no writer yet is looked at again


def is_pipe(path: str) -> bool:
    """A FIFO, socket or character device (``/dev/stdin`` on a pipe included)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class PipeTimeout(ProcessingError):
    """Nothing arrived on the pipe within the deadline."""


class PipeReader:
    """``read(n)`` for PyAV over a pipe's fd, raising :class:`PipeTimeout` after ``timeout``
    seconds without data. ``path`` None reads standard input (a duplicate of fd 0)."""

    def __init__(self, path: Optional[str], timeout: float, shown: str) -> None:
        assert timeout > 0, timeout
        self.timeout, self.shown = timeout, shown
        if path is None:
            self._fd = os.dup(0)
        else:
            # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(self._fd, False)
        self._fifo = stat.S_ISFIFO(os.fstat(self._fd).st_mode)
        self._seen_data = False
        self.bytes_read = 0

    def read(self, n: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hint = "" if self._seen_data else " (no writer yet?)"
                raise PipeTimeout(f"{self.shown}: nothing arrived for {self.timeout:g} s{hint}")
            ready, _, _ = select.select([self._fd], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self._fd, n)
            except BlockingIOError:
                continue
            if data:
                self._seen_data = True
                self.bytes_read += len(data)
                return data
            if self._fifo and not self._seen_data:
                # A FIFO reads as "end" until its first writer opens it: wait for one.
                time.sleep(min(_POLL_S, max(0.0, left)))
                continue
            return b""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
