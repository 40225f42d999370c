"""10/12-bit input, HDR tags, ``--pix-fmt`` and alpha (issue 16): the picture reaches the model and
the encoder without an 8-bit step, the colour tags and the alpha plane come out as they went in,
and what an output cannot hold is named in one warning."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from corpus.generate import HDR_TRC, ffmpeg, ffprobe_video, hdr_hevc, prores_alpha
from pipelines.pixels import from_unit, round_pixels, to_unit
from pipelines.restorer import Restorer
from streamer import run
from streamer.cli import main
from streamer.pixfmt import convert_alpha_bits, read_alpha, write_alpha
from toy_models import Identity, VideoIdentity

pytestmark = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
                                reason="the inputs are made with the ffmpeg program")


def luma16(path: Path) -> list:
    """Every frame's luma plane as uint16 (its format's own bits), read back with PyAV."""
    planes = []
    with av.open(str(path)) as container:
        for vf in container.decode(video=0):
            assert vf.format.name.endswith("le") and "10" in vf.format.name, vf.format.name
            plane = vf.planes[0]
            rows = np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2)
            planes.append(rows[:, : plane.width].copy())
    return planes


def alphas(path: Path) -> list:
    with av.open(str(path)) as container:
        return [read_alpha(vf) for vf in container.decode(video=0)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("hbd")
    return {"pq": hdr_hevc(d / "pq.mkv", HDR_TRC["pq"]), "hlg": hdr_hevc(d / "hlg.mkv", HDR_TRC["hlg"]),
            "alpha": prores_alpha(d / "alpha.mov")}


@pytest.mark.parametrize("codec,ext,pix_fmt", [
    (None, ".mkv", "yuv420p10le"),   # libx264 high10: this PyAV's libx264 lists yuv420p10le
    ("libx265", ".mkv", "yuv420p10le"), ("libsvtav1", ".mkv", "yuv420p10le"), ("ffv1", ".mkv", "yuv420p10le"),
    ("prores_ks", ".mov", "yuv422p10le"),
])
def test_10_bit_hevc_gives_10_bit_output_with_more_than_256_levels(inputs, tmp_path, codec, ext, pix_fmt):
    if codec is not None and codec not in av.codecs_available:
        pytest.skip(f"this PyAV has no {codec}")
    out = tmp_path / f"out{ext}"
    assert main([str(inputs["pq"]), str(out), "--task", "denoise", "--workers", "0", "-q"]
                + (["--codec", codec] if codec else [])) == 0
    assert ffprobe_video(out)["pix_fmt"] == pix_fmt
    levels = [len(np.unique(y)) for y in luma16(out)]
    assert min(levels) > 256, levels   # an 8-bit step anywhere would leave at most 256


@pytest.mark.parametrize("system", ["pq", "hlg"])
def test_hdr_colour_tags_are_kept(inputs, tmp_path, system):
    out = tmp_path / "out.mp4"
    assert main([str(inputs[system]), str(out), "--task", "denoise", "--workers", "0", "-q"]) == 0
    written, source = ffprobe_video(out), ffprobe_video(inputs[system])
    for tag in ("color_primaries", "color_space", "color_transfer", "color_range"):
        assert written.get(tag) == source[tag], (tag, written.get(tag))
    assert written["color_transfer"] == HDR_TRC[system] and written["color_primaries"] == "bt2020"
    assert written["pix_fmt"] == "yuv420p10le"   # HDR at 8 bits would band: the depth is kept too


def test_no_8_bit_step_identity_model_tiles_and_worker_processes(inputs, tmp_path):
    """An identity model, tiled, in two worker processes, written lossless at 4:4:4: the 10-bit
    luma comes back within 1 (YUV -> 16-bit RGB -> YUV); through 8 bits it would be off by up to 2."""
    out = tmp_path / "out.mkv"
    stats = run(str(inputs["pq"]), str(out), model=Identity(), workers=2, tile=96, tile_overlap=16,
                codec="ffv1", pix_fmt="yuv444p10le")
    assert stats.frames_out == 12
    before, after = luma16(inputs["pq"]), luma16(out)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_no_8_bit_step_video_model_clips_blended(inputs, tmp_path):
    """A video model's overlapping clips are blended in float and rounded to 16 bits, not 8."""
    out = tmp_path / "out.mkv"
    run(str(inputs["pq"]), str(out), model=VideoIdentity(clip_len=4), workers=0, clip_len=4, clip_overlap=2,
        codec="ffv1", pix_fmt="yuv444p10le")
    for a, b in zip(luma16(inputs["pq"]), luma16(out)):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_pix_fmt_option_chooses(inputs, tmp_path, caplog):
    out = tmp_path / "444.mkv"
    assert main([str(inputs["pq"]), str(out), "--task", "denoise", "--workers", "0", "-q",
                 "--pix-fmt", "yuv444p10le"]) == 0
    assert ffprobe_video(out)["pix_fmt"] == "yuv444p10le"
    eight = tmp_path / "8.mkv"
    with caplog.at_level(logging.WARNING):
        assert main([str(inputs["pq"]), str(eight), "--task", "denoise", "--workers", "0",
                     "--pix-fmt", "yuv420p"]) == 0
    assert ffprobe_video(eight)["pix_fmt"] == "yuv420p"
    assert any("10-bit samples are written at 8 bits" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("args,phrase", [
    (["--codec", "prores_ks", "--pix-fmt", "yuv420p"], "prores_ks cannot encode pixel format yuv420p"),
    (["--pix-fmt", "yuv420p11"], "unknown pixel format 'yuv420p11'"),
])
def test_impossible_pix_fmt_is_one_line_exit_2_nothing_written(inputs, tmp_path, capsys, args, phrase):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main([str(inputs["pq"]), str(out_dir / "out.mov"), "--task", "denoise", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nystra-stream: error: ") and phrase in err[0], err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("codec,workers", [("prores_ks", 0), ("ffv1", 2)])
def test_alpha_is_kept_where_the_codec_holds_it(inputs, tmp_path, caplog, codec, workers):
    out = tmp_path / ("out.mov" if codec == "prores_ks" else "out.mkv")
    with caplog.at_level(logging.WARNING):
        assert main([str(inputs["alpha"]), str(out), "--task", "denoise", "--workers", str(workers),
                     "--codec", codec]) == 0
    assert not any("alpha" in r.getMessage() for r in caplog.records)
    written = ffprobe_video(out)["pix_fmt"]
    assert written.startswith("yuva"), written
    source, kept = alphas(inputs["alpha"]), alphas(out)
    assert len(source) == len(kept) == 12
    assert len(np.unique(source[0])) > 100   # the input's alpha varies: keeping it is a real check
    for a, b in zip(source, kept):
        # ProRes decodes to 12 bits; prores_ks takes 10, as does this ffv1 default: the plane is
        # the input's at 10 bits, and ProRes -> ProRes gives back the very same decoded plane.
        if codec == "prores_ks":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_equal(convert_alpha_bits(a, 12, 10), b)


def test_alpha_follows_an_upscaling_model_sample_for_sample(inputs, tmp_path):
    out = tmp_path / "out.mov"
    assert main([str(inputs["alpha"]), str(out), "--task", "sr2", "--workers", "0", "-q", "--codec", "prores_ks"]) == 0
    for a, b in zip(alphas(inputs["alpha"]), alphas(out)):
        np.testing.assert_array_equal(np.repeat(np.repeat(a, 2, axis=0), 2, axis=1), b)


# libx265 lists yuva420p but refuses it when it opens; libvpx-vp9's alpha FFmpeg's VP9 decoder ignores
@pytest.mark.parametrize("codec,ext", [(None, ".mp4"), ("libx265", ".mkv"), ("libvpx-vp9", ".webm")])
def test_alpha_dropped_with_one_warning_where_the_codec_has_none(inputs, tmp_path, caplog, codec, ext):
    out = tmp_path / f"out{ext}"
    with caplog.at_level(logging.WARNING):
        assert main([str(inputs["alpha"]), str(out), "--task", "denoise", "--workers", "0"]
                    + (["--codec", codec] if codec else [])) == 0
    lost = [r.getMessage() for r in caplog.records if "alpha" in r.getMessage()]
    assert len(lost) == 1 and f"alpha channel is dropped ({codec or 'libx264'} " in lost[0], lost


def test_compare_with_an_upscaling_model_at_10_bits(inputs, tmp_path):
    out = tmp_path / "out.mkv"
    assert main([str(inputs["pq"]), str(out), "--task", "sr2", "--workers", "0", "-q", "--compare"]) == 0
    written = ffprobe_video(out)
    assert (written["width"], written["height"], written["pix_fmt"]) == (1024, 128, "yuv420p10le")
    left = [y[:, :512] for y in luma16(out)]
    assert min(len(np.unique(y)) for y in left) > 256   # the resized input, not rounded to 8 bits


def test_8_bit_input_stays_8_bit_without_a_warning(tmp_path, caplog):
    source = tmp_path / "in.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12:duration=0.5", "-c:v", "libx264", str(source))
    out = tmp_path / "out.mkv"
    with caplog.at_level(logging.WARNING):
        assert main([str(source), str(out), "--task", "denoise", "--workers", "0"]) == 0
    assert ffprobe_video(out)["pix_fmt"] == "yuv420p"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the pieces --------------------------------------------------------------------------------

def test_unit_conversion_keeps_uint8_arithmetic_and_16_bit_precision():
    x8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_unit(x8, torch.float32), x8.float() / 255)
    x16 = torch.arange(0, 65536, 7).to(torch.uint16)
    for dtype in (torch.float32, torch.float16):   # 65535 is past float16's range: scaled in float32
        back = from_unit(to_unit(x16, dtype), torch.uint16)
        tolerance = 0 if dtype == torch.float32 else 32
        assert (back.int() - x16.int()).abs().max() <= tolerance
    assert round_pixels(np.array([70000.0, -3.0, 1.5]), np.dtype(np.uint16)).tolist() == [65535, 0, 2]


def test_restorer_takes_uint16_and_returns_uint16():
    restorer = Restorer(Identity(scale=2))
    image = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 1000).astype(np.uint16)
    out = restorer.restore(image)
    assert out.dtype == np.uint16 and out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[::2, ::2], image)


def test_alpha_bit_conversion():
    a10 = np.array([0, 1, 512, 1023], np.uint16)
    assert convert_alpha_bits(a10, 10, 16).tolist() == [0, 64 | 0, (512 << 6) | (512 >> 4), 65535]
    assert convert_alpha_bits(convert_alpha_bits(a10, 10, 16), 16, 10).tolist() == a10.tolist()
    assert convert_alpha_bits(np.array([255], np.uint8), 8, 10).tolist() == [1023]


def test_read_and_write_alpha_packed_and_planar():
    rgba = np.random.default_rng(0).integers(0, 256, (6, 10, 4), dtype=np.uint8)
    packed = av.VideoFrame.from_ndarray(rgba, format="rgba")
    np.testing.assert_array_equal(read_alpha(packed), rgba[..., 3])
    planar = av.VideoFrame.from_ndarray(rgba[..., :3].copy(), format="rgb24").reformat(format="yuva444p10le")
    a10 = convert_alpha_bits(rgba[..., 3], 8, 10)
    write_alpha(planar, a10)
    np.testing.assert_array_equal(read_alpha(planar), a10)
