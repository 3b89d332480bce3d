"""The host: its memory allocator, tuned for training loops on the CPU, and the thread count of each epoch.

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
import time

from kdlab.errors import ConfigError

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


# -- threads on a shared machine -------------------------------------------------------------------------------------
# The thread count changes the order of floating-point sums, so the numbers of a run depend on it. By default (threads
# unset) a run therefore uses ONE count, fixed from the machine when it starts, never from the load: the same command
# gives the same table on an idle or a busy machine. `threads=auto` opts into load-adaptive threads: on a 2-core
# machine with one other busy process, 2 OpenMP threads spend most of each step waiting at a barrier for the thread
# that the OS descheduled: throughput fell to 0.26 of the idle figure (issue 13), while 1 thread kept 0.52; so each
# epoch then runs with the cores that other processes left free in the previous one (at least 1). Either way the count
# is recorded per epoch in the history, and the setting in the checkpoint, so a resumed run keeps it.

THREADS_ENV = "KDLAB_THREADS"  # pins the threads where the config leaves them unset (a worker's share, a test suite)
AUTO = "auto"


class OtherLoad:
    """CPU time that OTHER processes used since construction (or the last :meth:`restart`), in cores.

    Linux: ``/proc/stat``'s busy time minus this process's own CPU time; unlike the load average it does not count
    this process. None where /proc/stat is missing.
    """

    def __init__(self) -> None:
        self.start = self._read()

    def restart(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            import resource  # Unix only (getrusage)

            fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
            own = resource.getrusage(resource.RUSAGE_SELF)
        except (ImportError, OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal, without guest (counted in user)
        return time.perf_counter(), busy, own.ru_utime + own.ru_stime

    def cores(self) -> float | None:
        """Average number of cores busy with other processes since the start."""
        end = self._read()
        if self.start is None or end is None or end[0] - self.start[0] <= 0:
            return None
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / (end[0] - self.start[0]))


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_threads() -> int:
    """The fixed count an unset ``threads`` means: ``KDLAB_THREADS`` when set, else torch's intra-op thread count now
    (OpenMP's default: the machine's cores, or ``OMP_NUM_THREADS``; a worker process has set its share)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    import torch  # host.py itself stays torch-free: the CLI and the fork server read THREADS_ENV before torch loads

    return torch.get_num_threads()


class ThreadPolicy:
    """How many intra-op threads each epoch gets.

    ``threads`` an int: pinned to it. ``None`` (unset): a count fixed once, from the machine (:func:`machine_threads`),
    whatever the load. ``"auto"``: each epoch, the cores that other processes left free (load-adaptive, opt-in).
    :meth:`resume` makes an unset policy continue with the setting a checkpointed run started with.
    """

    SAMPLE_S = 0.1  # the first adaptive decision of a run samples the other processes' load this long

    def __init__(self, threads: int | str | None = None) -> None:
        if not (threads is None or threads == AUTO or (isinstance(threads, int) and threads > 0)):
            raise ConfigError(f"config key 'threads' must be a positive integer or auto, got {threads!r}")
        self.requested = threads
        self.adaptive = threads == AUTO
        self.count: int | None = None if self.adaptive else (threads if isinstance(threads, int) else machine_threads())
        self.load: OtherLoad | None = None
        self.caller: int | None = None  # torch's thread count before the first apply, put back by restore()

    @property
    def setting(self) -> int | str:
        """What the run records (result, checkpoint, meta.json): the fixed count, or ``"auto"``."""
        return AUTO if self.adaptive else int(self.count or 1)

    def resume(self, recorded: int | str | None) -> None:
        """Continue a checkpointed run: an unset ``threads`` takes the setting the run started with (its count, or
        ``"auto"``); an explicit ``threads`` (a count or auto) is the user's choice and stays."""
        if self.requested is not None or recorded is None:
            return
        if recorded == AUTO:
            self.adaptive, self.count = True, None
        elif isinstance(recorded, int) and recorded > 0:
            self.adaptive, self.count = False, recorded

    def choose(self) -> int:
        """Threads for the next epoch: the fixed count, else (auto) the cores left free by other processes."""
        if not self.adaptive:
            return int(self.count or 1)
        if self.load is None:
            self.load = OtherLoad()
            time.sleep(self.SAMPLE_S)
        others = self.load.cores()
        self.load.restart()
        cores = available_cores()
        return cores if others is None else max(1, min(cores, int(cores - others + 0.5)))

    def apply(self) -> int:
        """Set torch's intra-op threads for the next epoch; returns the number."""
        import torch  # (host.py stays torch-free until a run applies its threads)

        threads = self.choose()
        if self.caller is None:
            self.caller = torch.get_num_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads

    def restore(self) -> None:
        """Give the process back the thread count it had before the first :meth:`apply` (a library call leaves
        torch's global setting as it found it)."""
        import torch  # (host.py stays torch-free until a run applies its threads)

        if self.caller is not None and torch.get_num_threads() != self.caller:
            torch.set_num_threads(self.caller)
        self.caller = None
