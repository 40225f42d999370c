"""Encoder settings: how each codec spells quality and speed, and which pixel format to use.

``codec`` None picks the output container's usual codec (:func:`default_codec`: libx264, or
libvpx-vp9 for WebM); ``crf``/``preset`` None pick the codec's default in :data:`CODECS`. x264 preset names work for
every codec (mapped onto libsvtav1's 0-13 and libvpx-vp9's deadline/cpu-used scales); the
codecs' own numeric presets work too.

Pixel format (:func:`choose_pix_fmt`): ``--pix-fmt`` if given (one the codec lists, else a
:class:`UsageError`); otherwise from the input: 8-bit input gets ``yuv420p``, as players expect,
and 10/12-bit input the codec's 10-bit format (``yuv420p10le`` for libx264, libx265, libsvtav1,
ffv1; ``yuv422p10le`` for prores_ks), falling back to 8 bits where the codec has no 10-bit
format (this build's libvpx-vp9). Input with alpha gets the alpha variant where the codec has
one that a decoder gives back (:data:`ALPHA_CODECS`: ``yuva444p10le`` for prores_ks,
``yuva420p``/``yuva420p10le`` for ffv1).
:func:`what_is_lost` names, for the one warning, what the chosen format cannot keep.

Odd sizes: 4:2:0 (and 4:2:2) chroma cannot represent an odd width/height. Rather than change
the picture size behind the user's back, :func:`pick_pix_fmt` switches to the codec's 4:4:4
format (``yuv444p``, ``yuv444p10le``) with a one-line warning; codecs without 4:4:4 (libsvtav1)
refuse odd sizes with a :class:`UsageError`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

import av

from .errors import UsageError
from .pixfmt import alpha_bits, full_chroma, sample_bits, video_format, with_alpha

log = logging.getLogger(__name__)


@dataclass
class EncoderSettings:
    """What to encode with; see the module docstring for the defaults."""

    codec: Optional[str] = None
    crf: Optional[int] = None
    preset: Optional[str] = None
    pix_fmt: Optional[str] = None   # None: chosen from the input (choose_pix_fmt)
    # No B-frames: decode order = presentation order, so files cut from one stream (segments)
    # join by stream copy with increasing dts at every seam.
    no_reordering: bool = False

    def for_output(self, path: str) -> "EncoderSettings":
        """These settings with ``codec`` filled in for the output file ``path``."""
        return self if self.codec is not None else replace(self, codec=default_codec(path))


# Output extension -> video codec when none is given (WebM takes only VP8/VP9/AV1).
_CONTAINER_CODEC = {".webm": "libvpx-vp9"}


def default_codec(path: str) -> str:
    """The video codec written when the user names none: libx264, or what the container needs."""
    return _CONTAINER_CODEC.get(os.path.splitext(os.fspath(path))[1].lower(), "libx264")


_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                 "veryslow", "placebo")


@dataclass(frozen=True)
class CodecProfile:
    """How one encoder spells quality and speed."""

    crf_default: Optional[int]          # None: the codec has no quality knob (lossless)
    crf_range: Tuple[int, int] = (0, 51)
    preset_default: Optional[str] = None

    def options(self, codec: str, crf: Optional[int], preset: Optional[str]) -> Dict[str, str]:
        opts: Dict[str, str] = {}
        if self.crf_default is None:
            if crf is not None or preset is not None:
                log.warning("%s is lossless: crf/preset ignored", codec)
            return opts
        crf = self.crf_default if crf is None else crf
        lo, hi = self.crf_range
        if not lo <= crf <= hi:
            raise UsageError(f"crf {crf} is out of range for {codec} ({lo}-{hi})")
        opts["crf"] = str(crf)
        preset = preset or self.preset_default
        if preset is not None:
            opts.update(_preset_options(codec, str(preset)))
        if codec == "libvpx-vp9":
            opts.update({"b": "0", "row-mt": "1"})  # b=0: crf is constant quality, not a cap
        if codec == "libx265":
            opts["x265-params"] = "log-level=error"  # x265 prints its banner straight to stderr
        return opts


CODECS: Dict[str, CodecProfile] = {
    "libx264": CodecProfile(crf_default=18, preset_default="medium"),
    "libx265": CodecProfile(crf_default=20, preset_default="medium"),
    "libvpx-vp9": CodecProfile(crf_default=31, crf_range=(0, 63), preset_default="fast"),
    "libsvtav1": CodecProfile(crf_default=30, crf_range=(1, 63), preset_default="medium"),
    "ffv1": CodecProfile(crf_default=None),
}

# x264 preset name -> libsvtav1 preset (0 slowest .. 13 fastest) and libvpx-vp9 (deadline, cpu-used).
_SVT_PRESET = dict(zip(_X26X_PRESETS, (13, 12, 11, 10, 9, 8, 6, 4, 2, 0)))
_VP9_PRESET = dict(zip(_X26X_PRESETS, (("realtime", 8), ("realtime", 7), ("realtime", 6), ("good", 5),
                                       ("good", 4), ("good", 3), ("good", 2), ("good", 1), ("good", 0),
                                       ("best", 0))))


def _preset_options(codec: str, preset: str) -> Dict[str, str]:
    numeric = preset.lstrip("-").isdigit()
    if codec in ("libx264", "libx265"):
        if preset not in _X26X_PRESETS:
            raise UsageError(f"unknown preset {preset!r} for {codec} (choose from {', '.join(_X26X_PRESETS)})")
        return {"preset": preset}
    if codec == "libsvtav1":
        if numeric and -1 <= int(preset) <= 13:
            return {"preset": preset}
        if preset in _SVT_PRESET:
            return {"preset": str(_SVT_PRESET[preset])}
        raise UsageError(f"unknown preset {preset!r} for libsvtav1 (an x264 preset name or -1..13)")
    if codec == "libvpx-vp9":
        if numeric and -8 <= int(preset) <= 8:
            return {"deadline": "good" if abs(int(preset)) <= 5 else "realtime", "cpu-used": preset}
        if preset in _VP9_PRESET:
            deadline, cpu_used = _VP9_PRESET[preset]
            return {"deadline": deadline, "cpu-used": str(cpu_used)}
        raise UsageError(f"unknown preset {preset!r} for libvpx-vp9 (an x264 preset name or cpu-used -8..8)")
    raise UsageError(f"preset is not supported for codec {codec}")  # pragma: no cover


def video_encoder(name: str) -> "av.Codec":
    """FFmpeg's video encoder ``name``; :class:`UsageError` if there is none by that name."""
    try:
        codec = av.Codec(name, "w")
    except Exception:
        raise UsageError(f"unknown video encoder {name!r}") from None
    if codec.type != "video":
        raise UsageError(f"{name} is not a video encoder")
    return codec


