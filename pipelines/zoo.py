"""Named model presets: which checkpoint restores which task, where it comes from, how to run it.

The presets are data: YAML files in ``configs/models/`` (shipped in the wheel as
``pipelines/zoo_presets/``), format and validation in :mod:`pipelines.preset_files`. Extra preset
files, e.g. for a private model or a mirror, are read from ``$NYSTRA_PRESETS`` (directories of
``*.yaml`` files or single files, separated by ``os.pathsep``); their names must not clash with
the built-in ones.

Three kinds of preset:

- **bundled**: the small default SwinIRs in ``pipelines/weights`` (trained by
  ``python -m pipelines.weights.train``); ``--task T`` picks the one marked ``default``;
- **download**: official checkpoints fetched into the cache on first use
  (:mod:`pipelines.download`: ``$NYSTRA_HOME`` or the platform cache dir), sha256-verified;
- **manual**: checkpoints the authors share only on a web page; the error says which page to open
  and where to save the file, and from then on it is used (and its hash checked) like a download.

``pipelines.load_model(name)`` (:mod:`pipelines.loading`, which imports this module, never the
other way) runs a preset with its recommended settings (:meth:`Preset.settings`, an
:class:`~pipelines.attention.AttentionSettings`): ``exact`` attention at the trained window,
``nystrom``/``auto`` at the paper's window, landmarks and iterations; every setting can be
overridden.
"""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

from .download import fetch as _fetch
from .download import models_dir, verify_cached
from .errors import CheckpointError
from .preset_files import ARCHITECTURES, PRESET_TASKS, Preset, PresetError, read_preset_file

__all__ = ["Preset", "PresetError", "MissingWeightsError", "ManualDownloadError",
           "UnknownModelError", "PRESET_TASKS", "ARCHITECTURES", "PRESETS", "DEFAULT_FOR_TASK", "TASKS",
           "presets", "get_preset", "has_preset", "default_preset", "resolve", "checkpoint_path",
           "builtin_presets_dir", "models_dir"]

log = logging.getLogger(__name__)

PRESETS_ENV = "NYSTRA_PRESETS"

class MissingWeightsError(CheckpointError):
    """A preset whose checkpoint file is not on this machine."""


class ManualDownloadError(MissingWeightsError):
    """A checkpoint the user must download by hand (the message says from where, to where)."""


class UnknownModelError(CheckpointError):
    """Neither a preset name nor an existing file."""


# -- the registry -------------------------------------------------------------------------------


