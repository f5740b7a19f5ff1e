"""The fixed glibc mmap threshold (``exporter.allocator``, issue #11).

Each check runs in a fresh interpreter: the threshold is process-wide and cannot be unset, and
glibc's dynamic threshold depends on what the process freed before.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Two allocation patterns of the collection cycle, measured with glibc's mallinfo2():
# * asyncio's 256 KiB recv buffer, allocated and freed twenty times: how many were mapped
#   (hblks rises while the block is alive) rather than taken from the heap;
# * twenty of zlib's 64 KiB buffers alive at once: how much the heap grew (KiB) for them.
PROBE = """
import ctypes, sys
from exporter.allocator import pin_mmap_threshold

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else None
mapped = 0
for _ in range(20):
    before = libc.mallinfo2().hblks
    block = bytearray(256 * 1024)
    mapped += libc.mallinfo2().hblks - before
    del block
heap_before = libc.mallinfo2().arena
blocks = [bytearray(64 * 1024) for _ in range(20)]
heap_growth = (libc.mallinfo2().arena - heap_before) // 1024
print(pinned, mapped, heap_growth)
"""

GLIBC = platform.libc_ver()[0] == "glibc"


def probe(mode: str, **env: str) -> tuple[str, int, int]:
    environment = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**environment, **env},
    )
    pinned, mapped, heap_growth = result.stdout.split()
    return pinned, int(mapped), int(heap_growth)


def test_pinned_threshold_keeps_large_blocks_out_of_the_heap() -> None:
    """Pinned: every 256 KiB buffer is mapped (and unmapped on free), the twentieth as the
    first, and twenty live 64 KiB buffers grow the heap by less than two of them."""
    assert GLIBC, f"the exporter's images and CI run on glibc, not {platform.libc_ver()}"
    pinned, mapped, heap_growth = probe("pin")
    assert (pinned, mapped) == ("True", 20)
    assert heap_growth < 128, f"the heap grew {heap_growth} KiB for 20 x 64 KiB"


def test_default_threshold_grows_the_heap_instead() -> None:
    """What the pin prevents: by default only the first 256 KiB buffer is mapped (freeing it
    raises the threshold, the other nineteen come from the heap), and the 64 KiB buffers,
    below the default 128 KiB threshold, grow it by at least half their size (the rest fits
    the free space the 256 KiB buffers left at its top)."""
    pinned, mapped, heap_growth = probe("default")
    assert (pinned, mapped) == ("None", 1)
    assert heap_growth >= 20 * 64 // 2, f"the heap grew only {heap_growth} KiB"


def test_operator_threshold_wins() -> None:
    """MALLOC_MMAP_THRESHOLD_ in the environment: glibc applied it at start-up and the
    exporter leaves it alone (1 MiB here: no buffer is mapped)."""
    assert probe("pin", MALLOC_MMAP_THRESHOLD_=str(1024 * 1024))[:2] == ("False", 0)
