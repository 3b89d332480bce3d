"""Vision Transformers (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, arXiv:2010.11929) and DeiT
(Touvron et al., "Training data-efficient image transformers & distillation through attention", ICML 2021,
arXiv:2012.12877).

Module and parameter names are timm's (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv``,
``norm``, ``head``; DeiT's ``dist_token`` and ``head_dist``), so timm's state dicts load unchanged. As timm: pre-norm
blocks, LayerNorm eps 1e-6, exact GELU, the class token's final embedding classifies.

Position embeddings: a model built for ``img_size`` and fed another size interpolates its position embedding to the
new patch grid (bicubic, :func:`~kdlab.models.layers.resample_abs_pos_embed`); pretrained weights of another grid are
resampled the same way when loaded (:meth:`VisionTransformer.fit_checkpoint_tensor`, called by
``kdlab.models.weights.load_pretrained``).

Distilled DeiT (``distilled=True``): a second prefix token, ``dist_token``, whose final embedding feeds ``head_dist``.
In eval, ``forward`` returns the mean of the two heads' logits, as timm does. In training it returns the class head's
logits only, and still runs ``head_dist``, a plain submodule: a distillation method reads the distillation head's
logits through a forward hook on module name ``head_dist`` (e.g. ``FeatureHooks(model, ["head_dist"])``) and trains
them towards the teacher (DeiT's hard-label distillation: CE of ``head_dist`` to the teacher's argmax). ``head_dist``
is registered before ``head``, so ``head`` stays the model's last ``nn.Linear``: the penultimate embedding
``"head:input"`` is the class token's, for distilled and plain models alike.

Feature hooks: ``stage_names`` are four evenly spaced blocks (``blocks.2``, ``blocks.5``, ``blocks.8``, ``blocks.11``
for 12 blocks); each outputs the token sequence ``[B, prefix + H*W, D]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models.layers import Mlp, drop_path_or_identity, drop_path_rates, init_linear_trunc_normal, \
    resample_abs_pos_embed
from kdlab.models.registry import MODELS
from kdlab.models.spec import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, InputSpec, normalized_spec

LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches, linearly embedded by a strided conv (``proj``); NLC output."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and an output ``proj`` (timm ``Attention``)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, attn_drop, drop)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = drop_path_or_identity(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def spaced_stages(depth: int, count: int = 4) -> tuple[str, ...]:
    """``count`` evenly spaced block names ending at the last block: 12 blocks -> blocks.2, .5, .8, .11."""
    count = min(count, depth)
    return tuple(dict.fromkeys(f"blocks.{(i + 1) * depth // count - 1}" for i in range(count)))


class VisionTransformer(nn.Module):
    """ViT with a class token (and, ``distilled=True``, DeiT's distillation token); ``forward`` returns logits."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, patch_size: int = 16,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 distilled: bool = False, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_classes, self.embed_dim, self.distilled = num_classes, embed_dim, distilled
        self.num_prefix_tokens = 2 if distilled else 1
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if distilled:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        n_tokens = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, rates[i])
                                      for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(drop_rate)
        if distilled:  # before ``head``: ``head`` stays the last nn.Linear, the classifier feature methods find
            self.head_dist = nn.Linear(embed_dim, num_classes)
        self.head = nn.Linear(embed_dim, num_classes)
        self.stage_names: tuple[str, ...] = spaced_stages(depth)
        self.input_spec = input_spec or InputSpec(img_size, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's: position embedding and distillation token truncated normal 0.02, class token normal 1e-6,
        # every Linear truncated normal 0.02 with zero bias; the patch conv keeps PyTorch's default.
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.distilled:
            nn.init.trunc_normal_(self.dist_token, std=0.02, a=-2.0, b=2.0)
        init_linear_trunc_normal(self)

    def _pos_embed(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.distilled:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        pos: Tensor = self.pos_embed
        if grid != self.grid_size:
            pos = resample_abs_pos_embed(pos, grid, self.grid_size, self.num_prefix_tokens)
        return self.pos_drop(torch.cat(prefix + [x], dim=1) + pos)

    def forward_features(self, x: Tensor) -> Tensor:
        """Token sequence after the final norm: ``[B, prefix + H*W, D]``."""
        grid = (x.shape[-2] // self.patch_embed.patch_size, x.shape[-1] // self.patch_embed.patch_size)
        x = self._pos_embed(self.patch_embed(x), grid)
        return self.norm(self.blocks(x))

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        logits = self.head(self.head_drop(x[:, 0]))
        if not self.distilled:
            return logits
        logits_dist = self.head_dist(self.head_drop(x[:, 1]))  # runs in training too: hooks on head_dist read it
        return logits if self.training else (logits + logits_dist) / 2

    def fit_checkpoint_tensor(self, key: str, value: Tensor) -> Tensor | None:
        """A checkpoint's ``pos_embed`` for another grid (or without/with the distillation token's slot when
        the prefix counts match) resampled to this model's grid; ``None`` for any other mismatch."""
        if key != "pos_embed" or value.ndim != 3 or value.shape[2] != self.embed_dim:
            return None
        n_patches = value.shape[1] - self.num_prefix_tokens
        side = int(n_patches ** 0.5)
        if side * side != n_patches:
            return None
        return resample_abs_pos_embed(value, self.grid_size, (side, side), self.num_prefix_tokens)


_VIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}


def _imagenet_vit(size: str, num_classes: int, in_channels: int, img_size: int, distilled: bool, mean: tuple,
                  std: tuple, **kwargs) -> VisionTransformer:
    dim, heads = _VIT_SIZES[size]
    return VisionTransformer(num_classes, in_channels, img_size, 16, dim, 12, heads, distilled=distilled,
                             input_spec=normalized_spec(img_size, in_channels, mean, std), **kwargs)


def _register_imagenet(name: str, size: str, distilled: bool, google: bool) -> None:
    mean, std = (INCEPTION_MEAN, INCEPTION_STD) if google else (IMAGENET_MEAN, IMAGENET_STD)
    kind = "DeiT" + (" (distilled)" if distilled else "") if name.startswith("deit") else "ViT"

    def factory(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, drop_rate: float = 0.0,
                attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> VisionTransformer:
        return _imagenet_vit(size, num_classes, in_channels, img_size, distilled, mean, std, drop_rate=drop_rate,
                             attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{kind}-{size.capitalize()}/16 at 224 px; timm ``{name}``-compatible state dict."
    MODELS.register(name)(factory)


for _name, _size, _distilled, _google in (
    ("vit_tiny_patch16_224", "tiny", False, True),
    ("vit_small_patch16_224", "small", False, True),
    ("vit_base_patch16_224", "base", False, True),
    ("deit_tiny_patch16_224", "tiny", False, False),
    ("deit_small_patch16_224", "small", False, False),
    ("deit_tiny_distilled_patch16_224", "tiny", True, False),
    ("deit_small_distilled_patch16_224", "small", True, False),
):
    _register_imagenet(_name, _size, _distilled, _google)


@MODELS.register("vit_nano_patch4_32")
def vit_nano_patch4_32(num_classes: int = 10, in_channels: int = 3, img_size: int = 32, depth: int = 4,
                       drop_path_rate: float = 0.0) -> VisionTransformer:
    """A CPU-sized ViT for 32 px (or 28 px) images: patch 4, dim 96, 3 heads, 4 blocks, MLP ratio 2 (~0.31M params)."""
    return VisionTransformer(num_classes, in_channels, img_size, 4, 96, depth, 3, mlp_ratio=2.0,
                             drop_path_rate=drop_path_rate)


@MODELS.register("vit_tiny_patch4_32")
def vit_tiny_patch4_32(num_classes: int = 10, in_channels: int = 3, img_size: int = 32, depth: int = 6,
                       drop_path_rate: float = 0.1) -> VisionTransformer:
    """ViT-Tiny's width (dim 192, 3 heads) at patch 4 for 32 px images, 6 blocks (~2.7M params)."""
    return VisionTransformer(num_classes, in_channels, img_size, 4, 192, depth, 3, drop_path_rate=drop_path_rate)


@MODELS.register("deit_nano_distilled_patch4_32")
def deit_nano_distilled_patch4_32(num_classes: int = 10, in_channels: int = 3, img_size: int = 32, depth: int = 4,
                                  drop_path_rate: float = 0.0) -> VisionTransformer:
    """``vit_nano_patch4_32`` with DeiT's distillation token and ``head_dist``, for distillation-token students."""
    return VisionTransformer(num_classes, in_channels, img_size, 4, 96, depth, 3, mlp_ratio=2.0, distilled=True,
                             drop_path_rate=drop_path_rate)
