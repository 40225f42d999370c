"""``make demo``: restore a short noisy sample video with the bundled denoise model.

    python -m streamer.demo [--out demo-output] [--frames 60] [--size 320x240]

Builds ``noisy.mp4`` (a camera pan over a bundled photo, Gaussian noise sigma 25, an AAC
tone), runs exactly what ``nystra-stream noisy.mp4 restored.mp4 --task denoise`` runs, then
the same with ``--compare`` for a side-by-side, and prints where the files are, the run's
stats line and the PSNR before and after (the clean frames are known).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from .process_env import configure_openmp
from .cli import main as nystra_stream


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0 ** 2 / mse))


def _decode(path: Path) -> list:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-output", help="output folder (default: demo-output)")
    parser.add_argument("--frames", type=int, default=60, help="frames in the sample video (default 60, 2 s)")
    parser.add_argument("--size", default="320x240", help="sample video size WxH (default 320x240)")
    args = parser.parse_args(argv)
    configure_openmp()

    from pipelines import zoo

    preset = zoo.default_preset("denoise")
    if not preset.available():
        print(f"demo: the bundled denoise model ({preset.name}) is not available yet: {preset.path} is missing.\n"
              "demo: it is trained by the script in pipelines/weights/; until then restore your own video with\n"
              "demo:   nystra-stream INPUT OUTPUT --weights CHECKPOINT", file=sys.stderr)
        return 1

    import numpy as np

    from . import samples

    width, height = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    noisy, restored, compare, stats_path = (out / n for n in ("noisy.mp4", "restored.mp4", "compare.mp4",
                                                              "stats.json"))
    print(f"demo: building {noisy} ({args.frames} frames {width}x{height}, noise sigma 25, audio)", file=sys.stderr)
    clean = samples.camera_pan(args.frames, width, height)
    samples.write_clip(noisy, samples.degrade(clean, "noise", sigma=25.0), crf=12)

    code = nystra_stream([str(noisy), str(restored), "--task", "denoise", "--stats", str(stats_path)])
    if code != 0:
        return code
    code = nystra_stream([str(noisy), str(compare), "--task", "denoise", "--compare", "-q"])
    if code != 0:
        return code

    stats = json.loads(stats_path.read_text())
    before = np.mean([_psnr(f, c) for f, c in zip(_decode(noisy), clean)])
    after = np.mean([_psnr(f, c) for f, c in zip(_decode(restored), clean)])
    print(f"\ninput:        {noisy}\nrestored:     {restored}\nside by side: {compare}  (input | restored)\n"
          f"stats:        {stats_path}\n"
          f"model {stats['model']}: {stats['frames_out']} frames at {stats['fps']:.2f} fps "
          f"({stats['worker']}), latency p50 {stats['latency_ms_p50']:.0f} ms, "
          f"peak RSS {stats['peak_rss_mb']:.0f} MB\n"
          f"PSNR vs clean: {before:.2f} dB -> {after:.2f} dB ({after - before:+.2f} dB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
