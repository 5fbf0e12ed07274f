"""Augmentation on the device (infogan_cells.model.augment): the dihedral group, shifts, free
rotation and zoom, intensity and tint jitter; seeded, differentiable where it must be."""

from __future__ import annotations

import pytest
import torch

from infogan_cells.config import AugmentConfig, load_config
from infogan_cells.errors import ConfigError
from infogan_cells.model.augment import augment_batch, to_float, to_uint8


def _dihedral(image):
    out = []
    for k in range(4):
        r = torch.rot90(image, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_augmentation_draws_from_the_dihedral_group():
    x = torch.arange(2 * 16, dtype=torch.uint8).reshape(1, 2, 4, 4).repeat(64, 1, 1, 1)
    y = augment_batch(x, AugmentConfig(rot90=True, flip=True, shift=0), torch.Generator().manual_seed(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape
    group = _dihedral(x[0])
    assert all(any(torch.equal(y[i], g) for g in group) for i in range(64))
    assert len({tuple(y[i].flatten().tolist()) for i in range(64)}) == 8
    rot_only = augment_batch(
        x, AugmentConfig(rot90=True, flip=False, shift=0), torch.Generator().manual_seed(0)
    )
    rots = group[::2]
    assert all(any(torch.equal(rot_only[i], g) for g in rots) for i in range(64))
    assert torch.equal(x, torch.arange(2 * 16, dtype=torch.uint8).reshape(1, 2, 4, 4).repeat(64, 1, 1, 1))


def test_augmentation_off_is_identity_and_seeded_when_on():
    x = torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    off = AugmentConfig(rot90=False, flip=False, shift=0)
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)
    on = AugmentConfig(rot90=True, flip=True, shift=2)
    a = augment_batch(x, on, torch.Generator().manual_seed(1))
    b = augment_batch(x, on, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_shift_moves_content_and_repeats_edges():
    x = torch.zeros(64, 1, 9, 9, dtype=torch.uint8)
    x[:, :, 4, 4] = 255
    y = augment_batch(x, AugmentConfig(rot90=False, flip=False, shift=2), torch.Generator().manual_seed(0))
    pos = [divmod(int(y[i, 0].flatten().argmax()), 9) for i in range(64)]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in pos)
    assert len(set(pos)) > 10
    assert all(int(y[i].sum()) == 255 for i in range(64))  # one bright pixel, nothing wrapped in


def test_float_conversion_round_trips():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(x)
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), x)


def test_free_rotation_and_zoom_are_differentiable_and_need_floats():
    cfg = AugmentConfig(rot90=False, flip=False, shift=0, rotate=30, scale=0.2)
    x = torch.zeros(16, 1, 17, 17)
    x[:, :, 8, 8] = 1.0
    x.requires_grad_(True)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    centre = y.detach()[:, 0, 7:10, 7:10].sum(dim=(1, 2))  # rotation and zoom about the centre keep it there
    assert torch.all(centre > 0.5 * y.detach()[:, 0].sum(dim=(1, 2)))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="need floating-point images"):
        augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), cfg, torch.Generator())


def test_intensity_jitter_changes_what_it_says_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 8, 8, generator=g) * 1.2 - 0.6

    def run(**kw):
        cfg = AugmentConfig(rot90=False, flip=False, shift=0, **kw)
        return augment_batch(x, cfg, torch.Generator().manual_seed(3))

    bright = run(brightness=0.2)
    offset = (bright - x).flatten(1)
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-6)  # one offset per image
    assert offset[:, 0].abs().max() <= 0.4 + 1e-6 and offset[:, 0].std() > 0.05
    contrast = run(contrast=0.5)
    assert torch.allclose(contrast.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)  # mean kept
    ratio = contrast.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 1.5 + 1e-4 and ratio.std() > 0.1
    sat = run(saturation=0.5)
    assert torch.allclose(sat.mean(dim=1), x.mean(dim=1), atol=1e-5)  # grey level of each pixel kept
    assert not torch.allclose(sat, x)
    assert torch.equal(
        augment_batch(
            x[:, :1],
            AugmentConfig(rot90=False, flip=False, shift=0, saturation=0.5),
            torch.Generator().manual_seed(3),
        ),
        x[:, :1],
    )  # one channel: no-op
    assert torch.equal(run(brightness=0.2, contrast=0.3), run(brightness=0.2, contrast=0.3))  # seeded
    xg = x.clone().requires_grad_(True)
    augment_batch(
        xg,
        AugmentConfig(rot90=False, flip=False, shift=0, brightness=0.1, contrast=0.2, saturation=0.2),
        torch.Generator().manual_seed(0),
    ).square().sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="need floating-point images"):
        augment_batch(
            torch.zeros(2, 3, 8, 8, dtype=torch.uint8), AugmentConfig(brightness=0.1), torch.Generator()
        )


def test_tint_offsets_each_channel_on_its_own_and_keeps_the_contrast_inside_a_cell():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    cfg = AugmentConfig(rot90=False, flip=False, shift=0, tint=0.1)
    y = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    offset = (y - x).flatten(2)  # (B, C, H*W)
    assert torch.allclose(offset, offset[..., :1].expand_as(offset), atol=1e-6)  # one offset per channel
    per_channel = offset[..., 0]
    assert per_channel.abs().max() <= 0.2 + 1e-6
    assert (per_channel[:, 0] - per_channel[:, 1]).abs().max() > 0.05  # channels move apart: a tint
    assert torch.equal(y, augment_batch(x, cfg, torch.Generator().manual_seed(1)))  # seeded
    # off: no draw at all, so configs without it keep their random stream
    plain = AugmentConfig(rot90=True, flip=True, shift=2)
    a = augment_batch(x, plain, torch.Generator().manual_seed(5))
    assert torch.equal(a, augment_batch(x, AugmentConfig(rot90=True, flip=True, shift=2, tint=0.0),
                                        torch.Generator().manual_seed(5)))  # fmt: skip
    with pytest.raises(ConfigError, match=r"tint"):
        load_config(None, [{"train": {"augment": {"tint": 0.9}}}])
