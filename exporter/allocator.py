"""A fixed glibc mmap threshold, so freed large buffers go back to the OS (issue #11).

The soak behind PgBouncer saw RSS creep by 0.03-0.06 MiB/min while everything live stayed flat:
tracemalloc's traced total, ``gc`` object counts, ``sys.getallocatedblocks()`` and glibc's
``mallinfo2().uordblks`` (bytes malloc'ed and not freed). What grew was the main heap itself,
with ``fordblks`` (free bytes inside it) growing alongside: fragmentation, not a leak.

Each cycle allocates large, short-lived blocks in bursts: ``gzip.compress`` allocates four
64 KiB buffers for zlib's deflate state per call (two formats per query, plus the health
section), and every read of asyncpg's socket transport allocates a 256 KiB ``recv`` buffer
that is shrunk to what arrived.
When no free chunk in the heap is large enough for such a block, glibc either maps it (blocks
of at least ``M_MMAP_THRESHOLD``, 128 KiB by default; unmapped on ``free``) or grows the heap.
By default the threshold is dynamic: each mmapped block freed raises it to that block's size
(up to 32 MiB) and the heap's trim threshold to twice that, so after the first few reads every
256 KiB buffer that finds no free run long enough grows the heap instead (steps of about 0.5 MiB
were seen), and what is freed there stays in the heap as free space instead of going back.

Setting the threshold explicitly fixes it at ``MMAP_THRESHOLD`` and turns the dynamic adjustment
off (mallopt(3)): a block of 64 KiB or more that the heap's free space cannot hold is mapped and
unmapped on ``free``, never added to the heap, and the heap's top is trimmed past 128 KiB. The
cost is a few system calls and page faults when that happens (at most about 30 us per
``gzip.compress`` of a 20 KiB exposition on the soak machine): rendering happens once per query
run, never per scrape. Scrapes allocate no such block: the HTTP server is a buffered protocol
that reads (TCP and TLS alike) into buffers it shares between connections (16 KiB plaintext,
32 KiB ciphertext), and writes response bytes built once per snapshot; before it was, asyncio's
TLS layer allocated 256 KiB per record read, and mapping each of those halved the TLS ceiling.
Anywhere else (musl, macOS) this does nothing, and an operator's own ``MALLOC_MMAP_THRESHOLD_``
wins.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

# mallopt(3) parameter number (glibc malloc.h).
M_MMAP_THRESHOLD = -3
# zlib's 64 KiB deflate buffers and asyncio's 256 KiB recv buffers are both at or above it.
MMAP_THRESHOLD = 64 * 1024
ENVIRONMENT_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; returns whether it was set.

    Not set (False) when the C library is not glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is in
    the environment (glibc has then applied the operator's value at start-up)."""
    if ENVIRONMENT_OVERRIDE in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc only: musl's mallopt is a stub
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("glibc mmap threshold %s at %d bytes", "fixed" if done else "not fixed", threshold)
    return done
