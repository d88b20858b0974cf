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


# --------------------------------------------------------------------------- K classes (K logits, index masks)

def _three_class():
    """Two 2x2 images, K = 3, logits equal everywhere (softmax 1/3 per class), hand-computable Dice (smooth 1)."""
    logits = torch.zeros(2, 3, 2, 2)
    y = torch.tensor([[[0., 1.], [2., 2.]], [[0., 0.], [0., 0.]]]).view(2, 1, 2, 2)
    return logits, y


def test_k_class_dice_averages_the_foreground_classes_by_hand():
    logits, y = _three_class()
    # image 0: class 1 (1 px): Σpy = 1/3, Σp = 4/3, Σy = 1 -> 1 - (2/3 + 1)/(4/3 + 2) = 1/2
    #          class 2 (2 px): Σpy = 2/3, Σp = 4/3, Σy = 2 -> 1 - (4/3 + 1)/(4/3 + 3) = 6/13
    # image 1: both absent: Σpy = 0, Σp = 4/3 -> 1 - 1/(7/3) = 4/7 each
    torch.testing.assert_close(dice_loss(logits, y), torch.tensor([(1 / 2 + 6 / 13) / 2, 4 / 7]))


def test_k_class_dice_ignores_the_background_and_is_zero_when_right():
    y = torch.tensor([0., 1., 2., 2.]).view(1, 1, 2, 2)
    right = torch.nn.functional.one_hot(y[:, 0].long(), 3).permute(0, 3, 1, 2).float() * BIG
    assert dice_loss(right, y, smooth=0.0).item() == pytest.approx(0.0)
    # all background predicted: each foreground class missed entirely -> loss 1
    background = torch.zeros(1, 3, 2, 2)
    background[:, 0] = BIG
    assert dice_loss(background, y, smooth=0.0).item() == pytest.approx(1.0)


def test_two_softmax_logits_are_the_binary_loss_of_their_difference():
    """softmax((l0, l1))_1 = sigmoid(l1 - l0): a K = 2 model's Dice and CE are the binary ones of l1 - l0."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    y = (torch.rand(4, 1, 8, 8, generator=g) > 0.6).double()
    binary = logits[:, 1:] - logits[:, :1]
    for kind in ("dice", "dice+bce", "dice+ce"):
        torch.testing.assert_close(per_image_loss(logits, y, kind), per_image_loss(binary, y, kind))


def test_k_class_dice_plus_ce_adds_the_pixel_mean_cross_entropy():
    logits, y = _three_class()
    expected = dice_loss(logits, y) + math.log(3.0)  # CE at uniform softmax over 3 classes: log 3 per pixel
    torch.testing.assert_close(per_image_loss(logits, y, "dice+bce"), expected)
    torch.testing.assert_close(per_image_loss(logits, y, "dice+ce"), expected)


def test_binary_dice_plus_ce_is_dice_plus_bce_bit_for_bit():
    logits, y = _pair()
    assert torch.equal(per_image_loss(logits, y, "dice+ce"), per_image_loss(logits, y, "dice+bce"))


def test_dasp_loss_on_k_class_logits_groups_and_backpropagates():
    logits, y = _three_class()
    logits = logits.clone().requires_grad_(True)
    per_image = dice_loss(logits, y).detach()
    loss = dasp_loss(logits, y, torch.tensor([False, True]), extra_weight=0.5, kind="dice+ce")
    expected = per_image[0] + math.log(3.0) + 0.5 * (per_image[1] + math.log(3.0))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
