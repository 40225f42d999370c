"""``nystra-stream``: restore a video file from the command line.

    nystra-stream INPUT OUTPUT --task denoise|deblur|sr2|sr4 [options]
    nystra-stream INPUT OUTPUT --task vsr|video-deblur [options]     # RVRT, downloaded on first use
    nystra-stream INPUT OUTPUT --task video-denoise --sigma 25 [options]
    nystra-stream INPUT OUTPUT --model NAME [options]   # a preset, downloaded on first use
    nystra-stream models                      # list the model presets and their cache state
    nystra-stream batch JOBS.yaml [--dry-run] [--force] [--only NAME ...] [--jobs N] [--report PATH]

Exit codes: 0 done, 2 bad usage or input (including unusable checkpoints), 1 failure while
processing, 130 interrupted. Errors are one line on stderr: ``nystra-stream: error: ...``.

Why the heavy modules (torch, FFmpeg, everything under ``pipelines``) are imported inside the
functions below, not at the top: :func:`main` first installs the Ctrl-C/SIGTERM handlers, so an
interrupt during the seconds torch takes to load still ends in one line and exit 130, and sets
the OpenMP wait policy, which OpenMP reads once, when torch loads it. (No import cycle is involved:
``python3 ../shared/tools/import_cycles.py`` finds none.)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Dict, List, NoReturn, Optional

from .process_env import configure_openmp

PROG = "nystra-stream"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text stays behind ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The one-file command's parser: INPUT, OUTPUT and a flag per run option
    (:func:`streamer.options.option_fields`), plus ``--stats`` and ``-q``."""
    from .options import option_fields

    p = _Parser(prog=PROG, description="Restore a video with a transformer model (PnP-Nystra attention). "
                "Run `nystra-stream models` to list the model presets.")
    p.add_argument("input", metavar="INPUT", help="input video file")
    p.add_argument("output", metavar="OUTPUT", nargs="?",
                   help="output video file (.mp4, .mkv, .mov, ...), network URL or - (may be left out with --serve)")
    groups: Dict[str, argparse._ArgumentGroup] = {}
    for option in option_fields():
        flag = option.flag
        group = groups.get(flag.group) or groups.setdefault(flag.group, p.add_argument_group(flag.group))
        spellings = flag.flags(option.name)
        target = group.add_mutually_exclusive_group() if len(spellings) > 1 else group
        for spelling in spellings:
            kwargs: Dict[str, object] = dict(help=spelling.help, default=None, dest=_dest(option.name, spelling,
                                                                                      len(spellings)))
            if option.type is bool:
                kwargs["action"] = "store_true"
            else:
                if spelling.metavar is not None:
                    kwargs["metavar"] = spelling.metavar
                if option.type in (int, float):
                    kwargs["type"] = option.type
                if flag.choices is not None:
                    kwargs["choices"] = tuple(flag.choices())
            target.add_argument(spelling.flag, **kwargs)
    g = groups["output"]
    g.add_argument("--stats", metavar="PATH", help="write run statistics as JSON")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return p


def _dest(name: str, spelling, count: int) -> str:
    """Where argparse puts a flag's value: the option's name, or the flag's own for an option
    spelled several ways (``--model`` / ``--weights``)."""
    return name if count == 1 else spelling.flag.lstrip("-").replace("-", "_")


def list_models(out=None) -> int:
    """``nystra-stream models``: every preset with its task, architecture, licence and cache state."""
    from pipelines import zoo
    from pipelines.errors import CheckpointError

    out = out or sys.stdout
    try:
        presets = zoo.presets()
        defaults = dict(zoo.DEFAULT_FOR_TASK)
        rows = [("NAME", "TASK", "ARCH", "LICENCE", "WEIGHTS", "ATTENTION", "DESCRIPTION")]
        rows += [(p.name, p.task, p.arch, p.licence_text, _weights_state(p), _attention_text(p), p.description)
                 for p in presets]
    except CheckpointError as err:  # a broken preset file in $NYSTRA_PRESETS
        return _fail(str(err), 2)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1], file=out)
    print(f"\n--task uses: {', '.join(f'{task} -> {name}' for task, name in defaults.items())}", file=out)
    print(f"Downloads are cached in {zoo.models_dir()} (set NYSTRA_HOME to move them); "
          f"extra preset files: ${zoo.PRESETS_ENV}.", file=out)
    restricted = [p.name for p in presets if p.non_commercial]
    if restricted:
        print(f"Non-commercial use only: {', '.join(restricted)}.", file=out)
    return 0


