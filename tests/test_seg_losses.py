from __future__ import annotations

import math

import pytest
import torch

from augforge.seg.losses import dasp_loss, dice_loss, per_image_loss

BIG = 1e4  # sigmoid(+-BIG) is exactly 1 / 0 in float32


def _pair():
    """Two 2x2 images with hand-computable soft Dice (smooth = 1)."""
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    y = torch.zeros(2, 1, 2, 2)
    y[0, 0, 0, 0] = 1.0  # image 0: Σpy = 0.5, Σp = 2, Σy = 1 -> 1 - 2/4 = 0.5
    y[1] = 1.0  # image 1: Σpy = 2, Σp = 2, Σy = 4 -> 1 - 5/7 = 2/7
    return logits, y


def test_dice_loss_matches_hand_computation_per_image():
    logits, y = _pair()
    torch.testing.assert_close(dice_loss(logits, y), torch.tensor([0.5, 2.0 / 7.0]))


def test_dice_is_per_image_not_batch_pooled():
    # image 0: a one-pixel polyp, completely missed; image 1: a 15-pixel polyp, perfectly found
    y = torch.zeros(2, 1, 4, 4)
    y[0, 0, 0, 0] = 1.0
    y[1, 0, 1:, :] = 1.0
    y[1, 0, 0, 1:] = 1.0
    logits = torch.where(y > 0, BIG, -BIG)
    logits[0, 0, 0, 0] = -BIG
    per_image = dice_loss(logits, y, smooth=0.0)
    torch.testing.assert_close(per_image, torch.tensor([1.0, 0.0]))
    assert per_image.mean().item() == pytest.approx(0.5)
    # pooled over the batch (one big "image"), the missed polyp almost vanishes: 1 - 2*15/(15+16)
    pooled = dice_loss(logits.reshape(1, 2, 4, 4), y.reshape(1, 2, 4, 4), smooth=0.0)
    assert pooled.item() == pytest.approx(1 / 31)


def test_smooth_makes_empty_correct_prediction_zero_loss():
    y = torch.zeros(1, 1, 3, 3)
    assert dice_loss(torch.full_like(y, -BIG), y).item() == pytest.approx(0.0)


def test_dice_plus_bce_adds_pixel_mean_bce():
    logits, y = _pair()
    expected = torch.tensor([0.5, 2.0 / 7.0]) + math.log(2.0)  # BCE at p = 0.5 is log 2 per pixel
    torch.testing.assert_close(per_image_loss(logits, y, "dice+bce"), expected)
    torch.testing.assert_close(per_image_loss(logits, y, "dice"), dice_loss(logits, y))
    with pytest.raises(ValueError, match="dice"):
        per_image_loss(logits, y, "focal")


def test_dasp_loss_averages_groups_separately():
    # per-image Dice losses: 0.5, 2/7, 0.5, 2/7 ; images 1..3 are extra pairs
    logits, y = _pair()
    logits, y = logits.repeat(2, 1, 1, 1), y.repeat(2, 1, 1, 1)
    is_extra = torch.tensor([False, True, True, True])
    loss = dasp_loss(logits, y, is_extra, extra_weight=0.5)
    expected = 0.5 + 0.5 * (2 / 7 + 0.5 + 2 / 7) / 3
    assert loss.shape == () and loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("extra", [False, True])
def test_dasp_loss_empty_group_contributes_zero(extra):
    logits, y = _pair()
    logits.requires_grad_(True)
    is_extra = torch.full((2,), extra)
    loss = dasp_loss(logits, y, is_extra, extra_weight=2.0)
    mean = (0.5 + 2 / 7) / 2
    assert loss.item() == pytest.approx(2.0 * mean if extra else mean)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("extras", [[], [3], [0, 1, 2, 3, 4, 5, 6, 7], [1, 5]])
def test_one_process_group_sizes_leave_the_loss_bit_identical(extras):
    """The training loop passes rank_group_sizes of the global batch; with one process they are the batch's own
    counts, so Eq. 11 is bit for bit what it was without them (a batch without one of the groups included)."""
    from augforge.seg.train import rank_group_sizes

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 1, 16, 16, generator=g), (torch.rand(8, 1, 16, 16, generator=g) > 0.5).float()
    is_extra = torch.zeros(8, dtype=torch.bool)
    is_extra[extras] = True
    sizes = rank_group_sizes(is_extra[None], 1)[0]
    assert torch.equal(dasp_loss(logits, y, is_extra, 0.7, group_sizes=sizes), dasp_loss(logits, y, is_extra, 0.7))
