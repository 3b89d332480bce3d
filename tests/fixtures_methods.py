"""Tiny teacher/student networks and a tiny learnable dataset for the method tests (independent of kdlab.models)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

NUM_CLASSES = 4


class TinyNet(nn.Module):
    """stem -> stages (conv stride s + BN + ReLU) -> pool -> linear; ``stage_names`` are dotted, as kdlab models'."""

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c0 = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        stages, c_in = [], widths[0]
        for c_out, stride in zip(widths, strides):
            stages.append(nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                        nn.ReLU()))
            c_in = c_out
        self.body = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, num_classes)
        self.stage_names = tuple(f"body.{i}" for i in range(len(stages)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make_teacher() -> TinyNet:  # 16x16 input -> maps 16, 8, 4 with 12, 16, 24 channels
    return TinyNet((12, 16, 24), (1, 2, 2))


def make_student() -> TinyNet:  # same spatial sizes as the teacher, fewer channels
    return TinyNet((6, 8, 12), (1, 2, 2))


def make_student_other_shapes() -> TinyNet:  # different channels AND spatial sizes: maps 8, 4, 2; and 4 stages
    return TinyNet((4, 6, 8, 10), (2, 2, 2, 1))


class TinyDistilledNet(TinyNet):
    """A stand-in for a distilled DeiT: two heads (timm's names ``head`` and ``head_dist``) on the pooled features; the
    output is their mean, as timm's ``VisionTransformerDistilled`` returns outside ``distilled_training``."""

    def __init__(self, widths: tuple[int, ...], strides: tuple[int, ...], num_classes: int = NUM_CLASSES,
                 in_channels: int = 3) -> None:
        super().__init__(widths, strides, num_classes)
        del self.fc
        if in_channels != 3:
            self.stem[0] = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.head = nn.Linear(widths[-1], num_classes)
        self.head_dist = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f = torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1)
        return (self.head(f) + self.head_dist(f)) / 2


def make_distilled_student() -> TinyDistilledNet:
    return TinyDistilledNet((6, 8, 12), (1, 2, 2))


DISTILLED_STUDENT_METHODS = {"deit"}  # methods that need a student with a distillation head


def student_for(name: str) -> TinyNet:
    """The tiny student a method can train: a distilled one for ``deit`` (or a composite with it), else the plain."""
    if set(name.split("+")) & DISTILLED_STUDENT_METHODS:
        return make_distilled_student()
    return make_student()


class RaisingTeacher(nn.Module):
    """A teacher that must never run."""

    stage_names = ()

    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("the teacher was called although precomputed logits were given")


def make_data(n: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` images 3×16×16: a fixed random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(NUM_CLASSES, 3, 16, 16, generator=g)
    labels = torch.arange(n) % NUM_CLASSES
    images = patterns[labels] + 0.5 * torch.randn(n, 3, 16, 16, generator=g)
    return images, labels


def train_teacher(steps: int = 20) -> TinyNet:
    """A teacher fitted briefly with CE, so that its logits carry signal."""
    torch.manual_seed(1)
    teacher = make_teacher()
    images, labels = make_data(seed=1)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(teacher(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval()
