"""The awkward-input corpus (issue 16): files made by the FFmpeg program (and PyAV where the program
cannot make the damage), each with the outcome nystra-stream promises for it.

``python tests/corpus/generate.py DIR`` writes every case into DIR and prints the table; the tests
(``tests/corpus/test_corpus.py``) generate each case into a temporary directory and run the CLI on it.
An :class:`Expect` says what must happen: the exit code, for a successful run how many frames the
output holds (``"ffprobe"``: as many as FFmpeg itself decodes from the input's first moving video
stream), and for a failure a phrase of the one error line. ``note`` is the README's wording.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

SIZE = "64x48"
RATE = 12
SECONDS = 1            # 12 frames: every case runs in a second or two


@dataclass(frozen=True)
class Expect:
    code: int
    frames: Union[int, str, None] = None       # exact count, "ffprobe", or None (not checked)
    error: Optional[str] = None                # a phrase of the one error line (code != 0)
    warning: Optional[str] = None              # a phrase of a warning line (code == 0)
    audio_seconds: Optional[float] = None      # at least this much audio in the output
    pix_fmt: Optional[str] = None              # the output's pixel format (ffprobe)
    color_trc: Optional[str] = None            # the output's transfer tag (ffprobe)
    note: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]
    expect: Expect


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120,
                   stdin=subprocess.DEVNULL)


def _src(size: str = SIZE, rate: int = RATE, seconds: float = SECONDS) -> List[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _tone(seconds: float = SECONDS) -> List[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]


def _made(name: str, *args: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        out = directory / name
        ffmpeg(*args, str(out))
        return out
    return make


def _truncated(name: str, keep: float, *args: str) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        full = directory / ("full-" + name)
        ffmpeg(*args, str(full))
        data = full.read_bytes()
        out = directory / name
        out.write_bytes(data[: int(len(data) * keep)])
        return out
    return make


def _damaged(directory: Path) -> Path:
    """An H.264 MP4 with the bytes of a few packets in its second half replaced by garbage."""
    import av

    good = directory / "good.mp4"
    ffmpeg(*_src(seconds=2), "-c:v", "libx264", "-g", "6", "-bf", "0", str(good))
    out = directory / "damaged.mp4"
    rng = random.Random(5)
    with av.open(str(good)) as inp, av.open(str(out), "w") as dst:
        ist = inp.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        for n, packet in enumerate(p for p in inp.demux(ist) if p.size):
            if n in (14, 15, 19):
                bad = av.Packet(bytes(rng.randrange(256) for _ in range(packet.size)))
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                packet = bad
            packet.stream = ost
            dst.mux(packet)
    return out


def _edit_list(directory: Path) -> Path:
    """An MP4 cut by stream copy away from a keyframe: an edit list hides the leading frames."""
    full = directory / "bframes.mp4"
    ffmpeg(*_src(seconds=3), "-c:v", "libx264", "-bf", "3", "-g", "24", str(full))
    out = directory / "edit-list.mp4"
    ffmpeg("-ss", "0.6", "-i", str(full), "-c", "copy", str(out))
    return out


def _text(directory: Path) -> Path:
    out = directory / "notes.mp4"
    out.write_text("this is not a video\n" * 50)
    return out


def _empty(directory: Path) -> Path:
    out = directory / "empty.mp4"
    out.write_bytes(b"")
    return out


def _subtitles_only(directory: Path) -> Path:
    srt = directory / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    out = directory / "subtitles-only.mkv"
    ffmpeg("-i", str(srt), "-c:s", "srt", str(out))
    return out


def _cover_art(directory: Path) -> Path:
    cover = directory / "cover.png"
    ffmpeg(*_src(), "-frames:v", "1", str(cover))
    out = directory / "song.mp3"
    ffmpeg(*_tone(), "-i", str(cover), "-map", "0:a", "-map", "1:v", "-c:v", "png", "-disposition:v",
           "attached_pic", "-id3v2_version", "3", str(out))
    return out


def declare_huge_frames(path: Path, side: int) -> Path:
    """A Matroska file whose header declares ``side`` x ``side`` raw grey frames, with one tiny packet."""
    from fractions import Fraction

    import av

    with av.open(str(path), "w") as dst:
        st = dst.add_stream("rawvideo", rate=25)
        st.width = st.height = side
        st.pix_fmt = "gray"
        dst.start_encoding()
        packet = av.Packet(b"\0" * 4096)
        packet.pts = packet.dts = 0
        packet.time_base = Fraction(1, 1000)
        packet.stream = st
        dst.mux(packet)
    return path


def _huge_header(directory: Path) -> Path:
    """16000x16000 declared (the test limits memory to 8 GiB)."""
    return declare_huge_frames(directory / "huge-header.mkv", 16000)


# A 10-bit luma ramp (64 + 3x + y: about 830 levels at 256x64, more than 8 bits can hold).
GRADIENT_10 = "nullsrc=s=256x64:r=12:d=1,format=yuv420p10le,geq=lum='64+X*3+Y':cb=512:cr=512"
# Transfer names (ffmpeg -color_trc) of the two HDR systems: PQ and HLG.
HDR_TRC = {"pq": "smpte2084", "hlg": "arib-std-b67"}


def hdr_hevc(path: Path, trc: str = "smpte2084") -> Path:
    """A 10-bit HEVC gradient tagged BT.2020 (primaries, matrix), limited range, transfer ``trc``."""
    ffmpeg("-f", "lavfi", "-i", GRADIENT_10, "-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params",
           "log-level=none:crf=4", "-color_primaries", "bt2020", "-colorspace", "bt2020nc", "-color_trc", trc,
           "-color_range", "tv", str(path))
    return path


def prores_alpha(path: Path) -> Path:
    """ProRes 4444 with an alpha plane that varies (a gradient), so that keeping it means something."""
    ramp = f"nullsrc=s={SIZE}:r={RATE}:d={SECONDS},format=gray10le,geq=lum='X*12+Y*4'"   # the same every run
    ffmpeg(*_src(), "-f", "lavfi", "-i", ramp,
           "-filter_complex", "[1]format=gray10le[a];[0]format=yuv444p10le[v];[v][a]alphamerge",
           "-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le", str(path))
    return path


def _directory(directory: Path) -> Path:
    out = directory / "a-folder.mp4"
    out.mkdir()
    return out


OK = Expect(0, "ffprobe")
X264 = ["-c:v", "libx264"]

CASES: List[Case] = [
    Case("h264-mp4", _made("plain.mp4", *_src(), *_tone(), *X264, "-c:a", "aac"), OK),
    Case("damaged-mp4", _damaged, Expect(0, "ffprobe", warning="is damaged",
         note="restored as FFmpeg decodes it; undecodable packets skipped (a gap), counted")),
    Case("truncated-mp4-faststart", _truncated("cut-faststart.mp4", 0.6, *_src(seconds=2), *X264,
         "-g", "6", "-movflags", "+faststart"), Expect(0, "ffprobe", note="the frames that are there")),
    Case("truncated-mp4-index-at-end", _truncated("cut-moov-at-end.mp4", 0.6, *_src(seconds=2), *X264),
         Expect(2, error="cannot read", note="no index: nothing FFmpeg can read")),
    Case("truncated-ts", _truncated("cut.ts", 0.6, *_src(seconds=2), *X264, "-g", "6"), Expect(0, "ffprobe")),
    Case("truncated-mkv", _truncated("cut.mkv", 0.6, *_src(seconds=2), "-c:v", "ffv1"), Expect(0, "ffprobe")),
    Case("zero-frame-video", _made("no-frames.mkv", *_src(), "-frames:v", "0", *X264),
         Expect(2, error="cannot read", note="a video stream with no frames")),
    Case("one-frame", _made("one.mp4", *_src(), "-frames:v", "1", *X264), Expect(0, 1)),
    Case("b-frames-edit-list", _edit_list, Expect(0, "ffprobe", note="the edit list is honoured")),
    Case("negative-start", _made("negative-start.mkv", "-itsoffset", "-0.5", *_src(), *X264),
         Expect(0, "ffprobe")),
    Case("interlaced", _made("interlaced.ts", *_src(), "-c:v", "mpeg2video", "-flags", "+ilme+ildct",
         "-top", "1"), Expect(0, "ffprobe")),
    Case("full-range-mjpeg", _made("full-range.avi", *_src(), "-c:v", "mjpeg", "-pix_fmt", "yuvj420p"), OK),
    Case("grey", _made("grey.mkv", *_src(), "-c:v", "ffv1", "-pix_fmt", "gray"), OK),
    Case("yuv444", _made("444.mp4", *_src(), *X264, "-pix_fmt", "yuv444p"), OK),
    Case("odd-size", _made("odd.mkv", *_src(size="63x47"), "-c:v", "ffv1"),
         Expect(0, "ffprobe", note="the odd size is kept")),
    Case("multiple-video-streams", _made("two-videos.mkv", *_src(), *_src(size="32x24"), "-map", "0:v",
         "-map", "1:v", "-c:v", "ffv1"), Expect(0, "ffprobe", note="the first video stream is used")),
    Case("audio-longer-than-video", _made("long-audio.mkv", *_src(), *_tone(3), "-c:v", "ffv1", "-c:a", "flac"),
         Expect(0, "ffprobe", audio_seconds=2.9, note="all the audio is kept")),
    Case("subtitles-only", _subtitles_only, Expect(2, error="no video stream")),
    Case("audio-only", _made("audio.m4a", *_tone(), "-c:a", "aac"), Expect(2, error="no video stream")),
    Case("cover-art-only", _cover_art, Expect(2, error="only a cover picture")),
    Case("not-a-video", _text, Expect(2, error="cannot read")),
    Case("empty-file", _empty, Expect(2, error="is empty")),
    Case("a-directory", _directory, Expect(2, error="is a directory")),
    Case("huge-header", _huge_header, Expect(2, error="declares 16000x16000",
         note="refused before decoding, with the memory it would need")),
    Case("vfr-mp4", _made("vfr.mp4", *_src(seconds=2), "-vf", "setpts='if(lt(N,12),N,12+2*(N-12))/TB/12'",
         *X264, "-fps_mode", "vfr"), Expect(0, "ffprobe", note="each frame keeps its time")),
    Case("rotated-phone-video", _made("rotated.mp4", *_src(), *X264, "-metadata:s:v:0", "rotate=90"), OK),
    Case("anamorphic", _made("anamorphic.mkv", *_src(), "-vf", "setsar=4/3", "-c:v", "ffv1"), OK),
    Case("vp9-webm", _made("vp9.webm", *_src(), "-c:v", "libvpx-vp9", "-deadline", "realtime"), OK),
    Case("hevc-mkv", _made("hevc.mkv", *_src(), "-c:v", "libx265", "-x265-params", "log-level=none"), OK),
    Case("hevc-10-bit-pq", lambda d: hdr_hevc(d / "pq.mkv", HDR_TRC["pq"]),
         Expect(0, "ffprobe", pix_fmt="yuv420p10le", color_trc="smpte2084",
                note="restored and written at 10 bits (the codec's 10-bit format), BT.2020/PQ tags kept")),
    Case("hevc-10-bit-hlg", lambda d: hdr_hevc(d / "hlg.mkv", HDR_TRC["hlg"]),
         Expect(0, "ffprobe", pix_fmt="yuv420p10le", color_trc="arib-std-b67",
                note="the same, BT.2020/HLG tags kept")),
    Case("prores-4444-alpha", lambda d: prores_alpha(d / "alpha.mov"),
         Expect(0, "ffprobe", pix_fmt="yuv420p10le", warning="alpha channel is dropped",
                note="alpha kept where the output codec holds it (prores_ks, ffv1); otherwise one warning")),
    Case("av1-mkv", _made("av1.mkv", *_src(), "-c:v", "libaom-av1", "-cpu-used", "8"), OK),
    Case("mpeg2-ts-with-audio", _made("broadcast.ts", *_src(), *_tone(), "-c:v", "mpeg2video", "-c:a", "mp2"), OK),
    Case("raw-h264-no-timestamps", _made("raw.h264", *_src(), *X264, "-f", "h264"),
         Expect(0, "ffprobe", note="timestamps synthesised from the frame rate")),
    Case("y4m", _made("raw.y4m", *_src()), OK),
    Case("animated-gif", _made("anim.gif", *_src()), OK),
    Case("png-image", _made("still.png", *_src(), "-frames:v", "1"), Expect(0, 1, note="a one-frame video")),
]


def by_name() -> Dict[str, Case]:
    return {case.name: case for case in CASES}


def ffprobe_video(path: Path) -> Dict[str, str]:
    """ffprobe's description of the first video stream (codec, pix_fmt, color_* tags)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)["streams"][0]


def ffprobe_frames(path: Path) -> int:
    """Frames FFmpeg decodes from the first video stream that is not cover art."""
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=index,codec_type,nb_read_frames:stream_disposition=attached_pic", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=120, check=True).stdout
    for stream in json.loads(out)["streams"]:
        if stream.get("codec_type") == "video" and not stream.get("disposition", {}).get("attached_pic"):
            return int(stream.get("nb_read_frames", 0))
    return 0


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    target.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        folder = target / case.name
        folder.mkdir(exist_ok=True)
        path = case.make(folder)
        print(f"{case.name:28s} exit {case.expect.code}  {os.path.relpath(path)}")