def encoder_options(settings: EncoderSettings) -> Dict[str, str]:
    """FFmpeg options for ``settings``; UsageError for values the codec cannot take."""
    if settings.codec is None:
        settings = replace(settings, codec="libx264")
    profile = CODECS.get(settings.codec)
    if profile is None:
        if settings.crf is not None or settings.preset is not None:
            raise UsageError(f"crf/preset are not supported for codec {settings.codec} "
                             f"(supported: {', '.join(CODECS)})")
        return {"bf": "0"} if settings.no_reordering else {}
    options = profile.options(settings.codec, settings.crf, settings.preset)
    return {**options, "bf": "0"} if settings.no_reordering else options


# Formats written when --pix-fmt is not given: (for 8-bit input, for 10/12-bit input). Codecs
# not named here get _GENERIC_PIX_FMTS where they list them.
_GENERIC_PIX_FMTS = ("yuv420p", "yuv420p10le")
DEFAULT_PIX_FMTS: Dict[str, Tuple[str, str]] = {
    "prores_ks": ("yuv422p10le", "yuv422p10le"),   # ProRes is 10-bit 4:2:2 or 4:4:4 only
}
# Codecs whose alpha a decoder gives back, so input with alpha gets their alpha variant by
# default. Not libx265 (lists yuva420p, but this build refuses it when the encoder opens) nor
# libvpx-vp9 (keeps alpha as side data that FFmpeg's own VP9 decoder ignores); --pix-fmt can
# still ask for those.
ALPHA_CODECS = ("prores_ks", "ffv1")


