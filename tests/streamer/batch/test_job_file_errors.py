"""Bad job files: each is refused before anything runs, with ``FILE:LINE: message``, exit 2, and
nothing written (issue 15, acceptance 2)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streamer import cli


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "a.mp4").write_bytes(b"not read before the plan is checked")
    (tmp_path / "b.mp4").write_bytes(b"x")
    return tmp_path


CASES = {
    "syntax error": ("jobs:\n  - input: a.mp4\n    output: [out.mp4\n", 4, "expected"),
    "unknown key with a suggestion": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    tile-overlab: 8\n", 4,
                                      "unknown key 'tile-overlab' (did you mean tile_overlap"),
    "unknown top-level key": ("job:\n  - input: a.mp4\n", 1, "unknown key 'job' (did you mean jobs?)"),
    "wrong type": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    tile: big\n", 4, "tile: "),
    "wrong type in defaults": ("defaults:\n  crf: [1]\njobs:\n  - input: a.mp4\n    output: o.mp4\n", 2, "crf: "),
    "a value below its minimum": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    workers: -1\n", 4,
                                  "--workers must be >= 0"),
    "an unknown choice": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    attention: fast\n", 4,
                          "unknown attention 'fast'"),
    "missing field": ("jobs:\n  - input: a.mp4\n    task: denoise\n", 2, "missing `output:`"),
    "a glob that matches nothing": ("jobs:\n  - input: 'nothing/*.mov'\n    output: '{stem}.mkv'\n", 2,
                                    "matches no file"),
    "an input that does not exist": ("jobs:\n  - input: gone.mp4\n    output: o.mp4\n", 2, "does not exist"),
    "a template field that does not exist": ("jobs:\n  - input: a.mp4\n    output: '{title}.mkv'\n", 3,
                                             "unknown template field {title}"),
    "two jobs writing one output": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n  - input: b.mp4\n"
                                    "    output: o.mp4\n", 4, "both write"),
    "an output that is an input": ("jobs:\n  - input: a.mp4\n    output: b.mp4\n  - input: b.mp4\n"
                                   "    output: c.mp4\n", 2, "is an input"),
    "many inputs into one file": ("jobs:\n  - input: '*.mp4'\n    output: all.mkv\n", 3, "use a template"),
    "a python tag": ("jobs:\n  - input: a.mp4\n    output: !!python/object/apply:os.system ['touch pwned']\n", 3,
                     "job files hold plain data only"),
    "bad segments": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    segments: many\n", 4, "segments: "),
    "jobs not a list": ("jobs: a.mp4\n", 1, "must be a non-empty list"),
    "a one-run option in a job": ("jobs:\n  - input: a.mp4\n    output: o.mp4\n    serve: 8080\n", 4,
                                  "serve is an option of one interactive run"),
    "a one-run option in defaults": ("defaults:\n  serve-token: abcdefghij\njobs:\n  - input: a.mp4\n"
                                     "    output: o.mp4\n", 2, "serve_token is an option of one interactive run"),
}


@pytest.mark.parametrize("text,line,message", CASES.values(), ids=list(CASES))
def test_bad_job_file(inputs: Path, capsys, text: str, line: int, message: str):
    jobs = inputs / "jobs.yaml"
    jobs.write_text(text)
    before = sorted(p.name for p in inputs.iterdir())
    code = cli.main(["batch", str(jobs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"nystra-stream: error: {jobs}:{line}: "), err
    assert message in err[0], err
    assert sorted(p.name for p in inputs.iterdir()) == before, "nothing written"
