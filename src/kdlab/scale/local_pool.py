"""Local worker processes for a parallel experiment: one per slot, forked from :mod:`kdlab.scale.forkserver`."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal

from kdlab.scale.forkserver import worker_context
from kdlab.scale.groups import Slot
from kdlab.scale.worker import GroupTask, serve


class LocalPool:
    """One worker process per slot (forked from :mod:`kdlab.scale.forkserver`), each fed one group at a time over
    its own pipe (a killed worker is noticed by its process sentinel and replaced on the next submit)."""

    name = "local"

    def __init__(self, slots: list[Slot]) -> None:
        self.ctx = worker_context()
        self.slots = slots
        self.threads = slots[0].threads
        self.size = len(slots)
        self.workers: dict[int, tuple] = {}  # slot index -> (process, connection)
        self.busy: dict[int, int] = {}  # slot index -> group id
        for slot in slots:  # all at once: a worker imports torch while another trains the teachers
            self._start(slot)

    def describe(self) -> str:
        pinned = {s.devices for s in self.slots if s.devices}
        where = f"GPU(s) {', '.join(','.join(d) for d in sorted(pinned))}" if pinned else "the CPU"
        return f"{len(self.slots)} local worker processes on {where}, {self.threads} torch thread(s) each"

    def has_free(self) -> bool:
        return len(self.busy) < len(self.slots)

    def submit(self, task: GroupTask) -> None:
        slot = next(s for s in self.slots if s.index not in self.busy)
        process, conn = self.workers[slot.index]
        if not process.is_alive():  # it died while idle
            process, conn = self._start(slot)
        conn.send(task)
        self.busy[slot.index] = task.group

    def _start(self, slot: Slot) -> tuple:
        conn, child = self.ctx.Pipe()
        process = self.ctx.Process(target=serve, args=(child, slot), name=f"kdlab-worker-{slot.index}")
        process.start()
        child.close()
        self.workers[slot.index] = (process, conn)
        return process, conn

    def wait(self) -> list[tuple]:
        """Events of the busy workers (blocks until there is at least one)."""
        watched = {}
        for index in self.busy:
            process, conn = self.workers[index]
            watched[conn], watched[process.sentinel] = index, index
        ready = multiprocessing.connection.wait(list(watched))
        events: list[tuple] = []
        for index in dict.fromkeys(watched[r] for r in ready):
            process, conn = self.workers[index]
            events += self._drain(index, conn)
            if index in self.busy and not process.is_alive():
                process.join()
                events.append(("died", self.busy.pop(index), f"its worker process {process.pid} died "
                                                             f"({_exit_reason(process.exitcode)})"))
        return events

    def _drain(self, index: int, conn) -> list[tuple]:
        events = []
        try:
            while conn.poll():
                event = conn.recv()
                events.append(event)
                if event[0] in ("group", "storage"):
                    self.busy.pop(index, None)
        except (EOFError, OSError):
            pass
        return events

    def close(self, force: bool = False) -> None:
        for process, conn in self.workers.values():
            if force:
                process.kill()
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass
        for process, conn in self.workers.values():
            process.join(timeout=None if not force else 10)
            conn.close()
        self.workers.clear()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}"
