"""``nystra-stream models`` and ``--model NAME`` against a real HTTP server on 127.0.0.1 (presets
from ``$NYSTRA_PRESETS``, cache in ``$NYSTRA_HOME``)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from checkpoint_server import refusing_url, server, sha256_of, tiny_swinir_bytes, zoo_env  # noqa: F401
from pipelines import zoo
from pipelines.download import record_path
from streamer.cli import main

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("NAME", "TASK", "ARCH", "LICENCE", "WEIGHTS", "ATTENTION", "DESCRIPTION")
FAST = ["--workers", "0", "--tile", "16", "--tile-overlap", "4", "--preset", "ultrafast"]


def listing(capsys) -> dict:
    """``nystra-stream models`` parsed: {name: {column: value}}, plus the footer text."""
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    table, footer = out.split("\n\n", 1)
    lines = table.splitlines()
    assert tuple(re.split(r"\s{2,}", lines[0].strip())) == COLUMNS
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip(), maxsplit=len(COLUMNS) - 1)
        rows[cells[0]] = dict(zip(COLUMNS, cells))
    rows["footer"] = footer
    return rows


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("nystra-stream: error: ")
    return lines[0]


def test_models_lists_task_arch_licence_and_cache_state(server, zoo_env, capsys):
    name = zoo_env.write_preset("test-tiny-sr2", url=server.add("tiny.safetensors", tiny_swinir_bytes()))
    rows = listing(capsys)
    assert set(rows) - {"footer"} == {p.name for p in zoo.presets()}
    for preset in zoo.presets():
        row = rows[preset.name]
        assert (row["TASK"], row["ARCH"], row["LICENCE"]) == (preset.task, preset.arch, preset.licence_text)
        assert row["DESCRIPTION"] == preset.description
    assert rows["rvrt-vsr-reds"]["LICENCE"] == "CC-BY-NC-4.0 (non-commercial)"
    assert rows["rvrt-vsr-reds"]["ATTENTION"] == "nystrom w2x64x64 m32 T6"
    assert rows["swinir-sr4-df2k"]["ATTENTION"] == "nystrom w32 m16 T2"
    assert rows["uformer-b-sidd"]["WEIGHTS"] == "not cached (manual)"
    assert rows[name]["WEIGHTS"] == "not cached"
    assert str(zoo_env.models) in rows["footer"] and "denoise -> swinir-tiny-denoise" in rows["footer"]
    assert "Non-commercial use only: rvrt-vsr-reds" in rows["footer"]

    zoo.checkpoint_path(name, progress=False)
    assert listing(capsys)[name]["WEIGHTS"] == "cached"


def test_models_with_a_broken_preset_file_is_one_line(zoo_env, capsys):
    (zoo_env.presets / "broken.yaml").write_text("presets:\n  - name: x\n")
    assert main(["models"]) == 2
    assert "broken.yaml" in one_error_line(capsys.readouterr().err)


def test_model_name_end_to_end_then_from_the_cache_offline(server, zoo_env, clip_factory, decode, tmp_path, capsys,
                                                           caplog):
    data = tiny_swinir_bytes(scale=2)
    name = zoo_env.write_preset("test-tiny-sr2", url=server.add("tiny.safetensors", data), licence="CC-BY-NC-4.0",
                                non_commercial=True)
    clip = clip_factory(name="in.mp4", frames=3, width=40, height=24)
    stats_path = tmp_path / "stats.json"
    with caplog.at_level(logging.WARNING):
        code = main([str(clip.path), str(tmp_path / "out.mp4"), "--model", name, "--stats", str(stats_path), *FAST])
    assert code == 0, capsys.readouterr().err
    out = decode(tmp_path / "out.mp4")
    assert (out.width, out.height, len(out.images)) == (80, 48, 3)
    assert json.loads(stats_path.read_text())["model"] == name
    cached = zoo_env.models / "tiny.safetensors"
    assert cached.read_bytes() == data
    assert json.loads(record_path(cached).read_text())["sha256"] == sha256_of(data)
    assert any("non-commercial use only" in r.getMessage() for r in caplog.records)

    server.stop()
    assert main([str(clip.path), str(tmp_path / "again.mp4"), "--model", name, *FAST]) == 0
    assert len(decode(tmp_path / "again.mp4").images) == 3
    assert len(server.requests) == 1


def test_weights_path_works_whatever_the_presets(zoo_env, clip_factory, tmp_path, capsys):
    (zoo_env.presets / "broken.yaml").write_text("not: [valid")
    weights = tmp_path / "tiny.safetensors"
    weights.write_bytes(tiny_swinir_bytes(scale=2))
    clip = clip_factory(name="in.mp4", frames=2, width=32, height=24)
    assert main([str(clip.path), str(tmp_path / "out.mp4"), "--weights", str(weights), *FAST]) == 0, \
        capsys.readouterr().err


def test_model_with_a_wrong_hash_leaves_nothing(server, zoo_env, clip_factory, tmp_path, capsys):
    name = zoo_env.write_preset("test-pinned", url=server.add("tiny.safetensors", tiny_swinir_bytes()),
                                sha256="00" * 32)
    clip = clip_factory(name="in.mp4", frames=2, width=32, height=24)
    assert main([str(clip.path), str(tmp_path / "out.mp4"), "--model", name, *FAST]) == 2
    assert "expected 0000000000000000..." in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out.mp4").exists()
    assert not zoo_env.models.exists() or not any(zoo_env.models.iterdir())


def test_unknown_model_names_the_closest_presets(sample_clip, tmp_path, capsys):
    assert main([str(sample_clip.path), str(tmp_path / "out.mp4"), "--model", "swinir-sr4-df2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "unknown model 'swinir-sr4-df2'" in line and "did you mean swinir-sr4-df2k" in line


def test_offline_and_not_cached_as_a_real_process(zoo_env, sample_clip, tmp_path):
    url = refusing_url("tiny.safetensors")
    name = zoo_env.write_preset("test-offline", url=url)
    env = dict(os.environ, NYSTRA_HOME=str(zoo_env.home), NYSTRA_PRESETS=str(zoo_env.presets))
    done = subprocess.run([sys.executable, "-m", "streamer.cli", str(sample_clip.path), str(tmp_path / "out.mp4"),
                           "--model", name], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert f"fetch {url} and save it as {zoo_env.models / 'tiny.safetensors'}" in line
    assert not (tmp_path / "out.mp4").exists()
