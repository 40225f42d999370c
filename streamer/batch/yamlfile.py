"""A job file read safely, keeping where each value came from.

``yaml.safe_load`` gives plain data but forgets the lines; error messages must say
``JOBS.yaml:LINE: message``. So the file is composed into nodes first (their marks hold the lines),
then constructed with the safe constructor, which refuses Python tags (``!!python/object``) with
the tag's own line. :class:`Located` maps a path of keys and indexes (``("jobs", 2, "input")``) to
the line of that value, or of the nearest enclosing one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import yaml

from ..errors import UsageError

Loc = Tuple[Union[str, int], ...]


class JobFileError(UsageError):
    """A problem in a job file, with its place: ``str(err)`` is ``FILE:LINE: message``."""

    def __init__(self, path: Union[str, Path], line: int, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{self.path}:{line}: {message}")


@dataclass
class Located:
    """The file's data and the line of every value in it (1-based)."""

    path: str
    data: Any
    lines: Dict[Loc, int] = field(default_factory=dict)
    key_lines: Dict[Loc, int] = field(default_factory=dict)   # line of a mapping key itself

    def line(self, loc: Loc) -> int:
        """The line of ``loc``, or of its nearest enclosing value that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.key_lines:
                return self.key_lines[loc]
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def error(self, loc: Loc, message: str) -> JobFileError:
        return JobFileError(self.path, self.line(loc), message)


def load(path: Union[str, Path]) -> Located:
    """Read ``path``; raises :class:`JobFileError` for unreadable files, YAML syntax errors and
    tags that would construct Python objects."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"job file not found: {shown}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read job file {shown}: {err}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(str(err.problem or err.context or "invalid YAML").split())
        if isinstance(err, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = f"{problem} (job files hold plain data only)"
        raise JobFileError(shown, (mark.line + 1) if mark else 1, problem) from None
    except yaml.YAMLError as err:
        raise JobFileError(shown, 1, " ".join(str(err).split())) from None
    finally:
        loader.dispose()
    located = Located(shown, data)
    if node is not None:
        _walk(node, (), located)
    return located


def _walk(node: yaml.Node, loc: Loc, out: Located) -> None:
    out.lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            out.key_lines[loc + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, loc + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), out)
