"""What happens when the output side fails during a run: a full disk, a read-only file system, an output
directory that vanishes. Each: one line, exit 1 or 2, the temporary file gone, nothing under the output
name. (Output = input through a symlink or hard link: tests/streamer/test_sinks.py.)

Real file systems: small tmpfs mounts (the suite runs as root, as CI does); skipped where mounting is
not allowed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from streamer import cli
from toy_models import Brighten


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip() or 'mount failed'}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting needs root")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nystra-stream: error: "), err
    return err[0]


@needs_root
def test_disk_full_during_the_run(clip_factory, tmp_path, capsys):
    clip = clip_factory(frames=40, width=320, height=240, audio=False)   # about 3 MB as FFV1
    with tmpfs(tmp_path / "small", "1m") as small:
        code = cli.main([str(clip.path), str(small / "out.mkv"), "--weights", str(_identity_weights(tmp_path)),
                         "--codec", "ffv1", "--workers", "0", "-q"])
        assert code == 1
        assert "No space left on device" in error_line(capsys)
        assert os.listdir(small) == [], "no output, no temporary file"


@needs_root
def test_read_only_output_directory(sample_clip, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        code = cli.main([str(sample_clip.path), str(ro / "out.mp4"), "--weights", str(_identity_weights(tmp_path)),
                         "-q"])
        assert code == 2
        assert "cannot write to the output directory" in error_line(capsys)
        assert os.listdir(ro) == []


def test_output_directory_vanishes_during_the_run(clip_factory, tmp_path):
    import streamer
    from streamer.errors import ProcessingError

    clip = clip_factory(frames=12)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def remove_the_directory(done, total):
        if done == 3:
            shutil.rmtree(out_dir)

    with pytest.raises(ProcessingError, match="No such file or directory") as caught:
        streamer.run(clip.path, out_dir / "out.mp4", model=Brighten(), workers=0, progress=remove_the_directory)
    assert "\n" not in str(caught.value)
    assert not out_dir.exists(), "nothing recreated it"


def _identity_weights(tmp_path: Path) -> Path:
    from toy_models import save_tiny_swinir

    path = tmp_path / "tiny.safetensors"
    return path if path.exists() else save_tiny_swinir(path)
