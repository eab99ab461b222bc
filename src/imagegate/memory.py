"""The C allocator's settings for a process that moves megabyte buffers on every request.

A relayed image answer is a few 4 MB buffers per request (the upstream's body, our answer). glibc's defaults give
such buffers back to the kernel when they are freed and map them again for the next request, so every request
page-faults its buffers in afresh: on a 2-core machine that was half of the gateway's CPU time per relayed image.
Keeping freed memory in the heap lets the next request reuse it. The resident size stays near its peak instead
of dropping between bursts, which is what the peak already was.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("imagegate.memory")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling; larger buffers are still mapped on their own
_TRIM_THRESHOLD = 256 * 1024 * 1024  # free heap kept before any is given back
# Threads' own arenas (heaps of at most 64 MB) are never trimmed below that threshold, so each could keep its peak:
# the event loop's main arena and one shared by the worker threads bound what is kept.
_ARENA_MAX = 2


def keep_freed_buffers() -> bool:
    """Tune glibc's malloc (a no-op elsewhere, e.g. musl or macOS). Returns whether it applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = all(mallopt(option, value) for option, value in (
        (_M_ARENA_MAX, _ARENA_MAX), (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
    ))
    log.debug("malloc tuned to keep freed buffers: %s", applied)
    return applied
