"""The quality table (issue 17): what each dial setting costs in PSNR, shipped for the bundled
models, measured on first use and cached for others; the resolution wrapper it relies on."""
import json
from pathlib import Path

import pytest
import torch

from pipelines import quality_table as qt
from pipelines import zoo
from pipelines.loading import load_model
from pipelines.models.swinir import SwinIR, SwinIRConfig
from pipelines.quality_table import Entry, QualityTable, Setting
from pipelines.rescale import Rescaled

SMALL = SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, upscale=1,
                     mlp_ratio=2.0)


@pytest.fixture
def small_grid(monkeypatch):
    """A table of 2 kernels x 2 resolutions x 2 windows on 64-px frames: seconds, not a minute."""
    monkeypatch.setattr(qt, "SIDE", 64)
    monkeypatch.setattr(qt, "LANDMARKS", (4,))
    monkeypatch.setattr(qt, "ITERS", (1,))
    monkeypatch.setattr(qt, "RESOLUTIONS", (1.0, 0.5))


def test_every_bundled_model_has_its_shipped_table():
    shipped = qt.shipped_tables()
    for preset in zoo.presets():
        if preset.bundled:
            key = qt.table_key(load_model(preset, attention=None), None)
            assert key in shipped, f"{preset.name}: run python -m pipelines.quality_table"
            table = shipped[key]
            assert table.delta(qt.REFERENCE) == 0.0
            assert len(table.entries) == len(qt.candidates(load_model(preset).info, True))
            # Half the resolution costs more than any full-resolution Nyström setting.
            half = min(e.delta_db for e in table.entries if e.setting.resolution == 0.5)
            full = max(e.delta_db for e in table.entries if e.setting.resolution == 1.0 and e.setting.window is None)
            assert half > full


def test_a_model_without_a_shipped_table_is_measured_once_and_cached(small_grid, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NYSTRA_HOME", str(tmp_path))
    torch.manual_seed(0)
    model = SwinIR(SMALL).eval()
    with caplog.at_level("WARNING", logger="pipelines.quality_table"):
        table = qt.quality_table(model, name="small")
    assert [r.getMessage() for r in caplog.records if "quality table of small once" in r.getMessage()]
    settings = {e.setting for e in table.entries}
    assert settings == set(qt.candidates(model.info, True)) and len(settings) == 2 * 2 * 2
    assert table.delta(qt.REFERENCE) == 0.0
    assert all(e.delta_db != 0 for e in table.entries if e.setting.resolution == 0.5)   # (random weights: either sign)
    cached = list((tmp_path / "quality").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["key"] == table.key
    # The second time it is read, not measured.
    monkeypatch.setattr(qt, "measure_table", lambda *a, **k: pytest.fail("measured again"))
    assert qt.quality_table(model, name="small").to_json() == table.to_json()
    # Other weights: another key.
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    assert qt.table_key(model, None) != table.key


def test_frontier_and_json_round_trip():
    a, b, c, d = (Setting("exact"), Setting(), Setting(landmarks=4, iters=1), Setting(resolution=0.5))
    table = QualityTable("k", "m", [Entry(a, 0.0, 1.0), Entry(b, 0.01, 0.4), Entry(c, 0.02, 0.5), Entry(d, 2.0, 0.1)])
    assert [e.setting for e in table.frontier()] == [a, b, d]   # c is slower and worse than b
    again = QualityTable.from_json(json.loads(json.dumps(table.to_json())))
    assert again.to_json() == table.to_json() and again.delta(d) == 2.0
    with pytest.raises(KeyError):
        table.delta(Setting(window=32))
    assert "| nystrom m16 T2 @0.5x | 2.000 | 0.10 |" in qt.markdown(table)


def test_rescaled_runs_the_model_smaller_and_returns_the_full_size():
    torch.manual_seed(0)
    inner = SwinIR(SMALL).eval()
    wrapped = Rescaled(inner, inner.info)
    x = torch.rand(1, 3, 40, 56)
    with torch.inference_mode():
        assert torch.equal(wrapped(x), inner(x))   # factor 1: the model itself
        wrapped.factor = 0.5
        y = wrapped(x)
    assert y.shape == x.shape
    with pytest.raises(ValueError):
        wrapped.factor = 0.0


def test_apply_setting_sets_attention_and_resolution():
    model = qt.dial_model(SwinIR(SMALL).eval())
    qt.apply_setting(model, Setting(landmarks=4, iters=1, resolution=0.75))
    layers = [m for m in model.modules() if hasattr(m, "attention_mode")]
    assert layers and all((m.attention_mode, m.landmarks, m.iters) == ("nystrom", 4, 1) for m in layers)
    assert model.factor == 0.75
    assert qt.dial_model(model) is model


def test_the_readme_shows_the_shipped_denoiser_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = next(t for t in qt.shipped_tables().values() if t.model == "swinir-tiny-denoise")
    assert qt.markdown(table) in readme, "regenerate the README table: pipelines.quality_table.markdown"