def _weights_state(preset) -> str:
    state = preset.status()
    if state == "missing" and not preset.bundled:
        return "not cached (manual)" if preset.source == "manual" else "not cached"
    return state


def _attention_text(preset) -> str:
    if preset.attention == "exact":
        return "exact"
    window = preset.window
    if window is None:  # the trained window
        return f"{preset.attention} m{preset.landmarks} T{preset.iters}"
    size = "x".join(map(str, window)) if isinstance(window, tuple) else str(window)
    return f"{preset.attention} w{size} m{preset.landmarks} T{preset.iters}"


def options_from_args(args: argparse.Namespace) -> dict:
    """The run options the command line gave (those left out take :class:`Options`' defaults)."""
    from .options import option_fields

    options = {}
    for option in option_fields():
        spellings = option.flag.flags(option.name)
        values = [getattr(args, _dest(option.name, s, len(spellings))) for s in spellings]
        given = [v for v in values if v is not None]
        if given:
            options[option.name] = given[0]
    return options


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


# Set by the CLI's SIGINT/SIGTERM handler. A KeyboardInterrupt that lands inside a library's
# import may be swallowed there (seen: Ctrl-C 0.3 s after start, during torch's import, and
# the run went on to the end); the flag still says the user asked to stop.
_interrupted = threading.Event()


class _LiveStop:
    """The run whose live input the first Ctrl-C/SIGTERM ends gracefully (a second one interrupts)."""

    run = None
    asked = False


def _raise_interrupt(signum, frame) -> None:
    if _LiveStop.run is not None and not _LiveStop.asked:
        _LiveStop.asked = True
        if _LiveStop.run.finish_input():   # finish what is in flight, finalise, exit 0
            return
    _interrupted.set()
    raise KeyboardInterrupt()


def _stop_if_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt()


def main(argv: Optional[List[str]] = None) -> int:
    # Ctrl-C and SIGTERM clean up alike: no worker left behind, nothing broken under OUTPUT,
    # one line on stderr, exit code 130 — from the first moment, imports and downloads included.
    _interrupted.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _cli(argv)
    except BaseException as err:
        if _interrupted.is_set() or isinstance(err, KeyboardInterrupt):
            # (an import a swallowed interrupt left half done may fail in any way afterwards)
            return _fail("interrupted; no output written", 130)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cli(argv: Optional[List[str]]) -> int:
    configure_openmp()
    from pipelines.runtime import configure_allocator  # (imports torch: after configure_openmp)
    configure_allocator()  # before the pipeline's threads and large tensors exist
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["models"]:
        if argv[1:] in ([], ["-h"], ["--help"]):
            if argv[1:]:
                print(f"usage: {PROG} models\n\nList the model presets: task, architecture, licence, "
                      "whether the weights are cached.")
                return 0
            return list_models()
        return _fail(f"`{PROG} models` takes no arguments (got {' '.join(argv[1:])})", 2)
    if argv[:1] == ["batch"]:
        from .batch import command as batch_command
        from .errors import UsageError
        logging.basicConfig(format=f"{PROG}: warning: %(message)s", level=logging.WARNING)
        try:
            return batch_command.run(argv[1:])
        except UsageError as err:
            return _fail(str(err), 2)
    args = build_parser().parse_intermixed_args(argv)   # OUTPUT (optional) may follow the options
    logging.basicConfig(format=f"{PROG}: warning: %(message)s", level=logging.WARNING)
    _announce("streamer.serve")   # where the view is: said even with -q
    return _main(args)


