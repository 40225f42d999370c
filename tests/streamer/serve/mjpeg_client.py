"""A plain-socket HTTP client for the view server's tests: bounded reads, no library between
the test and the bytes (so the multipart framing itself is checked)."""
from __future__ import annotations

import http.client
import io
import json
from typing import Dict, List, Optional, Tuple

import av
import numpy as np

TIMEOUT_S = 30.0   # generous: a shared 2-core machine


def get(port: int, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str = "/stats") -> dict:
    status, _, body = get(port, path)
    assert status == 200, (status, body[:200])
    return json.loads(body)


def decode_jpeg(data: bytes) -> np.ndarray:
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9", "not a whole JPEG"
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


class MjpegReader:
    """Reads parts of a ``multipart/x-mixed-replace`` stream one at a time."""

    def __init__(self, port: int, path: str = "/stream.mjpg", headers: Optional[Dict[str, str]] = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        content_type = self.response.getheader("Content-Type", "")
        self.boundary = content_type.partition("boundary=")[2].encode()

    def __enter__(self) -> "MjpegReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def _line(self) -> bytes:
        return self.response.readline(1024).rstrip(b"\r\n")

    def part(self) -> Optional[bytes]:
        """The next picture, or None once the stream has ended."""
        line = self._line()
        while line == b"":
            line = self._line()
            if line == b"" and self.response.peek(1) == b"":
                return None
        assert line == b"--" + self.boundary, line
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        if not headers:   # the closing boundary: nothing after it
            return None
        assert headers["content-type"] == "image/jpeg"
        return self.response.read(int(headers["content-length"]))

    def parts(self, count: int) -> List[bytes]:
        out = []
        for _ in range(count):
            part = self.part()
            assert part is not None, f"the stream ended after {len(out)} pictures"
            out.append(part)
        return out
