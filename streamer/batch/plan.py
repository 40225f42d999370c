"""From a validated job file to the list of tasks, with every check across jobs done first.

A job's ``input`` is a path, a glob, a directory (its files, not hidden ones, sorted) or a list
of those, relative to the job file. Its ``output`` is a path or a template (:data:`TEMPLATE_FIELDS`)
filled per input. Checked before anything runs, each at the job's line: a glob or directory
that matches nothing, a template field that does not exist, several inputs of one job writing one
path (no template), two tasks writing one output, an output that is an input.
"""
from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from ..errors import UsageError
from .schema import JobFile, JobSpec
from .yamlfile import JobFileError

TEMPLATE_FIELDS = ("stem", "name", "ext", "parent", "task", "model")


@dataclass
class Task:
    """One input of one job: what a child process restores."""

    name: str
    input: str
    output: str
    options: Dict[str, Any]
    segments: Union[str, int] = "off"
    timeout: Optional[float] = None
    retries: int = 0
    line: int = 0
    part_of: Optional["Task"] = None   # a segment of this task (written to a part file, no manifest)

    def to_dict(self) -> Dict[str, Any]:
        """What the task process gets: ``options`` may be adjusted to its core share by the executor;
        ``recorded_options`` are the job file's, which the manifest records."""
        return {"name": self.name, "input": self.input, "output": self.output, "options": dict(self.options),
                "recorded_options": self.options, "timeout": self.timeout, "retries": self.retries,
                "manifest": self.part_of is None}


def plan(jobs: JobFile, only: Sequence[str] = ()) -> List[Task]:
    base = Path(jobs.path).resolve().parent
    tasks: List[Task] = []
    for number, job in enumerate(jobs.jobs):
        inputs = _inputs(jobs, job, base)
        job_name = job.name or (Path(inputs[0]).stem if len(inputs) == 1 else f"job{number + 1}")
        options = {**jobs.defaults, **job.options}
        outputs = [_output(jobs, job, base, path, options) for path in inputs]
        if len(inputs) > 1 and len(set(outputs)) < len(outputs):
            raise jobs.located.error(job.loc + ("output",), f"{len(inputs)} inputs would all be written to "
                                     f"{outputs[0]}: use a template such as {{stem}}")
        for path, output in zip(inputs, outputs):
            name = job_name if len(inputs) == 1 else f"{job_name}/{Path(path).stem}"
            tasks.append(Task(name, path, output, dict(options), job.segments, job.timeout, job.retries,
                              jobs.located.line(job.loc)))
    _check_across(jobs, tasks)
    if only:
        unknown = [n for n in only if not any(_selected(t.name, n) for t in tasks)]
        if unknown:
            names = ", ".join(t.name for t in tasks)
            raise UsageError(f"--only {unknown[0]}: no such job in {jobs.path} (jobs: {names})")
        tasks = [t for t in tasks if any(_selected(t.name, n) for n in only)]
    return tasks


def _selected(task_name: str, wanted: str) -> bool:
    return task_name == wanted or task_name.startswith(wanted + "/")


def _inputs(jobs: JobFile, job: JobSpec, base: Path) -> List[str]:
    found: List[str] = []
    for i, pattern in enumerate(job.inputs):
        loc = job.loc + ("input",) + ((i,) if len(job.inputs) > 1 else ())
        path = base / os.path.expanduser(pattern)
        if glob.has_magic(str(pattern)):
            matches = sorted(p for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
            if not matches:
                raise jobs.located.error(loc, f"input {pattern!r} matches no file")
        elif path.is_dir():
            matches = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not matches:
                raise jobs.located.error(loc, f"input directory {pattern!r} has no files")
        elif path.exists():
            matches = [str(path)]
        else:
            raise jobs.located.error(loc, f"input {pattern!r} does not exist")
        found.extend(os.path.normpath(m) for m in matches if os.path.normpath(m) not in found)
    return found


def _output(jobs: JobFile, job: JobSpec, base: Path, path: str, options: Dict[str, Any]) -> str:
    p = Path(path)
    values = {"stem": p.stem, "name": p.name, "ext": p.suffix.lstrip("."), "parent": str(p.parent),
              "task": str(options.get("task") or "custom"), "model": _model_name(options)}
    loc = job.loc + ("output",)
    for _, field_name, _, _ in string.Formatter().parse(job.output):
        if field_name is not None and field_name not in TEMPLATE_FIELDS:
            raise jobs.located.error(loc, f"unknown template field {{{field_name}}} in output "
                                     f"(fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)})")
    try:
        text = job.output.format(**values)
    except (ValueError, IndexError) as err:
        raise jobs.located.error(loc, f"bad output template {job.output!r}: {err}") from None
    return os.path.normpath(str(base / os.path.expanduser(text)))


def _model_name(options: Dict[str, Any]) -> str:
    model = options.get("model")
    if model is None:
        return f"{options.get('task') or 'default'}"
    return Path(str(model)).stem


def _check_across(jobs: JobFile, tasks: List[Task]) -> None:
    inputs = {os.path.realpath(t.input): t for t in tasks}
    seen: Dict[str, Task] = {}
    for task in tasks:
        real = os.path.realpath(task.output)
        if real in inputs:
            raise _at(jobs, task, f"output {task.output} is an input (of {inputs[real].name})")
        if real in seen:
            raise _at(jobs, task, f"{task.name} and {seen[real].name} both write {task.output}")
        seen[real] = task


def _at(jobs: JobFile, task: Task, message: str):
    return JobFileError(jobs.path, task.line, message)
