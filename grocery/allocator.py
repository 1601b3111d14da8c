"""Memory freed by one training step kept for the next, where the C library is glibc.

A training step allocates and frees the same large activations and gradients every time. glibc
hands blocks over its mmap threshold (128 KiB, rising to 32 MiB as it adapts) to fresh mappings and
unmaps them when freed, and gives the top of its heap back too, so every step faults its pages in
anew. On a 2-core AMD EPYC with AVX2 only, a fifth of the default recipe's CPU time went to the
kernel that way, and keeping the memory made a fp32 step 1.55x faster (docs/figures.md).
"""

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

# mallopt's parameters (malloc.h) and glibc's static defaults, restored afterwards.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # mallopt takes an int: 2 GiB of free heap top is kept before any is given back


@contextlib.contextmanager
def memory_kept() -> Iterator[bool]:
    """Within it, freed memory stays in the process for reuse (no mappings, no trimming); on leaving,
    glibc's defaults return and what is free goes back to the system. Yields whether it applied
    (False where the C library is not glibc: nothing changes)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: mallopt's parameters differ elsewhere
    except (OSError, AttributeError):
        return None
    return libc
