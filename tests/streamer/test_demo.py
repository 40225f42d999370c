"""``make demo`` = ``python -m streamer.demo`` (streamer/demo.py)."""
from __future__ import annotations

import pytest

from pipelines import zoo
from streamer.demo import main


def test_demo_without_bundled_weights_says_so_clearly(tmp_path, capsys):
    if zoo.default_preset("denoise").available():
        pytest.skip("the bundled denoise weights are installed")
    assert main(["--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "bundled denoise model (swinir-tiny-denoise) is not available yet" in err
    assert not (tmp_path / "demo").exists(), "nothing built when the model is missing"


@pytest.mark.slow
def test_demo_restores_the_sample_and_reports(tmp_path, capsys):
    if not zoo.default_preset("denoise").available():
        pytest.skip("bundled denoise weights are not trained yet")
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--frames", "8", "--size", "96x64"]) == 0
    for name in ("noisy.mp4", "restored.mp4", "compare.mp4", "stats.json"):
        assert (out / name).is_file()
    printed = capsys.readouterr().out
    assert "side by side" in printed and "PSNR vs clean" in printed
