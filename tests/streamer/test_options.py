"""``Options``: one description of every run option, from which the CLI and ``streamer.run`` are made."""
import argparse
import dataclasses

import pytest

from streamer.cli import build_parser, options_from_args
from streamer.errors import UsageError
from streamer.options import Options, check_options, option_fields, options_from_mapping


def test_every_cli_flag_is_an_option_field_and_back():
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for option in option_fields():
        for spelling in option.flag.flags(option.name):
            assert spelling.flag in flags, spelling.flag
    cli_only = {"-h", "--help", "--stats", "-q", "--quiet"}
    from_fields = {s.flag for o in option_fields() for s in o.flag.flags(o.name)}
    assert flags - cli_only == from_fields
    api_only = {f.name for f in dataclasses.fields(Options)} - {o.name for o in option_fields()}
    assert api_only == {"progress", "queue_size", "cancel", "frame_range", "copy_streams"}


def test_a_command_line_round_trips_into_options():
    argv = ["in.mp4", "out.mkv", "--weights", "m.pth", "--attention", "auto", "--landmarks", "8", "--iters", "3",
            "--window", "16", "--device", "cpu", "--workers", "0", "--threads-per-worker", "1", "--tile", "64",
            "--tile-overlap", "8", "--clip-len", "4", "--clip-overlap", "1", "--decoder", "pyav", "--codec", "ffv1",
            "--crf", "10", "--preset", "fast", "--compare", "--keep-partial", "--prefilter", "none"]
    options = options_from_args(build_parser().parse_args(argv))
    assert options == dict(model="m.pth", attention="auto", landmarks=8, iters=3, window=16, device="cpu", workers=0,
                           threads_per_worker=1, tile=64, tile_overlap=8, clip_len=4, clip_overlap=1,
                           decoder="pyav", codec="ffv1", crf=10, preset="fast", compare=True, keep_partial=True,
                           prefilter="none")
    assert options_from_args(build_parser().parse_args(["a", "b", "--model", "swinir-tiny-sr2"])) == \
        {"model": "swinir-tiny-sr2"}
    assert options_from_args(argparse.Namespace(**{d: None for d in vars(build_parser().parse_args(["a", "b"]))})) == {}


def test_job_file_spellings_map_onto_the_same_fields():
    assert options_from_mapping({"tile-overlap": 4, "clip_len": 3}) == Options(tile_overlap=4, clip_len=3)
    with pytest.raises(UsageError, match=r"unknown option 'landmark' \(did you mean landmarks\?\)"):
        options_from_mapping({"landmark": 4})


@pytest.mark.parametrize("options, message", [
    (dict(task="painting"), "unknown task 'painting' (choose from denoise, "),
    (dict(task="denoise", attention="fast"), "unknown attention 'fast' (choose from exact, nystrom, auto)"),
    (dict(task="denoise", prefilter="sharpen"), "unknown prefilter 'sharpen' (choose from none, motion-wiener)"),
    (dict(task="denoise", decoder="opencv"), "unknown decoder 'opencv' (choose from pyav, decord)"),
    (dict(task="denoise", landmarks=0), "--landmarks must be >= 1, got 0"),
    (dict(task="denoise", workers=-1), "--workers must be >= 0, got -1"),
    (dict(task="denoise", threads_per_worker=0), "--threads-per-worker must be >= 1, got 0"),
    (dict(task="video-denoise", sigma=300), "--sigma is a noise level on the 0-255 scale, got 300"),
])
def test_checks_read_the_fields_choices_and_bounds(options, message):
    with pytest.raises(UsageError) as caught:
        check_options(Options(**options))
    assert str(caught.value).startswith(message)
