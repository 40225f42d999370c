"""What a finished task records beside its output, and the rule that skips it next time.

A manifest (``.NAME.nystra.json`` next to the output) is written LAST, after the output has been
renamed into place, so a task killed at any moment leaves either no manifest or one that matches
a complete output. It holds the input's identity (size, mtime, a BLAKE2b hash of its content), the
resolved options, the checkpoint's identity and the tool version.

Skip rule: the output exists and the manifest's input size and mtime, options, checkpoint and
version equal today's. Size and mtime decide, not the hash, so that deciding is instant on a large
archive (a rerun of a whole job file must not read every input again); touching an input redoes
its task, as ``make`` would. The hash stays in the manifest as the record of what was restored.
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from typing import Any, Dict, Optional, Tuple

from pipelines import zoo

FORMAT = 1


def manifest_path(output: str) -> str:
    directory, name = os.path.split(os.path.abspath(output))
    return os.path.join(directory, f".{name}.nystra.json")


def tool_version() -> str:
    try:
        return metadata.version("nystra-stream")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def file_stamp(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_identity(options: Dict[str, Any]) -> Dict[str, Any]:
    """The model a task's options name: a preset (name and its checkpoint's sha256 or file stamp)
    or a checkpoint file (its stamp). Nothing is downloaded or loaded."""
    try:
        target = zoo.resolve(options["model"]) if options.get("model") else zoo.default_preset(options.get("task"))
    except Exception as err:   # unknown preset / task: the task itself will report it
        return {"unresolved": " ".join(str(err).split())}
    if isinstance(target, zoo.Preset):
        found: Dict[str, Any] = {"preset": target.name, "sha256": target.sha256}
        if target.sha256 is None and os.path.exists(target.path):
            found.update(file_stamp(str(target.path)))
        return found
    return {"file": os.path.abspath(str(target)), **file_stamp(str(target))}


def expected(input_path: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a manifest that decide a skip, as they are today."""
    return {"format": FORMAT, "input": {"path": os.path.abspath(input_path), **file_stamp(input_path)},
            "options": options, "checkpoint": checkpoint_identity(options), "version": tool_version()}


def decide(input_path: str, output: str, options: Dict[str, Any]) -> Tuple[bool, str]:
    """(skip, why) for one task."""
    if not os.path.exists(output):
        return False, "no output yet"
    try:
        with open(manifest_path(output)) as fh:
            recorded = json.load(fh)
    except (OSError, ValueError):
        return False, "output without a manifest (interrupted or made elsewhere)"
    now = expected(input_path, options)
    recorded_input = {k: v for k, v in recorded.get("input", {}).items() if k != "blake2b"}
    if recorded_input != now["input"]:
        return False, "input changed"
    for key, why in (("options", "options changed"), ("checkpoint", "model changed"),
                     ("version", "tool version changed"), ("format", "manifest format changed")):
        if recorded.get(key) != now[key]:
            return False, why
    return True, "done before, nothing changed"


def write(input_path: str, output: str, options: Dict[str, Any], stats: Optional[Dict[str, Any]] = None) -> None:
    """Record a finished task (atomically; call after the output is in place)."""
    record = expected(input_path, options)
    record["input"]["blake2b"] = content_hash(input_path)
    record["stats"] = stats or {}
    path = manifest_path(output)
    temp = path + ".tmp"
    with open(temp, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True, default=str)
    os.replace(temp, path)


def remove(output: str) -> None:
    try:
        os.remove(manifest_path(output))
    except FileNotFoundError:
        pass
