"""The model zoo (pipelines/zoo.py, configs/models/*.yaml): a preset per released checkpoint with
the right task, source, licence and the paper's settings; strict validation of preset files;
name resolution and settings in load_model; the presets ship in the wheel."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from checkpoint_server import server, tiny_swinir_bytes, torch_bytes, zoo_env  # noqa: F401
from pipelines import CheckpointError, load_model, zoo
from pipelines.attention import AttentionSettings
from pipelines.attention.module import WindowAttentionBase
from pipelines.models import rvrt_loading, swinir_loading, uformer_loading
from pipelines.models.rvrt_blocks import relative_position_index
from pipelines.preset_files import PRESET_TASKS, PresetError, read_preset_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("NYSTRA_FIXTURES", "/work/shared/fixtures"))
SWINIR_RELEASED = FIXTURES / "swinir_released_keys.json"
needs_fixtures = pytest.mark.skipif(not SWINIR_RELEASED.exists(), reason="reference fixtures not available")
UFORMER_MIRROR = Path("/work/.mirror/ZhendongWang6+Uformer/repo")


def builtin(arch: str) -> list:
    return [p for p in zoo.presets() if p.arch == arch and not p.bundled]


def meta_state_dict(shapes: dict) -> dict:
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


# -- the built-in presets against the released checkpoints ---------------------------------------


def test_a_preset_per_released_checkpoint():
    assert len(builtin("swinir")) == 27 and len(builtin("uformer")) == 2 and len(builtin("rvrt")) == 6
    assert all(p.source == "download" for p in builtin("swinir") + builtin("rvrt"))
    assert all(p.source == "manual" and p.url is None for p in builtin("uformer"))
    for preset in builtin("swinir"):
        assert preset.url == f"https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/{preset.file}"
    for preset in builtin("rvrt"):
        assert preset.url == f"https://github.com/JingyunLiang/RVRT/releases/download/v0.0/{preset.file}"
    files = [p.file for p in zoo.presets()]
    assert len(set(files)) == len(files), "two presets would share a cache file"


@needs_fixtures
def test_swinir_presets_match_the_released_files():
    released = json.loads(SWINIR_RELEASED.read_text())
    by_file = {p.file: p for p in builtin("swinir")}
    assert set(by_file) == set(released)
    for file, entry in released.items():
        preset, config = by_file[file], swinir_loading.infer_config(meta_state_dict(entry["keys"]))
        expected_task = (f"sr{config.upscale}" if config.upscale > 1
                         else "jpeg" if config.window_size == 7 else "denoise")
        assert preset.task == expected_task, file
        assert preset.trained_window == config.window_size, file
        assert ("greyscale" in preset.description) == (config.in_chans == 1), file


@needs_fixtures
def test_rvrt_presets_match_the_released_files():
    for preset in builtin("rvrt"):
        shapes = json.loads((FIXTURES / f"rvrt_{Path(preset.file).stem}_keys.json").read_text())
        # Floats as shapes only; the index buffers hold the trained (2, 8, 8) / (1, 8, 8) windows.
        index = {128: relative_position_index((2, 8, 8)), 64: relative_position_index((1, 8, 8))}
        sd = {k: index[s[0]] if k.endswith("relative_position_index") else torch.empty(s, device="meta")
              for k, s in shapes.items()}
        config = rvrt_loading.infer_config(sd)
        assert preset.task == config.task, preset.name
        assert preset.trained_window == config.window_size, preset.name


@needs_fixtures
def test_uformer_presets_match_the_released_layout():
    shapes = json.loads((FIXTURES / "uformer_B_keys.json").read_text())["keys"]
    config = uformer_loading.infer_config(meta_state_dict(shapes))
    assert {p.task for p in builtin("uformer")} == {"denoise", "deblur"}
    assert all(p.trained_window == config.win_size for p in builtin("uformer"))


@pytest.mark.skipif(not UFORMER_MIRROR.exists(), reason="official Uformer mirror not available")
def test_uformer_pages_are_the_official_readme_links():
    readme = subprocess.run(["git", "-C", str(UFORMER_MIRROR), "show", "HEAD:README.md"], capture_output=True,
                            text=True, check=True).stdout
    for preset in builtin("uformer"):
        assert f"({preset.page})" in readme, preset.name


def test_licences_and_non_commercial_flag():
    assert {p.licence for p in builtin("swinir")} == {"Apache-2.0"}
    assert {p.licence for p in builtin("uformer")} == {"MIT"}
    assert {(p.licence, p.non_commercial) for p in builtin("rvrt")} == {("CC-BY-NC-4.0", True)}
    assert all("non-commercial" in p.licence_text for p in builtin("rvrt"))
    assert not any(p.non_commercial for p in zoo.presets() if p.arch != "rvrt")


def test_paper_settings_are_the_recommended_nystrom_settings():
    for preset in builtin("swinir"):
        assert (preset.window, preset.landmarks, preset.iters) == (32, 16, 2), preset.name
    for preset in builtin("rvrt"):
        assert (preset.window, preset.landmarks, preset.iters) == ((2, 64, 64), 32, 6), preset.name
    for preset in builtin("uformer"):
        assert preset.window == 32 and preset.landmarks in (16, 32) and 1 <= preset.iters <= 6, preset.name
    for preset in zoo.presets():
        run = preset.settings("exact")
        assert run.window is None  # exact runs at the trained window
        assert preset.settings("nystrom").window == preset.window
        assert preset.settings("auto").window == preset.window


def test_defaults_are_the_bundled_models_and_define_the_tasks():
    assert zoo.TASKS == ("denoise", "deblur", "sr2", "sr4", "vsr", "video-deblur", "video-denoise")
    for task in zoo.TASKS:
        preset = zoo.default_preset(task)
        assert preset.task == task and zoo.DEFAULT_FOR_TASK[task] == preset.name
        # Per-frame tasks run the bundled models; video tasks the official RVRT (downloaded).
        assert preset.bundled == (task in ("denoise", "deblur", "sr2", "sr4")), task
        assert preset.arch == ("swinir" if preset.bundled else "rvrt"), task
    assert {p.task for p in zoo.presets()} <= set(PRESET_TASKS)
    assert {"vsr", "video-deblur", "video-denoise"} <= {p.task for p in zoo.presets()}
    with pytest.raises(ValueError, match="unknown task"):
        zoo.default_preset("colorize")


# -- settings and loading -------------------------------------------------------------------------


def test_settings_prefer_the_callers_values():
    preset = zoo.get_preset("rvrt-vsr-reds")
    assert preset.settings() == AttentionSettings("nystrom", 32, 6, (2, 64, 64))
    assert preset.settings("exact") == AttentionSettings("exact", 32, 6, None)
    assert preset.settings("exact", window=16).window == 16
    assert preset.settings("nystrom", landmarks=8, iters=0, window=(2, 32, 32)) == \
        AttentionSettings("nystrom", 8, 0, (2, 32, 32))


def attention_layers(model) -> list:
    return [m for m in model.modules() if isinstance(m, WindowAttentionBase)]


def test_load_model_by_name_applies_the_preset_settings(server, zoo_env):
    url = server.add("tiny.safetensors", tiny_swinir_bytes(window=8))
    name = zoo_env.write_preset("test-tiny", url=url, nystrom={"window": 16, "landmarks": 4, "iters": 1},
                                trained_window=8)
    exact = load_model(name)  # the Python default: exact, at the trained window
    assert exact.info.size_multiple == 8
    assert {m.attention_mode for m in attention_layers(exact)} == {"exact"}

    nystrom = load_model(name, attention="nystrom")
    assert nystrom.info.size_multiple == 16
    assert {(m.attention_mode, m.landmarks, m.iters) for m in attention_layers(nystrom)} == {("nystrom", 4, 1)}

    preset_default = load_model(name, attention=None)  # the preset's own kernel (nystrom)
    assert {m.attention_mode for m in attention_layers(preset_default)} == {"nystrom"}

    overridden = load_model(name, attention="nystrom", window=8, landmarks=16, iters=3)
    assert overridden.info.size_multiple == 8
    assert {(m.landmarks, m.iters) for m in attention_layers(overridden)} == {(16, 3)}


def test_preset_task_reaches_the_model_info(zoo_env):
    from pipelines.models.uformer import Uformer, UformerConfig

    model = Uformer(UformerConfig(embed_dim=4, depths=(1, 2, 2, 2, 2, 2, 2, 2, 1)))
    name = zoo_env.write_preset("test-uformer-deblur", task="deblur", arch="uformer", file="uformer_tiny.pth",
                                page="https://example.org/uformer")
    dest = zoo_env.models / "uformer_tiny.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(torch_bytes({"epoch": 1, "state_dict": model.state_dict()}))  # put there by hand
    loaded = load_model(name)
    assert loaded.info.arch == "uformer" and loaded.info.task == "deblur"
    assert load_model(dest).info.task == "denoise"  # the same file, without the preset


def test_a_preset_whose_file_is_another_architecture_is_refused(zoo_env, server):
    name = zoo_env.write_preset("test-wrong-arch", arch="rvrt", task="vsr",
                                url=server.add("tiny.safetensors", tiny_swinir_bytes()))
    with pytest.raises(CheckpointError, match="is a swinir model, the preset says rvrt"):
        load_model(name)


def test_the_bundled_deblurrer_runs_behind_its_prefilter():
    """It was trained on what the motion-Wiener prefilter leaves; the preset says so, and the
    loaded model carries it to whoever feeds it (Restorer, streamer)."""
    prefilters = {p.task: p.prefilter for p in zoo.presets() if p.bundled}
    assert prefilters == {"denoise": None, "deblur": "motion-wiener", "sr2": None, "sr4": None}
    assert load_model("swinir-tiny-deblur").info.prefilter == "motion-wiener"
    assert load_model("swinir-tiny-denoise").info.prefilter is None
    # the file alone does not say it (a checkpoint is weights; the preset is how to run them)
    assert load_model(zoo.checkpoint_path(zoo.get_preset("swinir-tiny-deblur"))).info.prefilter is None


def test_resolve_paths_first_then_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(zoo.resolve("swinir-tiny-sr2"), zoo.Preset)
    Path("swinir-tiny-sr2").write_bytes(b"a file that happens to have a preset's name")
    assert zoo.resolve("swinir-tiny-sr2") == Path("swinir-tiny-sr2")
    assert zoo.resolve("missing/model.pth") == Path("missing/model.pth")  # load reports it missing
    assert zoo.resolve(Path("rvrt-vsr-reds")) == Path("rvrt-vsr-reds")  # a Path is never a name
    with pytest.raises(zoo.UnknownModelError) as err:
        zoo.resolve("swinir-sr2-df2")
    assert "neither a preset name nor a file" in str(err.value) and "swinir-sr2-df2k" in str(err.value)
    with pytest.raises(zoo.UnknownModelError):
        load_model("no-such-model")


# -- preset files: $NYSTRA_PRESETS and validation ---------------------------------------------------


def test_extra_presets_follow_the_environment(zoo_env, monkeypatch):
    name = zoo_env.write_preset("test-extra", url="https://example.org/tiny.safetensors")
    assert name in zoo.PRESETS and zoo.has_preset(name)
    zoo_env.write_preset("test-extra", url="https://example.org/tiny.safetensors", sha256="cd" * 32)
    assert zoo.get_preset(name).sha256 == "cd" * 32  # an edited file is re-read
    monkeypatch.delenv("NYSTRA_PRESETS")
    assert name not in zoo.PRESETS
    monkeypatch.setenv("NYSTRA_PRESETS", str(zoo_env.presets / "test-extra.yaml"))  # a single file works too
    assert zoo.has_preset(name)
    monkeypatch.setenv("NYSTRA_PRESETS", str(zoo_env.presets / "nowhere"))
    with pytest.raises(PresetError, match="NYSTRA_PRESETS: no such file or directory"):
        zoo.presets()


GOOD = ("name: test-x\n    task: sr2\n    arch: swinir\n    file: x.pth\n    description: d\n"
        "    licence: MIT\n    url: https://example.org/{file}\n")

BAD_FILES = {
    "syntax": ("presets: [\n", "not valid YAML at line"),
    "not-a-mapping": ("- a\n- b\n", "expected a mapping with a non-empty 'presets' list"),
    "top-level-key": ("preset: []\npresets:\n  - " + GOOD, "unknown top-level key(s) preset"),
    "unknown-field": ("presets:\n  - " + GOOD + "    windw: 32\n", "unknown field(s) windw"),
    "missing-licence": ("presets:\n  - " + GOOD.replace("    licence: MIT\n", ""), "missing field(s) licence"),
    "task": ("presets:\n  - " + GOOD.replace("task: sr2", "task: colorize"), "unknown task 'colorize'"),
    "arch": ("presets:\n  - " + GOOD.replace("arch: swinir", "arch: edsr"), "unknown arch 'edsr'"),
    "name": ("presets:\n  - " + GOOD.replace("name: test-x", "name: ../Test"), "name must be lowercase"),
    "file-path": ("presets:\n  - " + GOOD.replace("file: x.pth", "file: ../x.pth"), "plain file name"),
    "file-climbs": ("presets:\n  - " + GOOD.replace("file: x.pth", "file: models/../../../x.pth"), "plain file name"),
    "file-backslash": ("presets:\n  - " + GOOD.replace("file: x.pth", "file: '..\\\\x.pth'"), "plain file name"),
    "python-tag": ("presets:\n  - " + GOOD.replace("description: d", "description: !!python/object/apply:os.system "
                                                 "['touch /tmp/nystra-pwned']"), "not valid YAML at line"),
    "file-suffix": ("presets:\n  - " + GOOD.replace("file: x.pth", "file: x.zip"), "file must end in"),
    "two-sources": ("presets:\n  - " + GOOD + "    page: https://example.org/p\n", "exactly one of url"),
    "no-source": ("presets:\n  - " + GOOD.replace("    url: https://example.org/{file}\n", ""),
                  "exactly one of url"),
    "url-scheme": ("presets:\n  - " + GOOD.replace("https://example.org/{file}", "ftp://example.org/x"),
                   "url must be an http(s) URL"),
    "sha256": ("presets:\n  - " + GOOD + "    sha256: abc\n", "sha256 must be 64 hexadecimal digits"),
    "landmarks": ("presets:\n  - " + GOOD + "    nystrom: {landmarks: 0}\n",
                  "nystrom.landmarks must be an integer >= 1"),
    "window-shape": ("presets:\n  - " + GOOD + "    nystrom: {window: [1, 2, 3, 4]}\n", "nystrom.window must be"),
    "window-bool": ("presets:\n  - " + GOOD + "    trained_window: true\n", "trained_window must be"),
    "nystrom-key": ("presets:\n  - " + GOOD + "    nystrom: {m: 16}\n", "nystrom must be a mapping of"),
    "attention": ("presets:\n  - " + GOOD + "    attention: fast\n", "unknown attention 'fast'"),
    "prefilter": ("presets:\n  - " + GOOD + "    prefilter: sharpen\n", "unknown prefilter 'sharpen'"),
    "bundled-extra": ("presets:\n  - " + GOOD.replace("    url: https://example.org/{file}\n", "    bundled: true\n"),
                      "bundled: true is only for the built-in presets"),
    "default-extra": ("presets:\n  - " + GOOD + "    default: true\n", "default: true is only for the built-in"),
    "duplicate": ("presets:\n  - " + GOOD.replace("name: test-x", "name: swinir-tiny-sr2"), "defined twice"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_invalid_preset_files_are_one_clear_line(case, zoo_env):
    text, expected = BAD_FILES[case]
    path = zoo_env.presets / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(PresetError) as err:
        zoo.presets()
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_the_good_template_is_valid(zoo_env):
    (zoo_env.presets / "good.yaml").write_text("presets:\n  - " + GOOD)
    preset = zoo.get_preset("test-x")
    assert preset.url == "https://example.org/x.pth" and preset.source == "download"


def test_builtin_files_are_valid_and_not_usable_as_extra_files():
    directory = zoo.builtin_presets_dir()
    assert directory == ROOT / "configs" / "models"  # a source tree
    names = []
    for path in sorted(directory.glob("*.yaml")):
        names += [p.name for p in read_preset_file(path, builtin=True)]
    assert names == [p.name for p in zoo.presets()]
    with pytest.raises(PresetError, match="only for the built-in presets"):
        read_preset_file(directory / "00-bundled.yaml", builtin=False)


# -- packaging ----------------------------------------------------------------------------------------


def test_installed_wheel_ships_the_presets(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipelines", "streamer", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp_path / "wheels"),
                            "--no-deps", "--no-build-isolation", "-q"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "wheels").glob("nystra_stream-*.whl"))
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    shipped = sorted(p.name for p in (installed / "pipelines" / "zoo_presets").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "configs" / "models").glob("*.yaml"))

    env = {k: v for k, v in os.environ.items() if k not in ("NYSTRA_PRESETS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(installed)
    probe = subprocess.run([sys.executable, "-c", "from pipelines import zoo; "
                            "print(zoo.builtin_presets_dir()); print(len(zoo.presets()))"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    where, count = probe.stdout.split()
    assert Path(where) == installed / "pipelines" / "zoo_presets"
    assert int(count) == len(zoo.presets())
