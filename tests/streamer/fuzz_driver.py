"""Runs ``nystra-stream`` in this process on each file named on stdin, one JSON line per file on stdout.

The parent (tests/streamer/test_fuzz.py) reads the lines with a deadline per file, so a run that hangs is
seen, killed and reported; a crash of this process (FFmpeg segfault) likewise. Everything written to
file descriptor 2 during a run (Python's stderr, logging, FFmpeg) is captured per file.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def main() -> int:
    weights, out_dir = sys.argv[1], sys.argv[2]
    from streamer import cli   # after the test set OMP_WAIT_POLICY in our environment

    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        output = os.path.join(out_dir, os.path.basename(path) + ".out.mkv")
        with tempfile.TemporaryFile() as captured:
            saved = os.dup(2)
            sys.stderr.flush()
            os.dup2(captured.fileno(), 2)
            started = time.monotonic()
            try:
                code = cli.main([path, output, "--weights", weights, "--workers", "0", "-q", "--codec", "ffv1"])
            except BaseException as err:  # what main() let through: a bug, reported as such
                import traceback

                traceback.print_exc()
                code = f"raised {type(err).__name__}"
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
            seconds = time.monotonic() - started
            captured.seek(0)
            stderr = captured.read().decode("utf-8", "replace")
        print(json.dumps({"path": path, "code": code, "stderr": stderr, "seconds": round(seconds, 3),
                          "output": output}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
