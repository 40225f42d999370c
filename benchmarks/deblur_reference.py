"""How much of the held-out blur is recoverable at all: a non-blind Wiener deconvolution given
the *true* kernel, with its noise-to-signal ratio picked per image by the PSNR it reaches
(an oracle on both counts), on exactly the inputs `pipelines.weights.evaluate` scores the
bundled deblurrer on (held-out photos, blurred, rounded to 8 bits).

It is not a method we ship (a user's blur kernel is unknown); it tells the goal (+2 dB) apart
from what the input allows: if even the oracle could not gain 2 dB, no blind model could.
The image is extended symmetrically to twice its size before the FFT, which matches the
reflect padding of the blur closely, so border ringing does not decide the figure.

    .venv/bin/python benchmarks/deblur_reference.py
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import degradations  # noqa: E402
from pipelines.deconvolution import wiener_deconvolve  # noqa: E402
from pipelines.weights.data import EVAL_IMAGES, degrade_fixed, eval_cases, load_photo, quantize  # noqa: E402

NSR_GRID = [10 ** (e / 4) for e in range(-20, -1)]   # 1e-5 ... 0.3


def main() -> None:
    torch.set_num_threads(1)
    photos = {name: load_photo(name).double() for name in EVAL_IMAGES}
    cases = {}
    for case, settings in eval_cases("deblur"):
        if "gauss" in settings:
            kernel = degradations.gaussian_kernel(settings["gauss"]).double()
        else:
            kernel = degradations.motion_kernel(settings["length"], settings["angle"]).double()
        per_photo = {}
        for name, clean in photos.items():
            blurred = degrade_fixed("deblur", clean, settings).double()
            scores = [(degradations.psnr(quantize(wiener_deconvolve(blurred, kernel, nsr)), clean), nsr)
                      for nsr in NSR_GRID]
            best, nsr = max(scores)
            per_photo[name] = {"input": round(degradations.psnr(blurred, clean), 3), "wiener_oracle": round(best, 3),
                               "nsr": round(nsr, 6)}
        mean_in = statistics.mean(p["input"] for p in per_photo.values())
        mean_out = statistics.mean(p["wiener_oracle"] for p in per_photo.values())
        cases[case] = {"photos": per_photo, "input": round(mean_in, 3), "wiener_oracle": round(mean_out, 3),
                       "gain_db": round(mean_out - mean_in, 2)}
    print(json.dumps({"benchmark": "deblur-nonblind-wiener-oracle", "held_out": list(EVAL_IMAGES),
                      "cases": cases}, indent=2))


if __name__ == "__main__":
    main()