def builtin_presets_dir() -> Path:
    """``pipelines/zoo_presets`` in an installed package, ``configs/models`` in a source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "zoo_presets", here.parent / "configs" / "models"):
        if candidate.is_dir():
            return candidate
    raise PresetError(f"the built-in model presets are missing (neither {here / 'zoo_presets'} "
                      f"nor {here.parent / 'configs' / 'models'} exists)")


def _yaml_files(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


_builtin_cache: Optional[Tuple[Preset, ...]] = None


def _builtin() -> Tuple[Preset, ...]:
    global _builtin_cache
    if _builtin_cache is None:
        found: List[Preset] = []
        for path in _yaml_files(builtin_presets_dir()):
            found += read_preset_file(path, builtin=True)
        _check_unique(found)
        _check_defaults(found)
        _builtin_cache = tuple(found)
    return _builtin_cache


def _extra_files() -> List[Path]:
    files: List[Path] = []
    for entry in filter(None, os.environ.get(PRESETS_ENV, "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            files += _yaml_files(path)
        elif path.is_file():
            files.append(path)
        else:
            raise PresetError(f"${PRESETS_ENV}: no such file or directory: {path}")
    return files


_registry_cache: Dict[tuple, Dict[str, Preset]] = {}


def _registry() -> Dict[str, Preset]:
    """Built-in presets plus those of ``$NYSTRA_PRESETS``, re-read when those files change."""
    files = _extra_files()
    key = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    if key not in _registry_cache:
        found = list(_builtin())
        for path in files:
            found += read_preset_file(path, builtin=False)
        _check_unique(found)
        _registry_cache.clear()
        _registry_cache[key] = {p.name: p for p in found}
    return _registry_cache[key]


def _check_unique(found: List[Preset]) -> None:
    seen: Dict[str, Preset] = {}
    for preset in found:
        if preset.name in seen:
            raise PresetError(f"preset {preset.name!r} is defined twice: in {seen[preset.name].origin} "
                              f"and in {preset.origin}")
        seen[preset.name] = preset


def _check_defaults(found: List[Preset]) -> None:
    chosen: Dict[str, Preset] = {}
    for preset in found:
        if preset.default:
            if preset.task in chosen:
                raise PresetError(f"two default presets for task {preset.task}: "
                                  f"{chosen[preset.task].name} and {preset.name}")
            chosen[preset.task] = preset


def presets() -> List[Preset]:
    """Every preset, built-in first, in file order."""
    return list(_registry().values())


def has_preset(name: str) -> bool:
    return name in _registry()


def get_preset(name: str) -> Preset:
    registry = _registry()
    if name in registry:
        return registry[name]
    raise _unknown(name, "not a preset name")


def _unknown(name: str, what: str) -> UnknownModelError:
    close = difflib.get_close_matches(name, list(_registry()), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return UnknownModelError(f"unknown model {name!r} ({what}{hint})")


def _defaults() -> Dict[str, str]:
    return {p.task: p.name for p in _builtin() if p.default}


def default_preset(task: str) -> Preset:
    defaults = _defaults()
    if task not in defaults:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(_tasks())})")
    return get_preset(defaults[task])


def _tasks() -> Tuple[str, ...]:
    """The tasks ``--task`` offers: those with a default preset, in PRESET_TASKS order."""
    defaults = _defaults()
    return tuple(task for task in PRESET_TASKS if task in defaults)


class _LiveView(Mapping):
    """A read-only mapping computed on each access (the registry follows ``$NYSTRA_PRESETS``)."""

    def __init__(self, compute) -> None:
        self._compute = compute

    def __getitem__(self, key):
        return self._compute()[key]

    def __iter__(self) -> Iterator:
        return iter(self._compute())

    def __len__(self) -> int:
        return len(self._compute())

    def __repr__(self) -> str:
        return repr(dict(self._compute()))


PRESETS: Mapping[str, Preset] = _LiveView(_registry)
DEFAULT_FOR_TASK: Mapping[str, str] = _LiveView(_defaults)


def __getattr__(name: str):
    # TASKS is read from the preset files on first use, not at import (PEP 562).
    if name == "TASKS":
        return _tasks()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve(name_or_path: Union[str, os.PathLike]) -> Union[Preset, Path]:
    """An existing file as a path; else the preset of that name; else a path (to a missing file).

    A string that looks like a name (no directory, no checkpoint suffix) and is neither raises
    :class:`UnknownModelError`.
    """
    if isinstance(name_or_path, Preset):
        return name_or_path
    text = os.fspath(name_or_path)
    if os.path.exists(text):
        return Path(text)
    looks_like_path = os.sep in text or "/" in text or Path(text).suffix in (".pth", ".pt", ".safetensors")
    if isinstance(name_or_path, str) and not looks_like_path:
        if has_preset(text):
            return get_preset(text)
        raise _unknown(text, "neither a preset name nor a file")
    return Path(text)


# -- getting the checkpoint -----------------------------------------------------------------------


def checkpoint_path(preset: Union[Preset, str], download: bool = True, progress: Optional[bool] = None) -> Path:
    """The preset's checkpoint file, downloaded first if needed and allowed.

    Cached files are checked against the preset's sha256, or the one recorded at download, on
    every call. Raises :class:`MissingWeightsError` (or a download error) when it cannot be had.
    """
    preset = preset if isinstance(preset, Preset) else get_preset(preset)
    path = preset.path
    if preset.available():
        if not preset.bundled:
            verify_cached(path, preset.sha256)
        return path
    if preset.bundled:
        raise MissingWeightsError(
            f"the bundled weights for {preset.name} are not installed "
            f"({path} is missing; train it with python -m pipelines.weights.train --task {preset.task})")
    if preset.source == "manual":
        raise ManualDownloadError(
            f"{preset.name} must be downloaded by hand: open {preset.page}, download the checkpoint "
            f"and save it as {path}")
    if not download:
        raise MissingWeightsError(f"the weights for {preset.name} are not downloaded yet ({path})")
    if preset.non_commercial:
        log.warning("%s is licensed %s: non-commercial use only", preset.name, preset.licence)
    _fetch(preset.url, path, sha256=preset.sha256, progress=progress, label=preset.name)
    return path
