"""streamer.passthrough: audio copied where the container takes it, re-encoded where it does
not; subtitles copied or dropped with a warning; container and stream tags kept.

Real encodes and muxes through PyAV; the sound is checked by decoding it back (a 440 Hz tone
must still be a 440 Hz tone, in sync with the video)."""
from __future__ import annotations

import io
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from streamer.passthrough import muxer_takes
from streamer.sinks import EncoderSettings, VideoSink
from streamer.sources import open_source


def copy_through(src: Path, out: Path, settings: EncoderSettings = EncoderSettings(), stop_after=None,
                 keep_partial=False) -> VideoSink:
    with open_source(str(src)) as source:
        sink = VideoSink(str(out), source.info, source.info.width, source.info.height, settings,
                         streams_from=source.path)
        for frame in source:
            if stop_after is not None and frame.index == stop_after:
                sink.abort(keep_partial=keep_partial)
                return sink
            sink.write(frame)
        sink.close()
    return sink


def decoded_audio(path: Path):
    """(first sample time in s, samples (channels, n) float, rate, codec) of every audio stream."""
    tracks = []
    with av.open(str(path)) as container:
        for stream in container.streams.audio:
            chunks, start = [], None
            for frame in container.decode(stream):
                if start is None and frame.pts is not None:
                    start = float(frame.pts * frame.time_base)
                chunks.append(frame.to_ndarray().reshape(frame.layout.nb_channels, -1)
                              if frame.format.is_planar else frame.to_ndarray().reshape(-1, frame.layout.nb_channels).T)
            tracks.append((start, np.concatenate(chunks, axis=1).astype(np.float64), stream.rate,
                           stream.codec_context.name))
            container.seek(0)
    return tracks


def video_span(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(f.pts * f.time_base) for f in container.decode(stream)]
    return times[0], times[-1] + float(1 / stream.average_rate)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    mono = samples.mean(axis=0)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * rate / len(mono))


