"""Model presets as data: the :class:`Preset` record and the YAML files that hold them.

A preset file (``configs/models/*.yaml``, or one in ``$NYSTRA_PRESETS``) is a mapping::

    defaults:                 # optional: fields every preset below starts from
      arch: swinir
      licence: Apache-2.0
      url: https://example.org/releases/{file}   # "{file}" is replaced by the preset's file
      nystrom: {window: 32, landmarks: 16, iters: 2}
    presets:
      - name: swinir-sr2-df2k
        task: sr2
        file: 001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth
        description: SwinIR-M, bicubic x2 super-resolution, trained on DF2K

Fields (``name``, ``task``, ``arch``, ``file``, ``description``, ``licence`` are required):

- where the checkpoint comes from, exactly one of: ``url`` (downloaded into the cache),
  ``page`` (a web page the user downloads it from by hand, into the cache), ``bundled: true``
  (shipped in ``pipelines/weights``; built-in presets only); ``sha256`` optionally pins it;
- ``licence`` (SPDX-like) and ``non_commercial: true`` for weights that may not be used commercially;
- ``attention``: the kernel the CLI runs when none is given (``exact`` | ``nystrom`` | ``auto``);
- ``nystrom: {window, landmarks, iters}``: the recommended PnP-Nystra settings (``window`` is the
  window Nyström and auto run at: an int, ``[h, w]`` or ``[t, h, w]``; null = the trained one);
  ``exact`` always runs at ``trained_window``, the checkpoint's own (informational here);
- ``default: true`` makes the preset the one ``--task`` picks (built-in presets only);
- ``prefilter``: a whole-frame step the checkpoint was trained behind and runs after
  (``motion-wiener``: :mod:`pipelines.deconvolution`).

Files are read with ``yaml.safe_load`` and validated; every problem is a :class:`PresetError`
whose one-line message names the file and the preset.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from .attention.settings import MODES, RUN_DEFAULT, AttentionSettings, Window
from .deconvolution import PREFILTERS
from .download import is_sha256, models_dir, part_path
from .errors import CheckpointError
from .weights import WEIGHTS_DIR

# Every task a preset may restore; ``nystra-stream --task`` offers those with a default preset.
PRESET_TASKS: Dict[str, str] = {
    "denoise": "noise removal (Gaussian or real camera noise)",
    "deblur": "blur removal (Gaussian, motion)",
    "sr2": "x2 super-resolution",
    "sr3": "x3 super-resolution",
    "sr4": "x4 super-resolution",
    "sr8": "x8 super-resolution",
    "jpeg": "JPEG compression artifact removal",
    "vsr": "x4 video super-resolution",
    "video-deblur": "video deblurring",
    "video-denoise": "video denoising (needs the noise level)",
}
ARCHITECTURES = ("swinir", "uformer", "rvrt")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REQUIRED = ("name", "task", "arch", "file", "description", "licence")
_KNOWN = set(_REQUIRED) | {"url", "page", "bundled", "sha256", "non_commercial", "attention", "nystrom",
                           "trained_window", "default", "prefilter"}
_NYSTROM_KEYS = ("window", "landmarks", "iters")


class PresetError(CheckpointError):
    """A preset file that cannot be used; the message names the file and the preset."""


@dataclass(frozen=True)
class Preset:
    """A named checkpoint: what it restores, where it comes from, how to run it."""

    name: str
    task: str                       # a key of PRESET_TASKS
    arch: str                       # architecture name (``pipelines.models`` NAME)
    file: str                       # file name under WEIGHTS_DIR (bundled) or the download cache
    description: str
    attention: str = RUN_DEFAULT.mode        # the kernel the CLI runs by default
    landmarks: int = RUN_DEFAULT.landmarks   # recommended Nyström settings ...
    iters: int = RUN_DEFAULT.iters
    window: Optional[Window] = None  # ... and the window they run at (None: the trained window)
    url: Optional[str] = None       # downloaded from here ...
    sha256: Optional[str] = None    # ... and verified against this (else recorded at download)
    licence: str = ""
    non_commercial: bool = False
    page: Optional[str] = None      # manual download: the page to get the file from
    trained_window: Optional[Window] = None
    default: bool = False           # what ``--task`` picks for this task
    prefilter: Optional[str] = None  # whole-frame step before the model (pipelines.deconvolution)
    origin: str = ""                # the YAML file it was read from

    @property
    def source(self) -> str:
        """``bundled`` (package data), ``download`` (fetched from ``url``) or ``manual`` (``page``)."""
        if self.url is not None:
            return "download"
        return "manual" if self.page is not None else "bundled"

    @property
    def bundled(self) -> bool:
        return self.source == "bundled"

    @property
    def path(self) -> Path:
        """Where the checkpoint is (bundled) or goes (cache: ``$NYSTRA_HOME/models``)."""
        return WEIGHTS_DIR / self.file if self.bundled else models_dir() / self.file

    def available(self) -> bool:
        path = self.path
        return path.is_file() and path.stat().st_size > 0

    def status(self) -> str:
        """``bundled`` / ``cached`` / ``partial`` (a download to resume) / ``missing``."""
        if self.available():
            return "bundled" if self.bundled else "cached"
        if not self.bundled and part_path(self.path).is_file():
            return "partial"
        return "missing"

    @property
    def licence_text(self) -> str:
        return f"{self.licence} (non-commercial)" if self.non_commercial else self.licence

    def settings(self, attention: Optional[str] = None, landmarks: Optional[int] = None,
                 iters: Optional[int] = None, window: Optional[Window] = None) -> AttentionSettings:
        """The preset's recommendations with the caller's overrides (None = the preset's).

        ``exact`` runs at the trained window; ``nystrom`` and ``auto`` (which picks Nyström
        where it is faster) at the preset's Nyström window, the paper's setting.
        """
        mode = attention or self.attention
        if window is None and mode != "exact":
            window = self.window
        return AttentionSettings(mode, self.landmarks, self.iters).override(
            landmarks=landmarks, iters=iters, window=window)


# -- reading files ------------------------------------------------------------------------------


def read_preset_file(path: Union[str, os.PathLike], builtin: bool = False) -> List[Preset]:
    """The presets of one YAML file, validated (``builtin``: may use ``bundled`` and ``default``)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PresetError(f"{path}: cannot read preset file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise PresetError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(document, dict) or not isinstance(document.get("presets"), list) or not document["presets"]:
        raise PresetError(f"{path}: expected a mapping with a non-empty 'presets' list")
    unknown = set(document) - {"defaults", "presets"}
    if unknown:
        raise PresetError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} "
                          "(expected 'defaults' and 'presets')")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise PresetError(f"{path}: 'defaults' must be a mapping")
    found = []
    for i, entry in enumerate(document["presets"]):
        label = f"{path}: presets[{i}]"
        if not isinstance(entry, dict):
            raise PresetError(f"{label}: expected a mapping of fields")
        if isinstance(entry.get("name"), str):
            label = f"{path}: preset {entry['name']!r}"
        merged = {**defaults, **entry}
        if isinstance(defaults.get("nystrom"), dict) and isinstance(entry.get("nystrom"), dict):
            merged["nystrom"] = {**defaults["nystrom"], **entry["nystrom"]}
        try:
            found.append(_preset_from_fields(merged, builtin, str(path)))
        except ValueError as err:
            raise PresetError(f"{label}: {err}") from None
    return found


