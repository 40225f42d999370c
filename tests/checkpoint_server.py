"""Test peers for the model zoo: a real HTTP server on 127.0.0.1 serving generated checkpoints,
and an isolated zoo environment (``$NYSTRA_HOME`` cache, ``$NYSTRA_PRESETS`` extra presets).

The server is ``http.server.ThreadingHTTPServer`` in a thread; behaviours a download must cope
with are switches on it: ``honour_range`` (answer ``Range`` with 206, or ignore it with 200),
``truncate_at`` (declare the full ``Content-Length``, send that many body bytes, close), redirects
(``/redirect/<name>`` -> 302 -> ``/files/<name>``, or to ``redirect_to[name]`` if set), 404s,
``omit_length`` (no ``Content-Length``: the body ends when the connection closes). Every request is
logged in ``requests``.
"""
from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml


@dataclass
class Served:
    path: str
    range: Optional[str]
    if_range: Optional[str]
    status: int
    sent: int = 0  # body bytes written


class CheckpointServer:
    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.honour_range = True
        self.truncate_at: Optional[int] = None
        self.redirect_to: Dict[str, str] = {}
        self.omit_length = False
        self.requests: List[Served] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="checkpoint-server",
                                        daemon=True)
        self._thread.start()
        self.running = True

    @property
    def base(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, name: str, data: bytes) -> str:
        """Serve ``data`` as ``name``; returns its URL."""
        self.files[name] = data
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"

    def redirect_url(self, name: str) -> str:
        return f"{self.base}/redirect/{name}"

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'

    def stop(self) -> None:
        if self.running:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self.running = False


def _handler_for(server: CheckpointServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            served = Served(self.path, self.headers.get("Range"), self.headers.get("If-Range"), 0)
            server.requests.append(served)
            if self.path.startswith("/redirect/"):
                served.status = 302
                self.send_response(302)
                name = self.path[len("/redirect/"):]
                self.send_header("Location", server.redirect_to.get(name, "/files/" + name))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = server.files.get(self.path[len("/files/"):]) if self.path.startswith("/files/") else None
            if data is None:
                served.status = 404
                self.send_error(404)
                return
            etag = server.etag(data)
            start = 0
            wanted = re.match(r"bytes=(\d+)-$", served.range or "")
            if wanted and server.honour_range and served.if_range in (None, etag):
                start = int(wanted.group(1))
                if start >= len(data):
                    served.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                served.status = 206
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                served.status = 200
                self.send_response(200)
            body = data[start:]
            if server.omit_length:
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", etag)
            self.send_header("Accept-Ranges", "bytes" if server.honour_range else "none")
            self.end_headers()
            if server.truncate_at is not None:
                body = body[:server.truncate_at]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()
            served.sent = len(body)

    return Handler


def refusing_url(name: str = "model.pth") -> str:
    """A URL on a 127.0.0.1 port nobody listens on: connecting is refused (an offline machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/files/{name}"


# -- the zoo's environment ----------------------------------------------------------------------


@dataclass
class ZooEnv:
    """``home``: the cache root ($NYSTRA_HOME); ``presets``: the extra presets dir ($NYSTRA_PRESETS)."""

    home: Path
    presets: Path
    written: List[str] = field(default_factory=list)

    @property
    def models(self) -> Path:
        return self.home / "models"

    def write_preset(self, name: str, *, file: str = "tiny.safetensors", task: str = "sr2", arch: str = "swinir",
                     **fields) -> str:
        """A preset file ``<name>.yaml`` in the extra presets dir; ``fields`` as in the YAML
        (``url=`` or ``page=``, ``sha256=``, ``nystrom={...}``, ...). Returns the name."""
        entry = {"name": name, "task": task, "arch": arch, "file": file, "description": f"test preset {name}",
                 "licence": fields.pop("licence", "Apache-2.0"), **fields}
        (self.presets / f"{name}.yaml").write_text(yaml.safe_dump({"presets": [entry]}, sort_keys=False))
        self.written.append(name)
        return name


@pytest.fixture
def server():
    peer = CheckpointServer()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def zoo_env(tmp_path, monkeypatch) -> ZooEnv:
    env = ZooEnv(home=tmp_path / "nystra-home", presets=tmp_path / "presets")
    env.presets.mkdir()
    monkeypatch.setenv("NYSTRA_HOME", str(env.home))
    monkeypatch.setenv("NYSTRA_PRESETS", str(env.presets))
    return env


# -- generated checkpoints ----------------------------------------------------------------------


def tiny_swinir_bytes(scale: int = 2, window: int = 8, seed: int = 0) -> bytes:
    """A small SwinIR (x``scale``, trained window ``window``) as safetensors bytes."""
    import torch
    from safetensors.torch import save

    from pipelines.models.swinir import SwinIR, SwinIRConfig

    torch.manual_seed(seed)
    model = SwinIR(SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=window,
                                mlp_ratio=2, upscale=scale, upsampler="pixelshuffledirect" if scale > 1 else ""))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def torch_bytes(obj) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class CodePayload:
    """Unpickling this creates ``marker``: a checkpoint that carries code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
