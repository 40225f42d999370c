"""benchmarks/gpu.py (issue 17): no GPU is lent to most sessions, so its code paths (model
builds, attention settings, timing, the CLI end to end, the JSON) run here on the CPU (--smoke);
and without CUDA the real run refuses with one line. ~75 s on the 2-core machine."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real thing")
def test_gpu_script_refuses_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--out", str(tmp_path / "g.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr and not (tmp_path / "g.json").exists()


def test_gpu_script_smoke_runs_every_path_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    models = {c["model"] for c in report["model_level"]}
    assert models == {"swinir-m", "uformer-b", "rvrt"}
    assert all("ms" in c and "error" not in c for c in report["model_level"])
    nystrom = [c for c in report["model_level"] if c["attention"] == "nystrom"]
    assert nystrom and all(20 < c["psnr_vs_fp32_exact_db"] < 99 for c in nystrom)
    (e2e,) = report["end_to_end"]
    assert e2e["rc"] == 0 and e2e["fps_steady"] > 0 and "fp32" in e2e["worker"]
