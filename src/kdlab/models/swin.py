"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021,
arXiv:2103.14030).

Module and parameter names are timm's (``patch_embed.proj``/``.norm``, ``layers.S.downsample.{norm, reduction}``,
``layers.S.blocks.B.{norm1, attn.relative_position_bias_table, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
``norm``, ``head.fc``), so timm's ``swin_*`` state dicts load unchanged. As timm: channels-last (NHWC) features,
nn.LayerNorm (eps 1e-5), windowed attention with a learned relative position bias, every second block shifted by half
a window with the -100 attention mask, a window no larger than the stage's resolution (then unshifted), inputs padded
to a window multiple. ``relative_position_index`` and ``attn_mask`` are non-persistent buffers, recomputed, as in
current timm; older checkpoints that hold them load too (``load_pretrained`` skips a model's non-persistent buffers).
A checkpoint with another window size has its bias tables resampled (:meth:`SwinTransformer.fit_checkpoint_tensor`).

``stage_names`` are ``layers.0`` .. ``layers.3`` (NHWC outputs ``[B, H, W, C]``); the embedding is
``"head.fc:input"``. ``swin_nano_patch2_window4_32`` is a CPU-sized variant for 32 px images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models.layers import Mlp, drop_path_or_identity, drop_path_rates, init_linear_trunc_normal
from kdlab.models.registry import MODELS
from kdlab.models.spec import InputSpec, normalized_spec


def relative_position_index(window: int) -> Tensor:
    """``[w*w, w*w]`` index into the ``(2w-1)^2`` bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, H, W, C]`` -> ``[B * nW, window * window, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: Tensor, window: int, h: int, w: int) -> Tensor:
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """``[nW, N, N]``: 0 within one region of the rolled map, -100 across regions (Swin's SW-MSA mask)."""
    img = torch.zeros(1, h, w, 1, device=device)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    regions = window_partition(img, window).squeeze(-1)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head attention inside a window, plus a learned bias per relative offset and head."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.get_buffer("relative_position_index").view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]
        if mask is not None:
            n_win = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(b // n_win, -1, -1, -1, -1)
            bias = bias.reshape(b, self.num_heads, n, n)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each pre-norm with a residual and stochastic depth; NHWC in and out."""

    def __init__(self, dim: int, num_heads: int, resolution: tuple[int, int], window: int, shifted: bool,
                 drop_path: float) -> None:
        super().__init__()
        self.window = min(window, *resolution)  # a stage smaller than the window attends globally
        self.shift = self.window // 2 if shifted and min(resolution) > window else 0
        self.resolution = resolution
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window)
        self.drop_path1 = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path2 = drop_path_or_identity(drop_path)
        # Empty when unshifted (timm: None); a buffer either way, so a checkpoint's attn_mask is known as computed.
        self.register_buffer("attn_mask", self._mask(resolution[0], resolution[1]), persistent=False)

    def _mask(self, h: int, w: int, device: torch.device | None = None) -> Tensor:
        if not self.shift:
            return torch.zeros(0, device=device)
        hp, wp = -(-h // self.window) * self.window, -(-w // self.window) * self.window
        return shifted_window_mask(hp, wp, self.window, self.shift, device)

    def _attn(self, x: Tensor) -> Tensor:
        _, h, w, c = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        pad_h, pad_w = (-h) % self.window, (-w) % self.window
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if self.shift:
            mask = self.attn_mask if (h, w) == self.resolution else self._mask(h, w, x.device)
        x = window_reverse(self.attn(window_partition(x, self.window), mask), self.window, hp, wp)[:, :h, :w]
        return torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2)) if self.shift else x

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (timm's order) -> LayerNorm -> Linear to twice the channels, no bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h, w = x.shape[1], x.shape[2]
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, resolution: tuple[int, int], window: int,
                 downsample: bool, rates: list[float]) -> None:
        super().__init__()
        self.downsample: nn.Module = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[SwinBlock(dim, num_heads, resolution, window, i % 2 == 1, rates[i])
                                      for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class PatchEmbedNorm(nn.Module):
    """Strided-conv patch embedding to NHWC, then LayerNorm (``proj``, ``norm``)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PoolHead(nn.Module):
    """Average over H and W of an NHWC map, dropout, Linear (``fc``)."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(x.mean((1, 2))))


class SwinTransformer(nn.Module):
    """Swin trunk: patch embedding, four stages (patch merging between), LayerNorm, pooled head; returns logits."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, img_size: int = 224, patch_size: int = 4,
                 window_size: int = 7, embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.patch_embed = PatchEmbedNorm(patch_size, in_channels, embed_dim)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        side, start, layers = -(-img_size // patch_size), 0, []
        for i, depth in enumerate(depths):
            if i > 0:
                side = -(-side // 2)
            layers.append(SwinStage(embed_dim * 2 ** i, depth, num_heads[i], (side, side), window_size, i > 0,
                                    rates[start:start + depth]))
            start += depth
        self.layers = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = PoolHead(self.num_features, num_classes, drop_rate)
        self.stage_names: tuple[str, ...] = tuple(f"layers.{i}" for i in range(len(depths)))
        self.input_spec = input_spec or InputSpec(img_size, in_channels)
        init_linear_trunc_normal(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """NHWC features after the final norm: ``[B, H/32, W/32, C]`` for the ImageNet models."""
        return self.norm(self.layers(self.patch_embed(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def fit_checkpoint_tensor(self, key: str, value: Tensor) -> Tensor | None:
        """A relative position bias table of another window size, resampled bicubically to this model's window."""
        if not key.endswith("attn.relative_position_bias_table") or value.ndim != 2:
            return None
        target = self.get_parameter(key)
        old, new = int(round(value.shape[0] ** 0.5)), int(round(target.shape[0] ** 0.5))
        if old * old != value.shape[0] or new * new != target.shape[0] or value.shape[1] != target.shape[1]:
            return None
        grid = value.float().T.reshape(1, -1, old, old)
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        return grid.reshape(-1, new * new).T.contiguous().to(value.dtype)


@MODELS.register("swin_tiny_patch4_window7_224")
def swin_tiny_patch4_window7_224(num_classes: int = 1000, in_channels: int = 3, img_size: int = 224,
                                 drop_rate: float = 0.0, drop_path_rate: float = 0.1) -> SwinTransformer:
    """Swin-T (dim 96, depths 2-2-6-2, heads 3-6-12-24, window 7); timm ``swin_tiny_patch4_window7_224``-compatible."""
    return SwinTransformer(num_classes, in_channels, img_size, 4, 7, 96, (2, 2, 6, 2), (3, 6, 12, 24), drop_rate,
                           drop_path_rate, input_spec=normalized_spec(img_size, in_channels))


@MODELS.register("swin_nano_patch2_window4_32")
def swin_nano_patch2_window4_32(num_classes: int = 10, in_channels: int = 3, img_size: int = 32,
                                drop_path_rate: float = 0.0) -> SwinTransformer:
    """A CPU-sized Swin for 32 px images: patch 2 (16x16 tokens), window 4, dim 48, depths 2-2-2-2, heads 3-6-12-24
    (the last stage, 2x2, attends globally and unshifted; ~5.1M params)."""
    return SwinTransformer(num_classes, in_channels, img_size, 2, 4, 48, (2, 2, 2, 2), (3, 6, 12, 24), 0.0,
                           drop_path_rate)
