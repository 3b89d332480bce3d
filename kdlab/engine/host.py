"""The host's memory allocator, tuned for training loops on the CPU.

glibc's malloc serves large blocks with ``mmap`` and gives freed heap memory back to the OS above a *dynamic* trim
threshold. A training step frees almost everything it allocated (activations, gradients, oneDNN scratch) and allocates
it again in the next step, so with the dynamic thresholds the step's peak memory is unmapped and faulted in again every
step. For distillation the peak is larger (the student's saved activations plus the teacher's temporaries) and the
cost is measurable: ``benchmarks/kd_throughput.py`` counted ~15,000 minor page faults per online-KD step for
resnet56 -> resnet20 at batch 64, and online KD ran at 0.83-0.86 of its compute limit instead of ~0.95.

:func:`tune_cpu_allocator` fixes both thresholds once per process through ``mallopt`` (the in-process equivalent of
``MALLOC_MMAP_THRESHOLD_=32MiB MALLOC_TRIM_THRESHOLD_=1GiB``): blocks up to 32 MiB come from the heap and freed memory
is kept for reuse. Nothing numeric changes; the process keeps up to ~1 GiB of freed memory instead of returning it.

It is skipped when the user already chose (any ``MALLOC_*_THRESHOLD_`` variable, or an allocator in ``LD_PRELOAD`` such
as jemalloc or tcmalloc), when ``KDLAB_SYSTEM_ALLOCATOR=1`` is set, and where ``mallopt`` does not exist (not glibc).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 1024 * 1024 * 1024
USER_CHOICE = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
OPT_OUT = "KDLAB_SYSTEM_ALLOCATOR"


@functools.lru_cache(maxsize=None)  # once per process: the setting is the process's, not a module's state
def tune_cpu_allocator() -> str:
    """Fix glibc's mmap and trim thresholds for this process; returns what was done, in words (for the run log)."""
    if os.environ.get(OPT_OUT, "").strip() not in ("", "0"):
        return f"system allocator ({OPT_OUT} set)"
    chosen = [name for name in USER_CHOICE if os.environ.get(name)]
    if chosen:
        return f"allocator left as configured ({', '.join(chosen)})"
    mallopt = _mallopt()
    if mallopt is None:
        return "system allocator (no glibc mallopt)"
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "system allocator (mallopt refused)"
    return f"glibc malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"


def _mallopt():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int)
    func.restype = ctypes.c_int
    return func
