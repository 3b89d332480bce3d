"""``executor=ray``: the plan's run groups as Ray tasks on a Ray cluster (``pip install 'kdlab[ray]'``).

``ray_address`` connects to an existing cluster (``auto``, ``ray://head:10001``, ``head:6379``); without one a local
Ray starts on the loopback address (and is shut down at the end), unless this process already runs one. Each group
is one task with its resources: ``ddp / workers_per_device`` GPUs on a cluster with GPUs (Ray sets the task's
``CUDA_VISIBLE_DEVICES``; fractions pack small runs onto one GPU), and ``cpus_per_worker`` CPUs (default 1 on a GPU
cluster, else the cluster's CPUs / ``workers``), which are also its torch threads. ``workers`` caps the tasks in
flight; without it Ray's resources decide. Tasks are not retried by Ray: a failed task fails the runs it had not
finished, and ``kdlab run`` again resumes them.

The experiment directory must be on storage every node mounts at the same path: each task first checks a marker
the driver wrote there and the experiment stops with one line if it is missing. kdlab (and any ``imports:``
plug-in) must be importable on every node; Python objects given through the API travel with the task (cloudpickle).
"""

from __future__ import annotations

from typing import Callable

from kdlab.errors import KdlabError
from kdlab.experiments.config import ExperimentConfig
from kdlab.scale.worker import GroupTask, ray_task

UNLIMITED = 1 << 30


class RayPool:
    name = "ray"

    def __init__(self, exp: ExperimentConfig, log: Callable[[str], None]) -> None:
        try:
            # optional package (the ray extra): imported for executor=ray only
            import ray
        except ImportError:
            raise KdlabError("executor=ray needs Ray: pip install 'kdlab[ray]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if exp.ray_address:
                ray.init(address=exp.ray_address, log_to_driver=True)
            else:  # a local Ray, reachable on the loopback address only
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=True)
            self.started = True
        resources = ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
        on_gpu = gpus > 0 and exp.device in ("auto", "cuda")
        self.size = exp.workers or None  # None: as many tasks in flight as Ray's resources allow
        self.limit = self.size or UNLIMITED
        num_gpus = exp.ddp / max(1, exp.workers_per_device) if on_gpu else 0
        num_cpus = exp.cpus_per_worker or (1 if on_gpu or not self.size else max(1, int(cpus // self.size)))
        self.threads = max(1, int(num_cpus))  # a run's ddp ranks share them
        self.where = (f"Ray tasks ({num_gpus:g} GPU, {num_cpus} CPU each; cluster: {gpus:g} GPU, {cpus:g} CPU"
                      f"{f', at most {self.size} at once' if self.size else ''})")
        self.remote = ray.remote(ray_task).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)
        self.refs: dict = {}  # object ref -> group id
        log(f"Ray: {'connected to ' + exp.ray_address if exp.ray_address else 'local instance'}; "
            f"the experiment directory must be on storage every node sees")

    def describe(self) -> str:
        return self.where

    def has_free(self) -> bool:
        return len(self.refs) < self.limit

    def submit(self, task: GroupTask) -> None:
        self.refs[self.remote.remote(task)] = task.group

    def wait(self) -> list[tuple]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        events: list[tuple] = []
        for ref in ready:
            group = self.refs.pop(ref)
            try:
                events += self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                events.append(("died", group, f"its Ray task failed ({type(exc).__name__}: {first.strip()})"))
        return events

    def close(self, force: bool = False) -> None:
        if force:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
