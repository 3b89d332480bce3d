"""Scale-out: an experiment's runs at once (local workers, Ray tasks) and each run over several processes (DDP).

The faces (:mod:`kdlab.api`, :mod:`kdlab.cli`) call :func:`run_experiment`, which chooses the executor from the
experiment's settings; every executor goes through :mod:`kdlab.experiments.runner`'s public steps.
"""

from __future__ import annotations

from typing import Callable

from kdlab import console
from kdlab.experiments.config import ExperimentConfig
from kdlab.experiments.runner import ExperimentRunner
from kdlab.runs.live import Live
from kdlab.scale.ddp import trainer_for
from kdlab.scale.parallel import ParallelRunner


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = console.log.info,
                   live: Live | None = None) -> dict:
    """Train or load every run of the experiment's plan with the executor it names; returns the summary."""
    runner = ExperimentRunner(exp, log=log, live=live, train_one=trainer_for(exp))
    if exp.executor == "ray" or (exp.workers or 1) > 1:
        return ParallelRunner(runner).run()
    return runner.run()
