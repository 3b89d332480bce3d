"""An experiment's checks before anything trains: every file it names and every finished run it will reuse is
readable and intact, and every architecture takes the data's images.

Names, hyperparameters, labels and seeds are checked earlier, before any data is read (:func:`kdlab.experiments.plan.
validate`); these checks need the data (its classes, channels and image size) or read files, so they run once the
data is loaded. A failure is one line (a :class:`~kdlab.errors.KdlabError`) and nothing has been trained.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdlab.config import TrainConfig
from kdlab.data import Splits, make_loader
from kdlab.models.hub import HUBS
from kdlab.models.probe import check_forward
from kdlab.models.weights import read_state_dict
from kdlab.runs.train import build_student, load_teacher
from kdlab.runs.live import Live
from kdlab.expdir import PlannedRun

CPU = torch.device("cpu")


def check_plan(plan: list[PlannedRun], splits: Splits, live: Live) -> None:
    """Raise a one-line error for the first problem found in ``plan``'s files and architectures."""
    images = _sample_images(plan, splits)
    checked: set[str] = set()
    for spec in plan:
        if spec.given_checkpoint:
            teacher, view = load_teacher(str(spec.given_checkpoint), splits.info, CPU, live, spec.config.imports)
            if images is not None and view is None:  # (with a view it sees its own input; checked as it trains)
                check_forward(teacher, images, f"teacher {spec.student!r} ({spec.given_checkpoint})")
            continue
        if spec.files.finished():
            spec.files.check_finished()
            spec.files.verify_result()
        pretrained = spec.config.model.pretrained
        if pretrained and pretrained not in HUBS and pretrained not in checked:
            read_state_dict(pretrained)  # readable, a state dict, nothing unpickled beyond tensors
            checked.add(pretrained)
        architecture = repr((spec.config.model.name, sorted(spec.config.model.kwargs.items())))
        if images is not None and architecture not in checked:
            cfg = spec.config if spec.config.model.name in live.models else _fresh(spec)
            check_forward(build_student(cfg, splits.info, live), images, f"model {spec.student!r}")
            checked.add(architecture)


def _fresh(spec: PlannedRun) -> TrainConfig:
    """The run's config without its initial weights: the shape check needs the architecture only."""
    return replace(spec.config, model=replace(spec.config.model, pretrained=None))


def _sample_images(plan: list[PlannedRun], splits: Splits) -> torch.Tensor | None:
    """Two images as every run's models see them (the runs of an experiment share its data settings)."""
    split = splits.val if len(splits.val) else splits.test
    if not plan or not len(split):
        return None
    loader = make_loader(split, splits.info, plan[0].config.dataset, train=False, device=CPU)
    return next(iter(loader)).images[:2] if loader.num_samples else None
