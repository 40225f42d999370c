"""The ``--serve`` HTTP server: aiohttp on a thread and event loop of its own.

========================  ==================================================================
``/``                     the page: the restored stream live, a stats panel updated every
                          second; ``?compare=1`` shows the input beside it
``/stream.mjpg``          MJPEG (``multipart/x-mixed-replace``), which every browser plays;
                          ``?view=input`` for the decoded input
``/snapshot.jpg``         the latest restored frame (``?view=input`` too)
``/stats``                the run's live figures, JSON
``/metrics``              the same in Prometheus' text format
========================  ==================================================================

With a token (``--serve-token``), every request must carry it, as ``Authorization: Bearer
TOKEN`` or ``?token=TOKEN``; anything else gets a 401 and nothing else.

Viewers never slow the pipeline: the writer only posts to a :class:`~.board.FrameBoard`;
each stream sends the latest version when it is ready for one (a slow viewer skips frames),
and each version is JPEG-encoded once per view, on one encoder thread, however many watch.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import importlib.resources
import logging
import threading
import time
from typing import Callable, Dict, Mapping, Optional, Tuple

from aiohttp import web

from ..errors import UsageError
from .address import ServeAddress
from .board import VIEWS, FrameBoard, JpegEncoder, Posted
from .metrics import Metrics

log = logging.getLogger(__name__)

BOUNDARY = "frame"
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 2.0   # a live run's Ctrl-C must end within 2 s, the server's part included
Snapshot = Callable[[], Mapping]


class Pictures:
    """JPEGs of the board's latest version, encoded at most once per version and view.

    Lives on the server's event loop; the encoding itself runs on one worker thread, so the
    loop keeps serving while a picture is encoded, and two viewers of one version share it."""

    def __init__(self, board: FrameBoard, loop: asyncio.AbstractEventLoop) -> None:
        self.board, self._loop = board, loop
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-jpeg")
        self._encoders: Dict[str, JpegEncoder] = {}
        self._cache: Dict[str, Tuple[int, "asyncio.Future[bytes]"]] = {}
        self._posted = asyncio.Event()
        self.closing = False
        self.encode_seconds = 0.0
        self.encoded = 0
        board.listen(self._wake_threadsafe)

    def _wake_threadsafe(self) -> None:   # on the writer's thread
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:   # the loop has closed: nobody is waiting
            pass

    def _wake(self) -> None:
        self._posted.set()
        self._posted = asyncio.Event()

    def close(self) -> None:
        self.closing = True
        self._wake()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def newer(self, seen: int) -> Optional[Posted]:
        """The latest posted frame once it is newer than version ``seen``; None when closing."""
        while not self.closing:
            latest = self.board.latest()
            if latest is not None and latest.version > seen:
                return latest
            await self._posted.wait()
        return None

    async def jpeg(self, posted: Posted, view: str) -> bytes:
        cached = self._cache.get(view)
        if cached is None or cached[0] != posted.version:
            future = self._loop.run_in_executor(self._executor, self._encode, posted, view)
            cached = self._cache[view] = (posted.version, asyncio.ensure_future(future))
        return await asyncio.shield(cached[1])

    def _encode(self, posted: Posted, view: str) -> bytes:
        picture = posted.picture(view)
        started = time.perf_counter()
        encoder = self._encoders.get(view)
        if encoder is None or encoder.source_size != picture.shape[:2]:
            encoder = self._encoders[view] = JpegEncoder(*picture.shape[:2])
        jpeg = encoder.encode(picture)
        self.encode_seconds += time.perf_counter() - started
        self.encoded += 1
        return jpeg


def _view(request: web.Request) -> str:
    view = request.query.get("view", "restored")
    if view not in VIEWS:
        raise web.HTTPBadRequest(text=f"unknown view {view!r} (choose from {', '.join(VIEWS)})\n")
    return view


class ViewServer:
    """Serves one run's board and stats; :meth:`start` binds (or raises UsageError), :meth:`stop` ends it."""

    def __init__(self, address: ServeAddress, board: FrameBoard, snapshot: Snapshot,
                 token: Optional[str] = None) -> None:
        self.address, self.board, self._snapshot, self._token = address, board, snapshot, token
        self.port: Optional[int] = None
        self.viewers = 0
        self.viewers_peak = 0
        self.requests = 0
        self.refused = 0
        self.bytes_sent = 0
        self._loop = asyncio.new_event_loop()
        self._pictures: Optional[Pictures] = None
        self._runner: Optional[web.AppRunner] = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="serve", daemon=True)
        self._metrics = Metrics(self.stats)

    @property
    def url(self) -> str:
        return self.address.url(self.port)

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT_S)
        except OSError as err:
            self._halt()
            raise UsageError(f"--serve {self.address.host}:{self.address.port}: cannot listen: "
                             f"{err.strerror or err}") from None
        except BaseException:
            self._halt()
            raise
        log.info("view at %s%s", self.url, " (send the token)" if self._token else "")

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._guard])
        app.add_routes([web.get("/", self._page), web.get("/stream.mjpg", self._stream),
                        web.get("/snapshot.jpg", self._snapshot_jpg), web.get("/stats", self._stats),
                        web.get("/metrics", self._metrics_text)])
        self._pictures = Pictures(self.board, self._loop)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_TIMEOUT_S / 2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address.host, self.address.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """End every stream and close the server (within :data:`STOP_TIMEOUT_S`)."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(STOP_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, RuntimeError) as err:
            log.debug("view server stop: %s", err)
        self._halt()

    async def _stop(self) -> None:
        if self._pictures is not None:
            self._pictures.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()   # its selector and wake-up pipe: 3 file descriptors

    def stats(self) -> dict:
        """The run's snapshot with the server's own figures beside it."""
        stats = dict(self._snapshot())
        stats["viewers"] = self.viewers
        return stats

    def report(self) -> dict:
        """For the run's ``--stats``: what serving did and cost."""
        pictures = self._pictures
        return {"url": self.url, "viewers_peak": self.viewers_peak, "requests": self.requests,
                "refused": self.refused, "bytes_sent": self.bytes_sent,
                "jpeg_encoded": pictures.encoded if pictures else 0,
                "jpeg_seconds": round(pictures.encode_seconds, 4) if pictures else 0.0}

    # -- requests ----------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        self.requests += 1
        if self._token is not None and not self._authorised(request):
            self.refused += 1
            return web.Response(status=401, text="401: this view needs its token\n",
                                headers={"WWW-Authenticate": 'Bearer realm="nystra-stream"'})
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        token = self._token.encode()
        header = request.headers.get("Authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else request.query.get("token", "")
        return hmac.compare_digest(given.encode(), token)

    async def _page(self, request: web.Request) -> web.Response:
        page = importlib.resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats(), headers={"Cache-Control": "no-store"})

    async def _metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _snapshot_jpg(self, request: web.Request) -> web.Response:
        view = _view(request)
        posted = self.board.latest()
        if posted is None:
            return web.Response(status=503, text="no frame restored yet\n", headers={"Retry-After": "1"})
        jpeg = await self._pictures.jpeg(posted, view)
        self.bytes_sent += len(jpeg)
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        view = _view(request)
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store", "Pragma": "no-cache"})
        await response.prepare(request)
        self.viewers += 1
        self.viewers_peak = max(self.viewers_peak, self.viewers)
        seen = 0
        try:
            await response.write(f"--{BOUNDARY}\r\n".encode())
            while True:
                posted = await self._pictures.newer(seen)
                if posted is None:
                    break
                jpeg = await self._pictures.jpeg(posted, view)
                seen = posted.version
                # The boundary right after the picture: a browser shows a part once the next begins.
                part = (b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                        + jpeg + f"\r\n--{BOUNDARY}\r\n".encode())
                await response.write(part)   # waits while this viewer's socket is full: only it waits
                self.bytes_sent += len(part)
        except ConnectionError:
            pass   # the viewer went away
        finally:
            self.viewers -= 1
        return response
