"""An experiment's checks before anything trains: every file it names and every finished run it will reuse is
readable and intact, and every architecture takes the data's images.

Names, hyperparameters, labels and seeds are checked earlier, before any data is read (:func:`kdlab.runner.plan.
validate`); these checks need the data (its classes, channels and image size) or read files, so they run once the
data is loaded. A failure is one line (a :class:`~kdlab.errors.KdlabError`) and nothing has been trained.
"""

from __future__ import annotations

import torch

from kdlab.data import Splits, make_loader
from kdlab.models.hub import HUBS
from kdlab.models.probe import check_forward
from kdlab.models.weights import read_state_dict
from kdlab.runner import single
from kdlab.runner.live import Live
from kdlab.runner.plan import RunSpec

CPU = torch.device("cpu")


def check_plan(plan: list[RunSpec], splits: Splits, live: Live) -> None:
    """Raise a one-line error for the first problem found in ``plan``'s files and architectures."""
    images = _sample_images(plan, splits)
    checked: set[str] = set()
    for spec in plan:
        if spec.given_checkpoint:
            teacher = single.load_teacher(spec.given_checkpoint, splits.info, CPU, live)
            if images is not None:
                check_forward(teacher, images, f"teacher {spec.student!r} ({spec.given_checkpoint})")
            continue
        if spec.files.finished():
            spec.files.check_finished()
        pretrained = spec.cfg.model.pretrained
        if pretrained and pretrained not in HUBS and pretrained not in checked:
            read_state_dict(pretrained)  # readable, a state dict, nothing unpickled beyond tensors
            checked.add(pretrained)
        architecture = repr((spec.cfg.model.name, sorted(spec.cfg.model.kwargs.items())))
        if images is not None and architecture not in checked:
            cfg = spec.cfg if spec.cfg.model.name in live.models else _fresh(spec)
            check_forward(single.build_student(cfg, splits.info, live), images, f"model {spec.student!r}")
            checked.add(architecture)


def _fresh(spec: RunSpec):
    """The run's config without its initial weights: the shape check needs the architecture only."""
    from dataclasses import replace

    return replace(spec.cfg, model=replace(spec.cfg.model, pretrained=None))


def _sample_images(plan: list[RunSpec], splits: Splits) -> torch.Tensor | None:
    """Two images as every run's models see them (the runs of an experiment share its data settings)."""
    split = splits.val if len(splits.val) else splits.test
    if not plan or not len(split):
        return None
    loader = make_loader(split, splits.info, plan[0].cfg.dataset, train=False, device=CPU)
    return next(iter(loader)).images[:2] if loader.num_samples else None
