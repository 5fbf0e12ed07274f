"""Augmentation of real crops on the training device: whole-batch tensor ops, no per-sample Python.

Cells have no canonical orientation, so a random element of the dihedral group (90-degree
rotations and flips) keeps a crop a plausible crop; small shifts stop the codes from spending
themselves on the cell's position (the seed blog's lesson). The generator learns the augmented
distribution, which is the one we want.

The same transforms also serve as differentiable augmentation (DiffAugment, Zhao et al. 2020):
applied to real and generated images alike before D and Q see them, they let G learn the
un-augmented distribution while D overfits a small set less, and they make the InfoGAN codes
invariant to what they change (a category cannot be "the cell at the left", a continuous code
cannot be the angle).

Every draw comes from the ``torch.Generator`` passed in (on the batch's device), so a seed
gives the same augmentations on every run and after a resume.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from infogan_cells.config import AugmentConfig

__all__ = ["augment_batch", "is_identity", "needs_float", "to_float", "to_uint8"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [-1, 1]."""
    return images.float().mul_(1 / 127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
    return ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], a, b)


def is_identity(config: AugmentConfig) -> bool:
    """True when ``config`` enables no transform."""
    return not (config.rot90 or config.flip or config.shift or needs_float(config))


def needs_float(config: AugmentConfig) -> bool:
    """True when ``config`` enables a transform that needs floating-point images (resampling or
    intensity changes); 90-degree rotations, flips and shifts work on uint8 too."""
    return bool(
        config.rotate
        or config.scale
        or config.brightness
        or config.contrast
        or config.saturation
        or config.tint
    )


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly rotate, zoom, flip, shift and change the intensities of each image of a batch.

    images : (B, C, H, W) tensor; any dtype for 90-degree rotations, flips and shifts (uint8
    keeps them cheap), floating point in [-1, 1] for free rotations and zoom (``config.rotate``,
    ``config.scale``: bilinear, edges repeated) and for the intensity changes (``brightness``,
    ``contrast``, ``saturation``, as in DiffAugment, and ``tint``, an offset per channel; not clipped). Returns a tensor of the same shape and dtype
    (the input itself when every transform is off; it is never modified in place). Every
    transform is differentiable with respect to floating-point input. 90-degree rotations need
    square images. Shifts move the image by up to ``config.shift`` pixels in rows and columns,
    repeating the edge pixels.
    """
    B, _, H, W = images.shape
    dev = images.device
    x = images
    if needs_float(config) and not x.is_floating_point():
        raise ValueError(
            "free rotations, zoom and intensity changes need floating-point images "
            "(convert with to_float first)"
        )
    if config.brightness > 0 or config.contrast > 0 or config.saturation > 0:
        x = _jitter_intensity(x, config, generator)
    if config.tint > 0:  # drawn only when on, so configs without it keep their draws
        x = x + (torch.rand(B, x.shape[1], 1, 1, generator=generator, device=dev, dtype=x.dtype) * 2 - 1) * (
            2 * config.tint
        )
    if config.rotate > 0 or config.scale > 0:
        u = torch.rand(2, B, generator=generator, device=dev) * 2 - 1
        angle = u[0] * (config.rotate * math.pi / 180)
        zoom = 1 + u[1] * config.scale
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if config.rot90 or config.flip:
        # Any element of the dihedral group is (optional transpose) then (optional row flip) then
        # (optional column flip); rot90 by k is transpose iff k odd, row flip iff k in {1, 2},
        # column flip iff k in {2, 3}. Three masked selects, whatever the batch size.
        transpose = torch.zeros(B, dtype=torch.bool, device=dev)
        flip_rows = torch.zeros(B, dtype=torch.bool, device=dev)
        flip_cols = torch.zeros(B, dtype=torch.bool, device=dev)
        if config.rot90:
            if H != W:
                raise ValueError(f"90-degree rotations need square images, got {H}x{W}")
            k = torch.randint(4, (B,), generator=generator, device=dev)
            transpose, flip_rows, flip_cols = k % 2 == 1, (k == 1) | (k == 2), k >= 2
        if config.flip:
            flip_cols = flip_cols ^ (torch.randint(2, (B,), generator=generator, device=dev) == 1)
            if not config.rot90:
                flip_rows = torch.randint(2, (B,), generator=generator, device=dev) == 1
        if config.rot90:
            x = _where(transpose, x.transpose(-1, -2), x)
        x = _where(flip_rows, x.flip(-2), x)
        x = _where(flip_cols, x.flip(-1), x)
    if config.shift > 0:
        s = config.shift
        d = torch.randint(-s, s + 1, (2, B), generator=generator, device=dev)
        rows = (torch.arange(H, device=dev)[None, :] - d[0][:, None]).clamp_(0, H - 1)  # (B, H)
        cols = (torch.arange(W, device=dev)[None, :] - d[1][:, None]).clamp_(0, W - 1)  # (B, W)
        b = torch.arange(B, device=dev)[:, None, None]
        # advanced indexing puts the broadcast (B, H, W) dims first, then the sliced channel dim
        x = x[b, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x


def _jitter_intensity(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness offset, saturation and contrast scaling per image (images in [-1, 1])."""
    B, C = x.shape[:2]
    u = torch.rand(3, B, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    if config.brightness > 0:
        x = x + u[0] * (2 * config.brightness)  # the range [-1, 1] is 2 wide
    if config.saturation > 0 and C > 1:
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * (1 + u[1] * config.saturation)
    if config.contrast > 0:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * (1 + u[2] * config.contrast)
    return x
