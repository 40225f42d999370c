"""How reliably the deblur prefilter finds straight-line motion blur, and how often it fires
where there is none (pipelines/deconvolution.py). Prints JSON.

Every scikit-image photo the bundled models use (training and held-out), stored as yuv420p the
way decoded video is: **negatives** — sharp, Gaussian blur sigma 1 / 2 / 3 px, noise sigma 10 /
25, bicubic x2 down and up (an upscaled frame); **positives** — line blurs of 3.5, 5, 8, 12 and
15 px at 37 degrees and of 9 px at 0, 90 and 150 degrees. Reported: the share detected, and for
detected positives the angle error and the kernel error (L1 distance between the true and the
estimated kernel, 0..2: lengths that round to the same pixels give the same kernel), and the
time per 640x360 frame.

**Video**: the sample clips' camera pan over the held-out astronaut (640x360, 12 frames), line
blurs of 9 px at 30 degrees, 6 px at 100 and 13 px at 150, encoded with libx264 at crf 12, 18,
23 and 28 (PyAV, in memory) and decoded: frames detected of 12 (the prefilter takes frames as
a sequence: a shallower peak counts when the frame before found the same blur); for false
alarms the sharp pan at crf 23 and 35, the Gaussian-blurred and noisy pans, and a pan over the
``text`` photo (lines of text magnified: periodic content). Compression removes the high frequencies that show the blur's spectral
zeros, so detection falls with the bit rate.

    .venv/bin/python benchmarks/motion_estimation.py
"""
from __future__ import annotations

import io
import json
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import degradations  # noqa: E402
from pipelines.deconvolution import MotionDeconvolution, estimate_motion_blur  # noqa: E402
from streamer import samples  # noqa: E402
from pipelines.weights.data import EVAL_IMAGES, TRAIN_IMAGES, as_decoded_video, load_photo, quantize  # noqa: E402

NEGATIVES = ("sharp", "gauss1", "gauss2", "gauss3", "noise10", "noise25", "upscaled")
POSITIVES = [(3.5, 37.0), (5.0, 37.0), (8.0, 37.0), (12.0, 37.0), (15.0, 37.0), (9.0, 0.0), (9.0, 90.0), (9.0, 150.0)]


def negative(clean: torch.Tensor, case: str, gen: torch.Generator) -> torch.Tensor:
    if case.startswith("gauss"):
        return degradations.gaussian_blur(clean, float(case[5:]))
    if case.startswith("noise"):
        return degradations.add_gaussian_noise(clean, float(case[5:]), generator=gen)
    if case == "upscaled":
        return degradations.bicubic_resize(degradations.bicubic_resize(clean[None], 0.5), 2.0)[0]
    return clean


def kernel_error(est, length: float, angle: float) -> float:
    true = degradations.motion_kernel(length, angle, size=21)
    guess = degradations.motion_kernel(est.length, est.angle, size=21)
    return float((true - guess).abs().sum())


VIDEO_BLURS = [(9.0, 30.0), (6.0, 100.0), (13.0, 150.0)]
VIDEO_CRFS = (12, 18, 23, 28)


def x264_roundtrip(frames: np.ndarray, crf: int) -> list:
    """Frames encoded with libx264 (yuv420p, ``crf``) and decoded again, in memory."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def detected_frames(frames: list) -> str:
    prefilter = MotionDeconvolution()
    for image in frames:
        prefilter(image)
    return f"{prefilter.deconvolved}/{prefilter.frames}"


def video_detection() -> dict:
    clean = samples.camera_pan(12, 640, 360)
    found = {f"{length:g}px@{angle:g}": {f"crf{crf}": detected_frames(x264_roundtrip(
        samples.degrade(clean.copy(), "motion", motion=(length, angle)), crf)) for crf in VIDEO_CRFS}
        for length, angle in VIDEO_BLURS}
    found["false alarms: sharp"] = {f"crf{crf}": detected_frames(x264_roundtrip(clean, crf)) for crf in (23, 35)}
    found["false alarms: Gaussian 2.5 px, noise 25"] = {
        "crf23": "+".join(detected_frames(x264_roundtrip(samples.degrade(clean.copy(), kind), 23))
                          for kind in ("blur", "noise"))}
    # Text lines magnified ~2.6x: periodic content, the cepstrum's blind spot.
    text = samples.camera_pan(12, 640, 360, "text")
    found["false alarms: text pan"] = {"uncompressed": detected_frames(list(text)),
                                       "crf18": detected_frames(x264_roundtrip(text, 18))}
    return found


def main() -> int:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    photos = {name: load_photo(name) for name in TRAIN_IMAGES + EVAL_IMAGES}
    false_alarms, negatives = [], 0
    found = {f"{length:g}px@{angle:g}": [] for length, angle in POSITIVES}
    for name, clean in photos.items():
        for case in NEGATIVES:
            est = estimate_motion_blur(as_decoded_video(quantize(negative(clean, case, gen))))
            negatives += 1
            if est.detected:
                false_alarms.append({"photo": name, "case": case, "length": est.length, "angle": est.angle,
                                     "score": round(est.score, 1)})
        for length, angle in POSITIVES:
            est = estimate_motion_blur(as_decoded_video(quantize(degradations.motion_blur(clean, length, angle))))
            entry = {"photo": name, "detected": est.detected}
            if est.detected:
                entry.update(angle_error=abs((est.angle - angle + 90) % 180 - 90),
                             kernel_error=kernel_error(est, length, angle))
            found[f"{length:g}px@{angle:g}"].append(entry)
    positives = {}
    for key, entries in found.items():
        hits = [e for e in entries if e["detected"]]
        positives[key] = {"detected": f"{len(hits)}/{len(entries)}",
                          "median_angle_error_deg": statistics.median(e["angle_error"] for e in hits) if hits else None,
                          "median_kernel_error": round(statistics.median(e["kernel_error"] for e in hits), 3)
                          if hits else None,
                          "missed": [e["photo"] for e in entries if not e["detected"]]}
    frame = torch.rand(3, 360, 640, generator=gen)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        estimate_motion_blur(frame)
        times.append(time.perf_counter() - start)
    print(json.dumps({"benchmark": "motion-estimation", "photos": len(photos),
                      "false_alarms": f"{len(false_alarms)}/{negatives}", "false_alarm_cases": false_alarms,
                      "positives": positives, "video_pan_detected": video_detection(),
                      "estimate_ms_640x360_1thread": round(1000 * statistics.median(times[1:]), 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
