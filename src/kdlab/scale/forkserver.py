"""Where the local worker processes of ``kdlab run ... workers=N`` come from: a fork server that has imported kdlab's
worker code, and with it torch, once.

A spawned worker imports torch itself before it can train: ~1.5 s on 2 cores, while a small run takes about as
long. Forked from this server, a worker starts in milliseconds. The server is a fresh interpreter, never a fork of
the driver: a child of a process whose OpenMP thread pool has run hangs in its first multi-threaded operation (GNU
libgomp), and one of a process that started CUDA cannot use CUDA. So workers are as clean as spawned ones. ``kdlab
run`` starts the server first thing, so its imports overlap the driver's own.

This module imports nothing heavy: the command line calls it before it loads torch. (The server keeps the
environment it was started with, and one server serves every experiment of a Python session.)
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver

PRELOAD = ["kdlab.scale.worker"]


def worker_context() -> multiprocessing.context.SpawnContext | multiprocessing.context.ForkServerContext:
    """The multiprocessing context local workers start from: the fork server where the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_worker_server() -> None:
    """Start the fork server now (it imports in the background; the first worker waits for it)."""
    if worker_context().get_start_method() == "forkserver":
        multiprocessing.forkserver.ensure_running()
