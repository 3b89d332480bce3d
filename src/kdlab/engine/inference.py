"""The frozen teacher as an inference module: BatchNorm folded into the convolution before it.

A teacher in eval mode computes ``bn(conv(x)) = γ·(W∗x + b − μ)/√(σ²+ε) + β``, which is one convolution with
``W' = W·γ/√(σ²+ε)`` and ``b' = (b − μ)·γ/√(σ²+ε) + β``. Folding saves the BatchNorm pass (a read and a write of every
activation). The pairs are found by tracing the model with ``torch.fx`` (a BatchNorm whose only input is a
convolution used by nothing else); the folded BatchNorm becomes an ``nn.Identity`` under the same name, so every module
name keeps its output and forward hooks by name (feature methods) still read what they read before. A convolution
whose own output is hooked is left alone, and a model that does not trace is used as it is.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger("kdlab")


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) pairs where the BatchNorm reads only that convolution's output and nothing else
    reads it; [] when the model does not trace."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # data-dependent control flow, unsupported ops: no folding, nothing lost
        log.debug("teacher not traceable (%s): BatchNorm left unfolded", type(exc).__name__)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                and isinstance(modules.get(source.target), nn.Conv2d)):
            pairs.append((str(source.target), str(node.target)))  # a call_module node's target is its name
    return pairs


@torch.no_grad()
def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv``'s weight and bias, in place."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise TypeError(f"{bn} keeps no running statistics: it cannot be folded")
    scale = bn.weight / torch.sqrt(var + bn.eps) if bn.affine else 1.0 / torch.sqrt(var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros_like(mean, dtype=conv.weight.dtype), requires_grad=False)
    conv.bias.copy_((bias - mean) * scale + shift)


def fold_batchnorm(model: nn.Module, keep: set[str] | frozenset[str] = frozenset()) -> nn.Module:
    """A frozen eval-mode copy of ``model`` with every foldable BatchNorm folded (convolutions named in ``keep``,
    whose outputs are read by name, are left as they are)."""
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    pairs = [(c, b) for c, b in conv_bn_pairs(folded) if c not in keep]
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # as conv_bn_pairs found them
        fold(conv, bn)
        parent, _, child = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, nn.Identity())
    return folded