def write_opus_mkv(path: Path, frames: np.ndarray, fps: int = 30) -> None:
    """A Matroska file with H.264 video and an Opus 440 Hz tone (MOV cannot hold Opus)."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        aus = out.add_stream("libopus", rate=48000)
        aus.layout = "stereo"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, fps)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        total = 48000 * len(frames) // fps
        t = np.arange(total) / 48000
        wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, total, 960):
            af = av.AudioFrame.from_ndarray(np.stack([wave[start:start + 960]] * 2), format="fltp",
                                            layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
            out.mux(aus.encode(af))
        out.mux(aus.encode(None))


def assert_same_tone_in_sync(src: Path, out: Path, tracks: int = 1) -> None:
    before, after = decoded_audio(src), decoded_audio(out)
    assert len(after) == tracks
    (_, a_samples, a_rate, _), v_start = before[0], video_span(src)[0]
    b_v_start, b_v_end = video_span(out)
    for b_start, b_samples, b_rate, _ in after:
        assert dominant_hz(b_samples, b_rate) == pytest.approx(440, abs=5)
        rms_a, rms_b = np.sqrt(np.mean(a_samples ** 2)), np.sqrt(np.mean(b_samples ** 2))
        assert rms_b == pytest.approx(rms_a, rel=0.1)          # the tone, not silence or clipping
        duration = b_samples.shape[1] / b_rate
        assert duration == pytest.approx(a_samples.shape[1] / a_rate, abs=0.05)
        assert abs((b_start - b_v_start) - (before[0][0] - v_start)) < 0.03   # still in sync
        assert b_start + duration <= b_v_end + 0.1


def test_muxer_probe_asks_ffmpeg_not_the_codec_list(tmp_path, sample_clip):
    opus = tmp_path / "opus.mkv"
    write_opus_mkv(opus, np.zeros((3, 32, 32, 3), np.uint8))
    with av.open(str(opus)) as container:
        stream = container.streams.audio[0]
        assert "opus" in av.open(io.BytesIO(), "w", format="mov").supported_codecs   # listed ...
        assert not muxer_takes("mov", stream)                                      # ... refused
        assert muxer_takes("mp4", stream) and muxer_takes("matroska", stream) and muxer_takes("webm", stream)
    with av.open(str(sample_clip.path)) as container:
        aac = container.streams.audio[0]
        assert muxer_takes("mp4", aac) and muxer_takes("mov", aac) and muxer_takes("mpegts", aac)
        assert not muxer_takes("webm", aac)


def test_aac_into_webm_is_reencoded_as_opus_with_vp9_video(clip_factory, tmp_path, caplog):
    clip = clip_factory(frames=20, width=64, height=48)
    out = tmp_path / "out.webm"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        sink = copy_through(clip.path, out)           # no codec given: the container's (VP9)
    assert sink.settings.codec == "libvpx-vp9"
    assert "re-encoded as libopus" in caplog.text and ".webm" in caplog.text
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name in ("vp9", "libvpx-vp9")
        assert [s.codec_context.name for s in container.streams.audio] in (["opus"], ["libopus"])
    assert_same_tone_in_sync(clip.path, out)


def test_opus_into_mov_is_reencoded_as_aac(tmp_path, caplog):
    # Before: MOV lists Opus among its codecs, the header write then failed, and the run
    # stopped with "cannot encode ... with libx264 ...: Invalid argument".
    frames = np.random.default_rng(0).integers(0, 255, (15, 48, 64, 3), dtype=np.uint8)
    src = tmp_path / "opus.mkv"
    write_opus_mkv(src, frames)
    out = tmp_path / "out.mov"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        copy_through(src, out)
    assert "opus audio cannot go into a .mov file: audio stream 1 re-encoded as aac" in caplog.text
    with av.open(str(out)) as container:
        assert container.streams.video[0].frames == 15 or sum(1 for _ in container.decode(video=0)) == 15
    assert_same_tone_in_sync(src, out)


def test_copyable_audio_is_never_reencoded(clip_factory, tmp_path, caplog):
    clip = clip_factory(frames=10, width=64, height=48)
    for name in ("out.mkv", "out.mov", "out.ts"):
        with caplog.at_level(logging.WARNING, logger="streamer"):
            copy_through(clip.path, tmp_path / name)
        assert "re-encoded" not in caplog.text
        with av.open(str(clip.path)) as a, av.open(str(tmp_path / name)) as b:
            before = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
            after = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
        if name.endswith(".ts"):   # MPEG-TS frames AAC with a 7-byte ADTS header; payload unchanged
            assert all(p[:2] == b"\xff\xf1" for p in after)
            after = [p[7:] for p in after]
        assert after == before


def test_partial_output_keeps_reencoded_audio_up_to_the_last_frame(clip_factory, tmp_path):
    clip = clip_factory(frames=30, width=64, height=48)
    out = tmp_path / "out.webm"
    sink = copy_through(clip.path, out, stop_after=12, keep_partial=True)
    assert sink.frames_written == 12 and out.exists()
    [(start, samples, rate, _)] = decoded_audio(out)
    end = start + samples.shape[1] / rate
    assert 12 / 30 - 0.05 < end < 12 / 30 + 0.1        # cut where the video stops, not at 1 s
    assert dominant_hz(samples, rate) == pytest.approx(440, abs=10)


def write_film(path: Path, frames: int = 12, fps: int = 25) -> list:
    """A Matroska 'film': H.264 video, English (default) and French AAC tracks, German ASS
    subtitles, a title and a stale encoder tag. Returns the subtitle packets (pts ms, payload)."""
    subtitles = [(80, b"0,0,Default,,0,0,0,,Guten Tag"), (240, b"1,0,Default,,0,0,0,,Auf Wiedersehen")]
    with av.open(str(path), "w") as out:
        out.metadata.update({"title": "My film", "ENCODER": "some old muxer 1.0"})
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        tracks = []
        for language in ("eng", "fra"):
            aus = out.add_stream("aac", rate=48000)
            aus.layout = "stereo"
            aus.metadata["language"] = language
            tracks.append(aus)
        tracks[0].disposition = av.stream.Disposition.default
        tracks[1].disposition = av.stream.Disposition(0)
        subs = out.add_stream("ass")
        subs.metadata.update({"language": "deu", "title": "Deutsch"})
        subs.time_base = Fraction(1, 1000)
        out.start_encoding()
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        total = 48000 * frames // fps
        for aus, hz in zip(tracks, (440, 660)):
            for start in range(0, total, 1024):
                n = min(1024, total - start)
                wave = (0.2 * np.sin(2 * np.pi * hz * np.arange(start, start + n) / 48000)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, start, Fraction(1, 48000)
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))
        for pts, payload in subtitles:
            packet = av.Packet(payload)
            packet.pts = packet.dts = pts
            packet.duration, packet.time_base, packet.stream = 120, Fraction(1, 1000), subs
            out.mux(packet)
    return subtitles


def test_subtitles_tags_and_dispositions_are_kept(tmp_path, caplog):
    # Before: subtitles were dropped without a word, and the title, the track languages and
    # the default-track flags were lost (a bilingual file came out with two unnamed tracks).
    src = tmp_path / "film.mkv"
    subtitles = write_film(src)
    out = tmp_path / "out.mkv"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        copy_through(src, out)
    assert "dropped" not in caplog.text and "re-encoded" not in caplog.text
    with av.open(str(out)) as container:
        assert container.metadata.get("title") == "My film"
        assert "some old muxer" not in " ".join(container.metadata.values())
        audio = container.streams.audio
        assert [s.metadata.get("language") for s in audio] == ["eng", "fra"]
        assert [bool(s.disposition & av.stream.Disposition.default) for s in audio] == [True, False]
        [subs] = container.streams.subtitles
        assert subs.codec_context.name in ("ass", "ssa")
        assert (subs.metadata.get("language"), subs.metadata.get("title")) == ("deu", "Deutsch")
    assert subtitle_packets(out) == subtitle_packets(src)
    assert [text for _, text in subtitle_packets(out)] == [text for _, text in subtitles]


def subtitle_packets(path: Path) -> list:
    """(seconds after the first video frame, payload) of the first subtitle stream."""
    start = video_span(path)[0]
    with av.open(str(path)) as container:
        return [(round(float(p.pts * p.time_base) - start, 3), bytes(p))
                for p in container.demux(container.streams.subtitles[0]) if p.size]


def test_subtitles_the_container_cannot_hold_are_dropped_with_a_warning(tmp_path, caplog):
    src = tmp_path / "film.mkv"
    write_film(src)
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="streamer"):
        copy_through(src, out)
    assert "ass subtitles cannot go into a .mp4 file: subtitle stream 3 dropped (choose .mkv" in caplog.text
    with av.open(str(out)) as container:
        assert not container.streams.subtitles
        assert container.metadata.get("title") == "My film"
        assert [s.metadata.get("language") for s in container.streams.audio] == ["eng", "fra"]


def test_a_damaged_audio_packet_does_not_fail_a_reencode(clip_factory, tmp_path, caplog):
    clip = clip_factory(frames=15, width=64, height=48)
    damaged = tmp_path / "damaged.mp4"
    with av.open(str(clip.path)) as src, av.open(str(damaged), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        audio_seen = 0
        for packet in src.demux():
            if not packet.size:
                continue
            target = streams[packet.stream_index]
            if packet.stream.type == "audio":
                audio_seen += 1
                if audio_seen == 5:   # same timing, garbage payload
                    garbage = av.Packet(bytes(np.random.default_rng(0).integers(0, 256, packet.size, np.uint8)))
                    garbage.pts, garbage.dts, garbage.duration = packet.pts, packet.dts, packet.duration
                    garbage.time_base = packet.time_base
                    packet = garbage
            packet.stream = target
            out.mux(packet)
    out_path = tmp_path / "out.webm"   # AAC must be re-encoded here
    with caplog.at_level(logging.WARNING, logger="streamer"):
        copy_through(damaged, out_path)
    assert "1 damaged packet(s) could not be decoded and were skipped" in caplog.text
    [(_, samples, rate, _)] = decoded_audio(out_path)
    assert dominant_hz(samples, rate) == pytest.approx(440, abs=5)
