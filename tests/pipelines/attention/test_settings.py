"""``AttentionSettings``: the one statement of the attention defaults, and who reads it."""
import pytest

from pipelines.attention import DEFAULT, RUN_DEFAULT, AttentionSettings, patch_attention
from pipelines.attention.module import WindowAttentionBase
from pipelines.models.swinir import SwinIR, SwinIRConfig

TINY = SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4, mlp_ratio=2.0)


def test_defaults_are_stated_once_and_read_everywhere():
    assert (DEFAULT.mode, DEFAULT.landmarks, DEFAULT.iters, DEFAULT.window) == ("exact", 16, 2, None)
    assert RUN_DEFAULT == AttentionSettings(mode="nystrom")
    layer = next(m for m in SwinIR(TINY).modules() if isinstance(m, WindowAttentionBase))
    assert (layer.attention_mode, layer.landmarks, layer.iters) == (DEFAULT.mode, DEFAULT.landmarks, DEFAULT.iters)


@pytest.mark.parametrize("fields, message", [
    (dict(mode="fast"), "unknown attention mode 'fast'"),
    (dict(landmarks=0), "landmarks must be an integer >= 1"),
    (dict(landmarks=True), "landmarks must be an integer >= 1"),
    (dict(iters=-1), "iters must be an integer >= 0"),
    (dict(window=(8, 0)), "window must be W"),
    (dict(window=(1, 2, 3, 4)), "window must be W"),
])
def test_bad_settings_are_refused_when_made(fields, message):
    with pytest.raises(ValueError, match=message):
        AttentionSettings(**fields)


def test_override_keeps_what_is_not_given():
    base = AttentionSettings("nystrom", 32, 6, (2, 64, 64))
    assert base.override() == base
    assert base.override(iters=0) == AttentionSettings("nystrom", 32, 0, (2, 64, 64))
    assert base.override(mode="exact", window=8) == AttentionSettings("exact", 32, 6, 8)


def test_patch_attention_takes_a_settings_object():
    model = patch_attention(SwinIR(TINY), AttentionSettings("nystrom", landmarks=4, iters=1, bias_aware=False))
    layers = [m for m in model.modules() if isinstance(m, WindowAttentionBase)]
    assert {(m.attention_mode, m.landmarks, m.iters, m.nystrom_bias) for m in layers} == {("nystrom", 4, 1, False)}
    patch_attention(model, "auto", landmarks=8)   # a mode: the rest from DEFAULT
    assert {(m.attention_mode, m.landmarks, m.iters, m.nystrom_bias) for m in layers} == {("auto", 8, 2, True)}
