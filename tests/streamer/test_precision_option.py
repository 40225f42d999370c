"""``--precision`` through Options, the CLI's checks and a run's stats (issue 17)."""
import pytest

import streamer
from streamer.errors import UsageError
from streamer.options import Options, check_options, option_fields, requested_precision


def test_precision_is_an_option_and_fp16_its_alias():
    field = {f.name: f for f in option_fields()}["precision"]
    assert field.default == "auto" and "int8" in field.flag.choices()
    assert requested_precision(Options(task="denoise", fp16=True)) == "fp16"
    with pytest.raises(UsageError, match="needs --device cuda"):
        check_options(Options(task="denoise", precision="fp16"))
    with pytest.raises(UsageError, match="unknown precision"):
        check_options(Options(task="denoise", precision="fp64"))


@pytest.mark.parametrize("precision,workers", [("int8", 0), ("bf16", 1)])
def test_a_run_reports_its_precision(sample_clip, tmp_path, precision, workers):
    stats = streamer.run(str(sample_clip.path), str(tmp_path / "out.mp4"), task="denoise",
                         precision=precision, workers=workers)
    assert stats.completed and stats.frames_out == 8
    assert stats.precision == precision and precision in stats.worker and stats.precision_auto is None


def test_auto_reports_what_it_chose_from(sample_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("NYSTRA_HOME", str(tmp_path / "home"))
    stats = streamer.run(str(sample_clip.path), str(tmp_path / "out.mp4"), task="denoise", workers=0)
    assert stats.precision in ("fp32", "bf16", "int8")
    assert set(stats.precision_auto) == {"fp32", "bf16", "int8"}
    assert stats.precision in stats.worker