def _announce(logger_name: str) -> None:
    """Show the INFO lines of ``logger_name`` as plain ``nystra-stream: ...`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(lambda record: record.levelno == logging.INFO)   # warnings: the root's format
    for root_handler in logging.getLogger().handlers:   # (basicConfig's: warnings and worse)
        root_handler.setLevel(logging.WARNING)
    logger = logging.getLogger(logger_name)
    logger.setLevel(logging.INFO)
    for earlier in [h for h in logger.handlers if getattr(h, "nystra_announce", False)]:
        logger.removeHandler(earlier)   # main() called again in one process: one line, not two
    handler.nystra_announce = True
    logger.addHandler(handler)


def _main(args: argparse.Namespace) -> int:
    from pipelines.errors import CheckpointError

    from .errors import StreamerError, UsageError
    from .options import Options, check_options, check_preset_fits
    from .pipeline import Run

    options = options_from_args(args)
    if args.output is None and options.get("serve") is None:
        return _fail("the following arguments are required: OUTPUT (or --serve to watch without writing)", 2)
    try:
        check_options(Options(**options))   # before a download, which may take a while
    except UsageError as err:
        return _fail(str(err), 2)
    if args.model is not None or (args.task is not None and args.weights is None):
        from pipelines import zoo

        # Fetch (or verify) the preset's checkpoint now, before the frame progress bar starts.
        # (A bundled default needs no download: the run checks the input before loading it.)
        try:
            preset = zoo.get_preset(args.model) if args.model is not None else zoo.default_preset(args.task)
            check_preset_fits(preset, Options(**options))
            if args.model is not None or not preset.bundled:
                zoo.checkpoint_path(preset, progress=False if args.quiet else None)
        except zoo.UnknownModelError as err:
            return _fail(f"{err}: see `{PROG} models`; use --weights for a file", 2)
        except (UsageError, CheckpointError) as err:
            return _fail(str(err), 2)
    if args.stats and not os.path.isdir(os.path.dirname(os.path.abspath(args.stats))):
        return _fail(f"--stats: directory does not exist: {os.path.dirname(args.stats)}", 2)

    bar = _progress_bar(disable=args.quiet)
    options["progress"] = bar.update_to if bar is not None else None
    options["cancel"] = _interrupted
    run = Run(args.input, args.output, Options(**options))
    if bar is not None:
        bar.figures = run.live_stats
    stats, failure = run.stats, None
    _LiveStop.run, _LiveStop.asked = run, False
    try:
        _stop_if_interrupted()   # an interrupt swallowed while the libraries loaded
        run.execute()
    except KeyboardInterrupt:
        kept = f"; kept the {stats.frames_out} frames done in {stats.kept_partial}" \
            if stats.kept_partial else "; no output written"
        failure = (f"interrupted{kept}", 130)
    except (UsageError, CheckpointError) as err:
        failure = (str(err), 2)
    except StreamerError as err:
        failure = (str(err), err.exit_code)
    except Exception as err:  # a model or library error while processing
        failure = (f"processing failed: {type(err).__name__}: {err}", 1)
    finally:
        _LiveStop.run = None
        if bar is not None:
            bar.close()   # before any message, so it does not share the bar's line
    code = _fail(*failure) if failure else 0
    if args.stats:
        with open(args.stats, "w") as fh:
            json.dump(stats.to_dict(), fh, indent=2)
    if code == 0 and not args.quiet:
        done = f"wrote {args.output}" if args.output is not None else "done (nothing written)"
        print(f"{PROG}: {done}: {stats.summary()}", file=sys.stderr)
    return code


_BAR_KNOWN = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
_BAR_UNKNOWN = "{desc}: {n_fmt} frames [{elapsed}, {rate_noinv_fmt}{postfix}]"   # live: latency, drops


def _live_figures(stats: dict) -> str:
    """The progress bar's live part: no ETA for a stream, but what a live run is judged by."""
    p50, p95 = stats.get("latency_ms_p50"), stats.get("latency_ms_p95")
    latency = f"latency p50 {p50:.0f} p95 {p95:.0f} ms, " if p50 is not None else ""
    return f"{latency}{stats['frames_dropped']} dropped, {stats['reconnects']} reconnects"


def _progress_bar(disable: bool):
    """A tqdm bar (frames, fps, ETA) on stderr when it is a terminal; None when quiet.

    The rate is always frames per second (tqdm would flip to s/frame for slow models)."""
    if disable:
        return None
    from tqdm import tqdm

    class _Bar(tqdm):
        figures = None    # the run's live_stats, for a live input's latency and drops
        _shown_at = 0.0

        def update_to(self, done: int, total: Optional[int]) -> None:
            if total and self.total != total:
                self.total = total
                self.bar_format = _BAR_KNOWN
            now = time.monotonic()
            if self.figures is not None and now - self._shown_at >= 1.0:
                self._shown_at = now
                stats = self.figures()
                if stats["live"]:
                    self.set_postfix_str(_live_figures(stats), refresh=False)
            self.update(done - self.n)

    # disable=None: tqdm shows itself only on a terminal, keeping logs and pipes clean.
    return _Bar(unit="frame", desc=PROG, disable=None, dynamic_ncols=True, leave=False, bar_format=_BAR_UNKNOWN)


if __name__ == "__main__":
    sys.exit(main())
