"""Downloading checkpoints into the cache: atomic, resumable, sha256-verified; standard library only.

Layout, for a checkpoint cached as ``DEST`` (``<cache>/models/<file>``):

- ``DEST`` appears only once a download is complete and verified (``os.replace`` of the part);
- ``DEST.part`` holds an unfinished download, kept so the next attempt resumes it with an HTTP
  ``Range`` request (``DEST.part.json`` remembers the URL and the server's ``ETag`` /
  ``Last-Modified``, sent back as ``If-Range`` so a file that changed on the server restarts
  cleanly instead of being spliced); a server that ignores ``Range`` answers 200 and the download
  restarts from byte 0;
- ``DEST.json`` records the sha256 of ``DEST``: checked against the preset's own sha256 when it
  has one, recorded at first download (or first use, for a file put there by hand) when it has
  none, and compared with the file on every later use (:func:`verify_cached`).

A download that ends short of its ``Content-Length`` is refused (the part is kept for resuming);
one whose sha256 is not the expected one is refused and deleted.

Where a download may go (:func:`check_url`, for the first URL and every redirect): ``https``
anywhere, plain ``http`` only to this machine (127.0.0.1, ::1, localhost: mirrors and tests). A
redirect elsewhere (another scheme, ``http`` to another host) is refused before it is followed. How
much it may bring: at most ``$NYSTRA_MAX_DOWNLOAD_MB`` (default 4096; the largest released
checkpoint we know of, Uformer-B, is 0.4 GB) — refused from the ``Content-Length`` before the body, or
the moment a server that sends more than it declared passes the cap; the part is deleted. Errors are
:class:`~pipelines.errors.CheckpointError` subclasses with one-line messages; those caused by the
network say which URL to fetch by hand and where to put the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Union

from .errors import CheckpointError

HOME_ENV = "NYSTRA_HOME"
APP_NAME = "nystra-stream"
DEFAULT_TIMEOUT_S = 30.0  # per socket operation (connect, each read), not for the whole file
MAX_DOWNLOAD_ENV = "NYSTRA_MAX_DOWNLOAD_MB"
DEFAULT_MAX_DOWNLOAD_MB = 4096
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_CHUNK = 1 << 20
_USER_AGENT = f"{APP_NAME} (python urllib)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

PathLike = Union[str, os.PathLike]


class DownloadError(CheckpointError):
    """A checkpoint could not be downloaded (network, HTTP status, server behaviour)."""


class IncompleteDownloadError(DownloadError):
    """The connection ended before the whole file arrived; the part is kept for resuming."""


class ChecksumError(CheckpointError):
    """A downloaded or cached file does not have the sha256 it must have."""


class UnsafeDownloadError(DownloadError):
    """A URL or redirect a download must not follow, or a file larger than the cap."""


def check_url(url: str) -> None:
    """Raise :class:`UnsafeDownloadError` unless ``url`` is https, or http to this machine."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host in _LOOPBACK_HOSTS:
        return
    raise UnsafeDownloadError(f"refusing to download from {url}: only https URLs are followed "
                              "(plain http only to this machine)")


def max_download_bytes() -> int:
    """The size cap of one download (``$NYSTRA_MAX_DOWNLOAD_MB``, default 4096 MB)."""
    text = os.environ.get(MAX_DOWNLOAD_ENV, "").strip()
    try:
        megabytes = float(text) if text else DEFAULT_MAX_DOWNLOAD_MB
    except ValueError:
        raise UnsafeDownloadError(f"${MAX_DOWNLOAD_ENV} must be a number of megabytes, got {text!r}") from None
    return int(megabytes * 2**20)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling, but every new location must pass :func:`check_url` first."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("location") or headers.get("uri")
        if location:
            check_url(urllib.parse.urljoin(req.full_url, location))
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_OPENER = urllib.request.build_opener(_SafeRedirects)


# -- where things live ------------------------------------------------------------------------


