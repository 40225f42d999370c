"""Where ``--serve`` listens, and the rule that guards it (no aiohttp needed to check it).

``--serve [HOST:]PORT`` binds 127.0.0.1 unless a host is named. A view of someone's camera is
private by default: any address other than a loopback one is served only with
``--serve-token``, and a request without the token gets a 401 and nothing else. The rule is
checked with the other options, before a frame is decoded or a port is bound.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from ..errors import UsageError

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost",)
MIN_TOKEN_CHARS = 8   # a token short enough to guess is no guard


@dataclass(frozen=True)
class ServeAddress:
    host: str
    port: int   # 0: any free port (the server says which)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("empty host")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} out of range")

    @property
    def loopback(self) -> bool:
        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:   # a host name: it may resolve anywhere
            return False

    def url(self, port: Optional[int] = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/"


def parse_serve(text: str) -> ServeAddress:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` -> :class:`ServeAddress`; a bad one is a UsageError."""
    text = str(text).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"--serve {text!r}: write an IPv6 address in brackets, e.g. [::1]:8080")
    if not port_text.isdigit() or int(port_text) > 65535 or not host:
        raise UsageError(f"--serve {text!r}: expected [HOST:]PORT, e.g. 8080 or 0.0.0.0:8080")
    return ServeAddress(host, int(port_text))


def check_serve(serve: Optional[str], token: Optional[str]) -> Optional[ServeAddress]:
    """The address to serve on (None: no server); refuses a non-loopback one without a token."""
    if serve is None:
        if token is not None:
            raise UsageError("--serve-token is for --serve")
        return None
    address = parse_serve(serve)
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"--serve-token must be at least {MIN_TOKEN_CHARS} characters")
    if not address.loopback and token is None:
        raise UsageError(f"--serve {serve}: serving beyond this machine (not a loopback address) needs "
                         "--serve-token TOKEN (viewers then send it as 'Authorization: Bearer TOKEN' or ?token=)")
    return address