def _supported(codec: "av.Codec") -> Tuple[str, ...]:
    return tuple(f.name for f in codec.video_formats or ())


def check_pix_fmt(codec: "av.Codec", name: str) -> None:
    """:class:`UsageError` (one line) unless ``codec`` can encode pixel format ``name``."""
    if video_format(name) is None:
        raise UsageError(f"unknown pixel format {name!r} (ffmpeg -pix_fmts lists them)")
    supported = _supported(codec)
    if supported and name not in supported:
        raise UsageError(f"{codec.name} cannot encode pixel format {name} (it takes: {', '.join(supported)})")


def choose_pix_fmt(codec: "av.Codec", requested: Optional[str], source_pix_fmt: Optional[str],
                   width: int, height: int) -> str:
    """The pixel format to encode: see the module docstring."""
    if requested is not None:
        check_pix_fmt(codec, requested)
        return pick_pix_fmt(codec, requested, width, height)
    supported = _supported(codec)
    eight, deep = DEFAULT_PIX_FMTS.get(codec.name, _GENERIC_PIX_FMTS)
    name = deep if sample_bits(source_pix_fmt) > 8 and (not supported or deep in supported) else eight
    if supported and name not in supported:
        name = supported[0]   # a codec outside the table that takes no YUV 4:2:0 (e.g. png: rgb24)
    if alpha_bits(source_pix_fmt) and codec.name in ALPHA_CODECS:
        for variant in (with_alpha(name), with_alpha(full_chroma(name))):
            if variant in supported:
                name = variant
                break
    return pick_pix_fmt(codec, name, width, height)


def what_is_lost(source_pix_fmt: Optional[str], pix_fmt: str, codec: str) -> Optional[str]:
    """What encoding ``source_pix_fmt`` input as ``pix_fmt`` loses (alpha, bits), in words for
    a warning; None when nothing is lost."""
    lost = []
    if alpha_bits(source_pix_fmt) and not alpha_bits(pix_fmt):
        lost.append(f"its alpha channel is dropped ({codec} {pix_fmt} has none)")
    bits_in, bits_out = sample_bits(source_pix_fmt), sample_bits(pix_fmt)
    if bits_in > bits_out:
        lost.append(f"its {bits_in}-bit samples are written at {bits_out} bits ({codec} {pix_fmt})")
    return " and ".join(lost) or None


def pick_pix_fmt(codec: "av.Codec", requested: str, width: int, height: int) -> str:
    """``requested``, or its 4:4:4 variant where ``requested`` subsamples chroma and the size is odd."""
    fmt = av.VideoFormat(requested)
    subsampled_w = fmt.chroma_width(width) != width
    subsampled_h = fmt.chroma_height(height) != height
    if not ((subsampled_w and width % 2) or (subsampled_h and height % 2)):
        return requested
    full = full_chroma(requested)
    supported = {f.name for f in codec.video_formats or ()}
    if full in supported:
        log.warning("%dx%d is odd-sized: %s cannot hold it, encoding %s as %s "
                    "(same picture size, full-resolution chroma)", width, height, requested, codec.name, full)
        return full
    raise UsageError(f"{codec.name} cannot encode an odd size ({width}x{height}) without changing it: "
                     f"use a codec with 4:4:4 support (libx264, libx265, libvpx-vp9, ffv1)")
