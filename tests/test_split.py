"""Cutting an oversized category in two (``train.split_largest``): what moves, what stays."""

from __future__ import annotations

import torch
from tiny_step import _config, _fresh, _real

from infogan_cells.training.split import hidden_and_categories, split_largest


def _q_of_hidden(D, hidden: torch.Tensor) -> torch.Tensor:
    return D.q_net[-1](hidden)[:, : D.spec.categorical[0]].argmax(1)


def _two_blobs_in_one_category():
    """Q's last layer on made-up hidden features: blobs 0 and 1 (40 crops each) in category 0,
    blob 2 (15) in category 1, blob 3 (5) in category 2."""
    _, D = _fresh(_config())
    g = torch.Generator().manual_seed(3)
    width = D.q_net[-1].in_features
    centres = torch.randn(4, width, generator=g) * 3
    sizes = (40, 40, 15, 5)
    hidden = torch.cat(
        [c + 0.3 * torch.randn(n, width, generator=g) for c, n in zip(centres, sizes, strict=True)]
    )
    blob = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    with torch.no_grad():
        layer = D.q_net[-1]
        layer.weight.zero_()
        layer.bias.zero_()
        for category, centre in ((0, (centres[0] + centres[1]) / 2), (1, centres[2]), (2, centres[3])):
            layer.weight[category] = centre / centre.norm() * 2
    cats = _q_of_hidden(D, hidden)
    assert cats.tolist() == [0] * 80 + [1] * 15 + [2] * 5  # the premise
    return D, hidden, cats, blob


def test_the_largest_category_is_cut_along_its_two_halves_and_the_smallest_given_up():
    D, hidden, cats, blob = _two_blobs_in_one_category()
    layer = D.q_net[-1]
    opt = torch.optim.Adam(D.parameters())
    for p in (layer.weight, layer.bias):  # moments that the split must clear for its two rows
        opt.state[p] = {"exp_avg": torch.ones_like(p), "exp_avg_sq": torch.ones_like(p)}
    old_row, old_bias, old_other = layer.weight[0].clone(), layer.bias[0].clone(), layer.weight[1].clone()

    assert split_largest(D, opt, hidden, cats, ratio=1.5) == (0, 2)

    after = _q_of_hidden(D, hidden)
    first, second = after[blob == 0], after[blob == 1]
    assert len(set(first.tolist())) == 1 and len(set(second.tolist())) == 1  # each blob one category
    assert {first[0].item(), second[0].item()} == {0, 2}  # the two halves: the old and the freed one
    assert (after[blob == 2] == 1).all()  # another category's crops stay put
    with torch.no_grad():
        torch.testing.assert_close((layer.weight[0] + layer.weight[2]) / 2, old_row)
        torch.testing.assert_close((layer.bias[0] + layer.bias[2]) / 2, old_bias)
        assert torch.equal(layer.weight[1], old_other)
    for p in (layer.weight, layer.bias):
        for value in opt.state[p].values():
            assert (value[[0, 2]] == 0).all() and (value[1] == 1).all()


def test_a_category_is_cut_when_one_is_too_large_or_one_too_small():
    """Shares 0.8 / 0.15 / 0.05 of a mean 1/3: the largest is 2.4x the mean, the smallest 0.15x."""
    D, hidden, cats, _ = _two_blobs_in_one_category()
    before = D.q_net[-1].weight.clone()
    assert split_largest(D, None, hidden, cats, ratio=7.0) is None  # 2.4 < 7 and 0.15 > 1/7
    assert torch.equal(D.q_net[-1].weight, before)
    assert split_largest(D, None, hidden, cats, ratio=6.0) == (0, 2)  # 0.15 < 1/6: too small
    # 40 crops each in categories 1 and 2: shares 0.5 / 0.25 / 0.25, the largest 1.5x the mean
    # and the smallest 0.75x: cut at 1.4 (too large; 0.75 > 1/1.4), not at 1.6 (1.5 < 1.6, 0.75 > 1/1.6)
    D, hidden, cats, _ = _two_blobs_in_one_category()
    k3 = torch.cat([cats[:80], torch.tensor([1] * 40 + [2] * 40)])
    hidden3 = torch.cat([hidden[:80], hidden[80:81].repeat(40, 1), hidden[95:96].repeat(40, 1)])
    assert split_largest(D, None, hidden3, k3, ratio=1.6) is None
    assert split_largest(D, None, hidden3, k3, ratio=1.4) in {(0, 1), (0, 2)}


def test_categories_are_measured_on_a_copy_of_d():
    """The probe sets BatchNorm statistics on a copy: D's own running statistics and mode stay."""
    _, D = _fresh(_config())
    D.train()
    state = {k: v.clone() for k, v in D.state_dict().items()}
    images = ((_real(24) + 1) * 127.5).round().to(torch.uint8)
    hidden, cats = hidden_and_categories(D, images, batch_size=8)
    assert hidden.shape == (24, D.q_net[-1].in_features) and cats.shape == (24,)
    assert cats.max() < D.spec.categorical[0]
    assert D.training and all(torch.equal(v, state[k]) for k, v in D.state_dict().items())