def _preset_from_fields(fields: Dict[str, Any], builtin: bool, origin: str) -> Preset:
    unknown = set(fields) - _KNOWN
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                         f"(known: {', '.join(sorted(_KNOWN))})")
    missing = [key for key in _REQUIRED if fields.get(key) in (None, "")]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    text = {key: _string(fields, key) for key in _REQUIRED}
    if not _NAME.match(text["name"]):
        raise ValueError("name must be lowercase letters, digits, '.', '_' or '-' (not a path)")
    if text["task"] not in PRESET_TASKS:
        raise ValueError(f"unknown task {text['task']!r} (choose from {', '.join(PRESET_TASKS)})")
    if text["arch"] not in ARCHITECTURES:
        raise ValueError(f"unknown arch {text['arch']!r} (choose from {', '.join(ARCHITECTURES)})")
    file = text["file"]
    if os.path.basename(file) != file or "\\" in file or file.startswith("."):
        raise ValueError(f"file must be a plain file name, got {file!r}")
    if not file.endswith(CHECKPOINT_SUFFIXES):
        raise ValueError(f"file must end in {', '.join(CHECKPOINT_SUFFIXES)}, got {file!r}")

    url = _optional_url(fields, "url")
    url = url.replace("{file}", file) if url else None
    page = _optional_url(fields, "page")
    bundled = _flag(fields, "bundled")
    if (url is not None) + (page is not None) + bundled != 1:
        raise ValueError("give exactly one of url (download), page (manual download) or bundled: true")
    if bundled and not builtin:
        raise ValueError("bundled: true is only for the built-in presets (use url or page)")
    default = _flag(fields, "default")
    if default and not builtin:
        raise ValueError("default: true is only for the built-in presets")
    sha256 = fields.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not is_sha256(sha256.lower()):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        sha256 = sha256.lower()
    attention = fields.get("attention", RUN_DEFAULT.mode)
    if attention not in MODES:
        raise ValueError(f"unknown attention {attention!r} (choose from {', '.join(MODES)})")
    nystrom = fields.get("nystrom") or {}
    if not isinstance(nystrom, dict) or set(nystrom) - set(_NYSTROM_KEYS):
        raise ValueError(f"nystrom must be a mapping of {', '.join(_NYSTROM_KEYS)}")
    landmarks = _integer(nystrom.get("landmarks", RUN_DEFAULT.landmarks), "nystrom.landmarks", minimum=1)
    iters = _integer(nystrom.get("iters", RUN_DEFAULT.iters), "nystrom.iters", minimum=0)
    prefilter = fields.get("prefilter")
    if prefilter is not None and prefilter not in PREFILTERS:
        raise ValueError(f"unknown prefilter {prefilter!r} (choose from {', '.join(PREFILTERS)})")
    return Preset(
        name=text["name"], task=text["task"], arch=text["arch"], file=file, description=text["description"],
        attention=attention, landmarks=landmarks, iters=iters,
        window=_window(nystrom.get("window"), "nystrom.window"),
        url=url, sha256=sha256, licence=text["licence"], non_commercial=_flag(fields, "non_commercial"),
        page=page, trained_window=_window(fields.get("trained_window"), "trained_window"),
        default=default, prefilter=prefilter, origin=origin)


def _string(fields: Dict[str, Any], key: str) -> str:
    value = fields[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string")
    return " ".join(value.split())


def _optional_url(fields: Dict[str, Any], key: str) -> Optional[str]:
    value = fields.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+/\S*$", value):
        raise ValueError(f"{key} must be an http(s) URL, got {value!r}")
    return value


def _flag(fields: Dict[str, Any], key: str) -> bool:
    value = fields.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value


def _integer(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _window(value: Any, key: str) -> Optional[Window]:
    """None, W, or [h, w] / [t, h, w] (a tuple)."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) in (2, 3):
        return tuple(_integer(v, key, minimum=1) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _integer(value, key, minimum=1)
    raise ValueError(f"{key} must be an integer, [h, w] or [t, h, w], got {value!r}")
