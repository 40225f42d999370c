"""Suite-wide settings, applied before any test module imports torch."""
import os

# Idle OpenMP threads sleep instead of spinning: with many small kernels (Nystrom, the tiny test
# models) spinning threads make every barrier slow whenever anything else uses the cores, which
# on a 2-core CI runner includes the suite's own subprocesses. The CLI makes the same choice.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
