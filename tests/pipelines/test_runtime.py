"""The CPU allocator setting applies in a fresh process, and can be refused by the user."""
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 64 MiB block: glibc serves it by its own mmap (IS_MMAPPED, bit 1 of the chunk's size
# field just before the block), which munmap hands back on free, unless the setting applies.
PROBE = """
import ctypes, sys
from pipelines.runtime import configure_allocator
applied = configure_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(64 << 20)
in_heap = not (ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 2)
libc.free(block)
print(applied, in_heap, configure_allocator() == applied)
"""


def _probe(env_extra):
    import os
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not GLIBC, reason="glibc-only setting")
def test_large_blocks_come_from_the_heap_once_configured():
    assert _probe({"NYSTRA_MALLOC": ""}) == ["True", "True", "True"]


@pytest.mark.skipif(not GLIBC, reason="glibc-only setting")
def test_nystra_malloc_system_leaves_the_allocator_alone():
    # then the 64 MiB block is an mmap outside the heap, as glibc does by default
    assert _probe({"NYSTRA_MALLOC": "system"}) == ["False", "False", "True"]
