"""The structure of a job file, checked with pydantic, every error placed at its line.

The option keys are not listed here: they are :func:`streamer.options.option_fields`, so a
new run option is a job-file key the moment it exists (by its long name, ``tile_overlap`` or
``tile-overlap``), with its type, and its choices and lower bound checked by the same function
the CLI uses (:func:`streamer.options.check_option_value`). A job adds its own keys
(:data:`JOB_KEYS`).
"""
from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any, Dict, List, Literal, Mapping, Optional, Type, Union

try:
    import pydantic
except ImportError:  # pragma: no cover - the extra is missing
    pydantic = None

from ..errors import UsageError
from ..options import OptionField, check_option_value, option_fields
from .yamlfile import Located, Loc

TOP_KEYS = ("defaults", "jobs")


def _require_pydantic() -> None:
    if pydantic is None:
        raise UsageError("batch jobs need pydantic: pip install 'nystra-stream[batch]'")


@lru_cache(maxsize=1)
def _job_model() -> Type["pydantic.BaseModel"]:
    class JobKeys(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", strict=True)
        input: Union[str, List[str]]
        output: str
        name: Optional[str] = None
        segments: Union[Literal["auto", "off"], pydantic.PositiveInt, Literal[False]] = "off"
        timeout: Optional[pydantic.PositiveFloat] = None
        retries: pydantic.NonNegativeInt = 0

    return JobKeys


def _value_type(option: OptionField) -> Any:
    return str if option.type is object else option.type   # model: a preset name or a path


@lru_cache(maxsize=1)
def _options_model() -> Type["pydantic.BaseModel"]:
    fields = {o.name: (Optional[_value_type(o)], None) for o in option_fields() if o.flag.in_job_files}
    return pydantic.create_model("RunOptions", __config__=pydantic.ConfigDict(extra="forbid", strict=True),
                                 **fields)


JOB_KEYS = ("input", "output", "name", "segments", "timeout", "retries")


def option_names() -> List[str]:
    return [o.name for o in option_fields() if o.flag.in_job_files]


def _not_in_job_files(name: str) -> Optional[str]:
    """The message for a run option a job file cannot take, or None."""
    if any(o.name == name and not o.flag.in_job_files for o in option_fields()):
        return f"{name} is an option of one interactive run, not of a batch job"
    return None


def validate(located: Located) -> "JobFile":
    """The file's content as a :class:`JobFile`; raises :class:`JobFileError` at the first problem."""
    _require_pydantic()
    data = located.data
    if not isinstance(data, dict):
        raise located.error((), "a job file is a mapping with `jobs:` (and optionally `defaults:`)")
    for key in data:
        if key not in TOP_KEYS:
            raise located.error((key,), _unknown(key, TOP_KEYS))
    defaults = _options(located, ("defaults",), data.get("defaults") or {})
    jobs = data.get("jobs")
    if not isinstance(jobs, list) or not jobs:
        raise located.error(("jobs",), "`jobs:` must be a non-empty list of jobs")
    return JobFile(located, defaults, [_job(located, ("jobs", i), job) for i, job in enumerate(jobs)])


class JobSpec:
    """One validated job: its own keys and its option overrides (long names, underscores)."""

    def __init__(self, loc: Loc, keys: Any, options: Dict[str, Any]) -> None:
        self.loc = loc
        self.inputs: List[str] = [keys.input] if isinstance(keys.input, str) else list(keys.input)
        self.output: str = keys.output
        self.name: Optional[str] = keys.name
        self.segments: Union[str, int] = "off" if keys.segments is False else keys.segments
        self.timeout: Optional[float] = keys.timeout
        self.retries: int = keys.retries
        self.options = options


class JobFile:
    def __init__(self, located: Located, defaults: Dict[str, Any], jobs: List[JobSpec]) -> None:
        self.located, self.defaults, self.jobs = located, defaults, jobs

    @property
    def path(self) -> str:
        return self.located.path


def _job(located: Located, loc: Loc, job: Any) -> JobSpec:
    if not isinstance(job, dict):
        raise located.error(loc, "a job is a mapping with at least `input:` and `output:`")
    names = option_names()
    own, options = {}, {}
    for key, value in job.items():
        name = str(key).replace("-", "_")
        if key in JOB_KEYS:
            own[key] = value
        elif name in names:
            options[key] = value
        else:
            raise located.error(loc + (key,), _not_in_job_files(name) or _unknown(key, JOB_KEYS + tuple(names)))
    keys = _checked(located, loc, _job_model(), own)
    return JobSpec(loc, keys, _options(located, loc, options))


def _options(located: Located, loc: Loc, values: Any) -> Dict[str, Any]:
    if not isinstance(values, Mapping):
        raise located.error(loc, "options must be a mapping of option names to values")
    names = option_names()
    by_name: Dict[str, Any] = {}
    keys: Dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise located.error(loc + (key,), _not_in_job_files(name) or _unknown(key, tuple(names)))
        if name in by_name:
            raise located.error(loc + (key,), f"option {name} is given twice")
        by_name[name], keys[name] = value, key
    checked = _checked(located, loc, _options_model(), by_name, keys)
    out = {}
    for option in option_fields():
        if not option.flag.in_job_files:
            continue
        value = getattr(checked, option.name)
        if option.name in by_name:
            try:
                check_option_value(option, value)
            except UsageError as err:
                raise located.error(loc + (keys[option.name],), str(err)) from None
            out[option.name] = value
    return out


def _checked(located: Located, loc: Loc, model: Any, values: Dict[str, Any],
             keys: Optional[Dict[str, Any]] = None) -> Any:
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = first["loc"]
        field = where[0] if where else None
        field_key = (keys or {}).get(field, field)
        if first["type"] == "missing":
            raise located.error(loc, f"missing `{field}:`") from None
        shown = f"{field_key}: " if field_key is not None else ""
        raise located.error(loc + ((field_key,) if field_key is not None else ()) + tuple(where[1:]),
                            f"{shown}{_describe(first)}") from None


def _describe(error: Mapping[str, Any]) -> str:
    """A pydantic error in a user's words."""
    given = error.get("input")
    text = error["msg"]
    if error["type"].endswith("_type") or error["type"] in ("literal_error", "union_tag_invalid"):
        text = f"{text}, got {given!r}" if not isinstance(given, (dict, list)) else text
    return text[0].lower() + text[1:]


def _unknown(key: Any, known) -> str:
    close = difflib.get_close_matches(str(key).replace("-", "_"), [str(k) for k in known], n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    return f"unknown key {key!r}{hint}"
