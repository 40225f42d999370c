"""Headless Chromium driven over the DevTools protocol (a websocket, through aiohttp's client):
load a page, read the DOM, take screenshots. Everything on 127.0.0.1, bounded in time."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import aiohttp
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs the chromium program (Debian: chromium)")
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 20.0

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")


class Chromium:
    """``async with Chromium(width, height) as page: await page.goto(url) ...``"""

    def __init__(self, width: int = 1280, height: int = 720) -> None:
        self.size = (width, height)
        self._profile = tempfile.TemporaryDirectory(prefix="nystra-chromium-", ignore_cleanup_errors=True)
        self._proc: Optional[subprocess.Popen] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._ws = None
        self._next_id = 0

    async def __aenter__(self) -> "Chromium":
        profile = Path(self._profile.name)
        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={self.size[0]},{self.size[1]}",
             "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)   # its own process group: the renderers go with it
        try:
            port = await self._devtools_port(profile / "DevToolsActivePort")
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=COMMAND_TIMEOUT_S))
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next(t for t in targets if t["type"] == "page")
            self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            await self.send("Page.enable")
            await self.send("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                            deviceScaleFactor=1, mobile=False)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _devtools_port(self, path: Path) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            await asyncio.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def __aexit__(self, *exc) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait(timeout=10)
        self._profile.cleanup()

    async def send(self, method: str, **params: Any) -> dict:
        self._next_id += 1
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while True:   # events arrive between answers: skip them
            message = await self._ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection ended: {message.type}")
            data = json.loads(message.data)
            if data.get("id") == self._next_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise TimeoutError(f"the page never satisfied: {expression}")

    async def screenshot(self) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(result["data"])