def cache_root() -> Path:
    """``$NYSTRA_HOME`` if set, else the platform's per-user cache directory + ``nystra-stream``."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / APP_NAME


def models_dir() -> Path:
    """Where downloaded checkpoints are cached."""
    return cache_root() / "models"


def record_path(dest: PathLike) -> Path:
    return Path(f"{os.fspath(dest)}.json")


def part_path(dest: PathLike) -> Path:
    return Path(f"{os.fspath(dest)}.part")


def _part_meta_path(dest: PathLike) -> Path:
    return Path(f"{os.fspath(dest)}.part.json")


def is_sha256(text: str) -> bool:
    return bool(_SHA256.match(text))


# -- hashes -------------------------------------------------------------------------------------


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(dest: PathLike) -> Optional[dict]:
    """The hash record of ``dest``, or None if there is none."""
    path = record_path(dest)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not is_sha256(str(record.get("sha256", ""))):
        raise ChecksumError(f"the hash record {path} is unreadable; delete it and {dest} to download again")
    return record


def write_record(dest: PathLike, sha256: str, size: int, url: Optional[str], how: str) -> None:
    """Atomically (temp file + rename) write the hash record beside ``dest``."""
    record = {"sha256": sha256, "size": size, "url": url, "recorded": how,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json_atomically(record_path(dest), record)


def verify_cached(dest: PathLike, sha256: Optional[str] = None) -> str:
    """Check a cached file against ``sha256`` (if given) and its hash record; return its digest.

    A file with neither (put in the cache by hand) gets its hash recorded now, so that any later
    change to it is caught.
    """
    dest = Path(dest)
    digest = file_sha256(dest)
    if sha256 is not None and digest != sha256:
        raise ChecksumError(f"{dest} has sha256 {digest[:16]}..., expected {sha256[:16]}...: "
                            f"delete it to download it again")
    record = read_record(dest)
    if record is None:
        write_record(dest, digest, dest.stat().st_size, None, "first use" if sha256 is None else "preset")
    elif record["sha256"] != digest:
        raise ChecksumError(f"{dest} changed since its sha256 was recorded ({digest[:16]}... now, "
                            f"{record['sha256'][:16]}... then): delete it to download it again")
    return digest


# -- downloading --------------------------------------------------------------------------------


def fetch(url: str, dest: PathLike, sha256: Optional[str] = None, progress: Optional[bool] = None,
          timeout: float = DEFAULT_TIMEOUT_S, label: Optional[str] = None) -> str:
    """Download ``url`` to ``dest`` atomically; return the file's sha256.

    ``sha256``: the expected digest (lowercase hex); without it the digest is recorded for later
    checks. ``progress``: a tqdm bar on stderr (True), none (False), or only when stderr is a
    terminal (None). ``label`` names the file in messages (default: its file name). Resumes a
    part left by an interrupted download where the server honours ``Range``.
    """
    dest = Path(dest)
    label = label or dest.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent):
        if dest.is_file():  # another process finished it while we waited for the lock
            return verify_cached(dest, sha256)
        part = part_path(dest)
        digest, size = _download(url, dest, part, progress, timeout, label)
        if sha256 is not None and digest != sha256:
            _discard_part(dest)
            raise ChecksumError(f"the download of {label} from {url} has sha256 {digest[:16]}..., "
                                f"expected {sha256[:16]}...: refused, nothing was kept")
        with open(part, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        write_record(dest, digest, size, url, "download")
        os.replace(part, dest)
        _part_meta_path(dest).unlink(missing_ok=True)
    return digest


def manual_hint(url: str, dest: PathLike) -> str:
    return f"fetch {url} and save it as {dest}"


def _download(url: str, dest: Path, part: Path, progress: Optional[bool], timeout: float,
              label: str) -> tuple:
    """Fill ``part`` with the body of ``url`` (resuming if possible); return (sha256, size)."""
    check_url(url)
    cap = max_download_bytes()
    offset = _resumable_offset(url, dest, part)
    meta = _read_part_meta(dest) if offset else {}
    try:
        response = _open(url, offset, meta.get("validator"), timeout)
    except UnsafeDownloadError:
        raise
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part is not a prefix of this file: start over
            _discard_part(dest)
            return _download(url, dest, part, progress, timeout, label)
        raise DownloadError(f"cannot download {label}: {url} answered HTTP {err.code} {err.reason}; "
                            f"{manual_hint(url, dest)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"cannot download {label} ({_one_line(reason)}): {manual_hint(url, dest)}") from None

    with response:
        if response.status == 206 and (not offset or _range_start(response) != offset):
            # A range we did not ask for: the body is not what the part needs. Start over.
            response.close()
            _discard_part(dest)
            if not offset:
                raise DownloadError(f"cannot download {label}: {url} sent a partial answer to a plain "
                                    f"request; {manual_hint(url, dest)}")
            return _download(url, dest, part, progress, timeout, label)
        if response.status != 206:  # the server ignored Range (or the file changed): restart cleanly
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else None
        if expected is not None and expected > cap:
            _discard_part(dest)
            raise UnsafeDownloadError(_too_large(label, url, f"declares {expected} bytes", cap))
        _write_json_atomically(_part_meta_path(dest), {"url": url, "validator": _validator(response)})
        digest = hashlib.sha256()
        if offset:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(block)
        size = offset
        bar = _progress_bar(label, expected, offset, progress)
        try:
            with open(part, "ab" if offset else "wb") as out:
                while True:
                    block = response.read(_CHUNK)
                    if not block:
                        break
                    size += len(block)
                    if size > cap:
                        break
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
            raise IncompleteDownloadError(
                f"the download of {label} from {url} broke off at {size} bytes ({_one_line(err)}); "
                f"run again to resume it from {part}") from None
        finally:
            bar.close()
    if size > cap:
        _discard_part(dest)
        raise UnsafeDownloadError(_too_large(label, url, f"sent more than {cap} bytes", cap))
    if expected is not None and size != expected:
        raise IncompleteDownloadError(
            f"the download of {label} from {url} ended at {size} of {expected} bytes; "
            f"refused (run again to resume it from {part})")
    return digest.hexdigest(), size


def _resumable_offset(url: str, dest: Path, part: Path) -> int:
    """Bytes of a kept part that may be resumed (0 if none, or if it came from another URL)."""
    if not part.is_file():
        return 0
    if _read_part_meta(dest).get("url") != url:
        _discard_part(dest)
        return 0
    return part.stat().st_size


def _open(url: str, offset: int, validator: Optional[str], timeout: float):
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    # urllib follows redirects (GitHub release URLs redirect to a storage host) and keeps these
    # headers across them.
    return _OPENER.open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _too_large(label: str, url: str, what: str, cap: int) -> str:
    return (f"refusing the download of {label} from {url}: it {what}, over the {cap / 2**20:g} MB cap "
            f"(${MAX_DOWNLOAD_ENV} raises it); nothing was kept")


def _range_start(response) -> Optional[int]:
    """The first byte a 206 answer carries (its ``Content-Range``), None if it does not say."""
    found = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(found.group(1)) if found else None


def _validator(response) -> Optional[str]:
    """What to send back as If-Range: a strong ETag, else Last-Modified (weak ETags never match)."""
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def _read_part_meta(dest: Path) -> dict:
    try:
        meta = json.loads(_part_meta_path(dest).read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _discard_part(dest: Path) -> None:
    part_path(dest).unlink(missing_ok=True)
    _part_meta_path(dest).unlink(missing_ok=True)


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _one_line(err) -> str:
    if isinstance(err, socket.timeout) or isinstance(err, TimeoutError):
        return "timed out"
    return " ".join(str(err).split()) or type(err).__name__


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(label: str, total: Optional[int], initial: int, progress: Optional[bool]):
    if progress is False:
        return _NoBar()
    from tqdm import tqdm

    # disable=None: tqdm shows itself only when stderr is a terminal.
    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=None if progress is None else False, dynamic_ncols=True,
                mininterval=0.2)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """One download at a time per cache directory across processes (POSIX ``flock`` on the
    directory itself: no lock file to leave behind, released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the final name sound
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
