"""Real video files for the streamer tests, made with PyAV from known clean frames.

``clip_factory`` is the one to use::

    def test_something(clip_factory):
        clip = clip_factory(frames=6, width=64, height=48, degradation="noise")
        clip.path      # the encoded file (degraded frames, AAC audio unless audio=False)
        clip.clean     # (T, H, W, 3) uint8 frames before degradation
        clip.written   # (T, H, W, 3) uint8 frames that went into the encoder
        clip.pts, clip.time_base, clip.fps
    # options: frames, width, height, fps, pts= + time_base= (variable rate), audio, degradation
    # ("noise" | "blur" | "down2" | "down4"), codec, pix_fmt, crf, photo, seed, name (file name,
    # its extension picks the container), color (FFmpeg colour enums, e.g. BT709_TV below)

``decode_file(path)`` reads a file back (frames, pts, time base, audio packets) for assertions.
Camera-pan frames are cached per session: the same (frames, size, photo) is rendered once.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import av
import numpy as np
import pytest

from streamer import samples

_PAN_CACHE: dict = {}

# bt709 matrix, primaries and transfer, limited ("tv") range, as FFmpeg enum values.
BT709_TV = {"color_range": 1, "colorspace": 1, "color_primaries": 1, "color_trc": 1}


def pan_frames(frames: int, width: int, height: int, photo: str = "astronaut") -> np.ndarray:
    """Session-cached ``samples.camera_pan`` (read-only array: copy before modifying)."""
    key = (frames, width, height, photo)
    if key not in _PAN_CACHE:
        arr = samples.camera_pan(frames, width, height, photo)
        arr.setflags(write=False)
        _PAN_CACHE[key] = arr
    return _PAN_CACHE[key]


@dataclass
class SampleClip:
    path: Path
    clean: np.ndarray              # (T, H, W, 3) before degradation
    written: np.ndarray            # (T, H, W, 3) what was encoded
    pts: List[int]                 # in ``time_base`` units
    time_base: Fraction
    fps: int
    has_audio: bool

    @property
    def n_frames(self) -> int:
        return int(self.written.shape[0])

    @property
    def width(self) -> int:
        return int(self.written.shape[2])

    @property
    def height(self) -> int:
        return int(self.written.shape[1])


ClipFactory = Callable[..., SampleClip]


@pytest.fixture
def clip_factory(tmp_path: Path) -> ClipFactory:
    """Make a real clip file under ``tmp_path``; see the module docstring."""
    counter = [0]

    def make(
        name: Optional[str] = None,
        frames: int = 8,
        width: int = 64,
        height: int = 48,
        fps: int = 30,
        pts: Optional[Sequence[int]] = None,
        time_base: Optional[Fraction] = None,
        audio: bool = True,
        degradation: Optional[str] = None,
        codec: str = "libx264",
        pix_fmt: str = "yuv420p",
        crf: int = 12,
        photo: str = "astronaut",
        seed: int = 0,
        color: Optional[dict] = None,
    ) -> SampleClip:
        counter[0] += 1
        path = tmp_path / (name or f"clip{counter[0]}.mp4")
        clean = pan_frames(frames, width, height, photo)
        written = samples.degrade(clean.copy(), degradation, seed=seed) if degradation else clean
        tb = time_base or Fraction(1, fps)
        samples.write_clip(path, written, fps=fps, pts=pts, time_base=time_base, audio=audio,
                           codec=codec, pix_fmt=pix_fmt, crf=crf, color=color)
        return SampleClip(path=path, clean=clean, written=written,
                          pts=list(pts) if pts is not None else list(range(frames)),
                          time_base=tb, fps=fps, has_audio=audio)

    return make


@pytest.fixture
def sample_clip(clip_factory: ClipFactory) -> SampleClip:
    """The default small clip: 8 frames 64x48 at 30 fps, H.264 + AAC, clean frames."""
    return clip_factory()


@pytest.fixture
def noisy_clip(clip_factory: ClipFactory) -> SampleClip:
    """8 frames 64x48, Gaussian noise sigma 25 over the clean pan, H.264 + AAC."""
    return clip_factory(degradation="noise")


@dataclass
class DecodedFile:
    images: List[np.ndarray]                     # RGB uint8
    pts: List[Optional[int]]
    time_base: Fraction
    average_rate: Optional[Fraction]
    width: int
    height: int
    pix_fmt: str
    codec_name: str
    duration: Optional[float]                     # video stream duration, seconds
    audio_packets: List[Tuple[Optional[int], bytes]]   # (pts, payload) of the first audio stream
    audio_time_base: Optional[Fraction]
    color: dict                                  # first frame's tags: range, space, primaries, trc
    container_duration: Optional[float]          # seconds, the container's (longest stream)


def decode_file(path: str | Path) -> DecodedFile:
    """Decode every video frame and collect the first audio stream's packets."""
    with av.open(str(path)) as container:
        vs = container.streams.video[0]
        info = dict(time_base=vs.time_base, average_rate=vs.average_rate, width=vs.codec_context.width,
                    height=vs.codec_context.height, pix_fmt=vs.codec_context.pix_fmt,
                    codec_name=vs.codec_context.name,
                    duration=float(vs.duration * vs.time_base) if vs.duration is not None else None)
        info["container_duration"] = container.duration / av.time_base if container.duration else None
        images, pts, color = [], [], {}
        for frame in container.decode(vs):
            if not color:
                color = {"color_range": int(frame.color_range), "colorspace": int(frame.colorspace),
                         "color_primaries": int(frame.color_primaries), "color_trc": int(frame.color_trc)}
            images.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
    audio_packets: List[Tuple[Optional[int], bytes]] = []
    audio_tb = None
    with av.open(str(path)) as container:
        if container.streams.audio:
            aus = container.streams.audio[0]
            audio_tb = aus.time_base
            for packet in container.demux(aus):
                if packet.size:
                    audio_packets.append((packet.pts, bytes(packet)))
    return DecodedFile(images=images, pts=pts, audio_packets=audio_packets, audio_time_base=audio_tb,
                       color=color, **info)


def write_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    """An .m4a/.mp4 file with an AAC tone and no video stream."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        aus = out.add_stream("aac", rate=48000)
        aus.layout = "stereo"
        samples._encode_tone(out, aus, seconds)
    return path


@pytest.fixture
def bt709_tv() -> dict:
    """Colour tags for ``clip_factory(color=...)``: bt709 everything, limited range."""
    return dict(BT709_TV)


@pytest.fixture
def decode() -> Callable[[str | Path], DecodedFile]:
    """``decode(path)`` → :class:`DecodedFile` (fixture form of :func:`decode_file`)."""
    return decode_file


@pytest.fixture
def audio_only_file(tmp_path: Path) -> Path:
    """``tmp_path/audio_only.mp4``: AAC audio, no video stream."""
    return write_audio_only(tmp_path / "audio_only.mp4")
