"""``load_model`` on files that are not usable checkpoints: one clear line, never a traceback dump."""
from __future__ import annotations

import pytest
import torch

from pipelines import CheckpointError, load_model
from pipelines.models.swinir import SwinIR, SwinIRConfig

SMALL = SwinIRConfig(img_size=16, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8,
                     mlp_ratio=2, upscale=2, upsampler="pixelshuffle")


def load_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_state_dict_of_another_network(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"params": {"fc.weight": torch.zeros(4, 4), "fc.bias": torch.zeros(4)}}, path)
    assert "not a checkpoint of a supported architecture" in load_error(path)


@pytest.mark.parametrize("text", ["these are not weights\nsecond line\n", "not a video\n", '{"a": 1}'])
def test_text_file(tmp_path, text):
    # Some texts happen to parse as pickle opcodes; they must still read as "not a checkpoint",
    # never as "contains pickled code".
    path = tmp_path / "notes.pth"
    path.write_text(text)
    assert "not a PyTorch checkpoint" in load_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "empty" in load_error(path)


def test_missing_file(tmp_path):
    assert "not found" in load_error(tmp_path / "absent.pth")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "code.pth"
    torch.save({"params": SwinIRConfig()}, path)  # an arbitrary Python object, not tensors
    assert "refusing to load" in load_error(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_code_is_never_run(tmp_path, legacy):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    if legacy:  # a plain pickle, as very old torch.save wrote
        import pickle

        path.write_bytes(pickle.dumps({"params": {}, "x": _Payload(marker)}, protocol=2))
    else:
        torch.save({"params": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    message = load_error(path)
    assert "refusing to load" in message and "open)" in message  # names the global it refused
    assert not marker.exists()


def test_swinir_with_a_missing_weight(tmp_path):
    sd = SwinIR(SMALL).state_dict()
    del sd["layers.0.residual_group.blocks.1.attn.qkv.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"params": sd}, path)
    message = load_error(path)
    assert "SwinIR" in message and "layers.0.residual_group.blocks.1.attn.qkv.weight" in message


def test_swinir_with_a_wrong_shape(tmp_path):
    sd = SwinIR(SMALL).state_dict()
    sd["norm.weight"] = torch.ones(13)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    assert "norm.weight has shape (13,)" in load_error(path)


def test_swinir_with_an_inconsistent_window(tmp_path):
    sd = SwinIR(SMALL).state_dict()
    sd["layers.0.residual_group.blocks.1.attn.relative_position_bias_table"] = torch.zeros(50, 2)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    assert "relative_position_bias_table" in load_error(path)


# -- hostile files: refused before anything large is allocated -------------------------------------


def _safetensors(path, header, data: bytes = b"") -> None:
    import json
    import struct

    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.mark.parametrize("case", ["huge tensor", "overlapping tensors", "huge header"])
def test_a_safetensors_header_that_lies_is_refused_without_allocating(tmp_path, case):
    from streamer.process_env import peak_rss_bytes

    path = tmp_path / "hostile.safetensors"
    if case == "huge tensor":      # 4 TiB declared, 16 bytes present
        _safetensors(path, {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 1 << 42]}},
                     b"\0" * 16)
    elif case == "overlapping tensors":
        _safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24)
    else:                          # a 1 TiB header length
        path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    before = peak_rss_bytes()
    assert "not a valid safetensors file" in load_error(path)
    assert peak_rss_bytes() - before < 64 << 20


def test_a_zip_checkpoint_that_inflates_is_refused_before_loading(tmp_path):
    """torch.load inflates compressed members to their declared size: here 256 MiB from a file of
    about 0.3 MB (a 1 TB one would be as small). The archive's directory says so before any inflating."""
    import zipfile

    from streamer.process_env import peak_rss_bytes

    plain, bomb = tmp_path / "plain.pth", tmp_path / "bomb.pth"
    torch.save({"w": torch.zeros(1 << 26)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))
    plain.unlink()
    assert bomb.stat().st_size < 2 << 20
    before = peak_rss_bytes()
    assert "a decompression bomb" in load_error(bomb)
    assert peak_rss_bytes() - before < 64 << 20


def test_a_compressed_but_honest_checkpoint_still_loads(tmp_path):
    """Re-zipped with deflate, real weights shrink little: such a file is not refused."""
    import zipfile

    plain, packed = tmp_path / "plain.pth", tmp_path / "packed.pth"
    torch.save(SwinIR(SMALL).state_dict(), plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name in source.namelist():
            out.writestr(name, source.read(name))
    assert load_model(packed).info.scale == 2
