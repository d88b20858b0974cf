from __future__ import annotations

import pytest
import torch

from augforge.seg.augment import AUGMENTATIONS, cutout, elastic, gaussian_noise, parse_augs, random_erase, tumorcp

B, H, W = 6, 24, 32  # non-square to catch swapped axes


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(seed: int = 0):
    """Random images and masks with one random rectangle polyp each (the last image has none)."""
    g = _gen(seed)
    x = torch.rand(B, 3, H, W, generator=g)
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    top, left = torch.randint(0, H - 8, (B, 1, 1), generator=g), torch.randint(0, W - 8, (B, 1, 1), generator=g)
    y = ((rows >= top) & (rows < top + 6) & (cols >= left) & (cols < left + 7)).float()[:, None]
    y[-1] = 0.0
    return x, y


def _encoded(seed: int = 0):
    """Images whose content encodes the mask (channel 0 = mask, channel 1 = row, channel 2 = image id)."""
    _, y = _batch(seed)
    rows = torch.linspace(0, 1, H).view(1, 1, H, 1).expand(B, 1, H, W)
    ids = (torch.arange(B) / B).view(B, 1, 1, 1).expand(B, 1, H, W)
    return torch.cat([y, rows, ids], 1), y


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_all_keep_shape_dtype_device_range_and_binary_masks(name):
    x, y = _batch()
    xo, yo = AUGMENTATIONS[name](x, y, _gen(1))
    assert xo.shape == x.shape and yo.shape == y.shape
    assert xo.dtype == x.dtype and yo.dtype == y.dtype and xo.device == x.device
    assert xo.min() >= 0 and xo.max() <= 1
    assert ((yo == 0) | (yo == 1)).all()


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_same_generator_seed_same_output(name):
    x, y = _batch()
    a = AUGMENTATIONS[name](x, y, _gen(5))
    b = AUGMENTATIONS[name](x, y, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    if name != "none":
        c = AUGMENTATIONS[name](x, y, _gen(6))
        assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", ["basic", "cutmix"])
def test_geometric_augs_keep_image_and_mask_aligned(name):
    x, y = _encoded()
    xo, yo = AUGMENTATIONS[name](x, y, _gen(2))
    assert torch.equal(xo[:, :1], yo)
    assert not torch.equal(xo, x)


def test_basic_flips_per_image():
    x, y = _encoded()
    xo, _ = AUGMENTATIONS["basic"](x, y, _gen(3))
    # channel 1 encodes the row: each image is either upright or vertically flipped, not all the same
    upright = (xo[:, 1] == x[:, 1]).flatten(1).all(1)
    flipped = (xo[:, 1] == x[:, 1].flip(-2)).flatten(1).all(1)
    assert (upright | flipped).all() and upright.any() and flipped.any()


def test_cutmix_pastes_a_box_from_another_image():
    x, y = _encoded()
    xo, _ = AUGMENTATIONS["cutmix"](x, y, _gen(4))
    changed = xo[:, 2] != x[:, 2]  # the image-id channel
    assert changed.any()
    for i in range(B):
        if changed[i].any():
            r, c = changed[i].nonzero().unbind(1)
            box = changed[i, r.min() : r.max() + 1, c.min() : c.max() + 1]
            assert box.all()  # a full rectangle
            assert len(xo[i, 2][changed[i]].unique()) == 1  # from one other image


def test_cutout_zeroes_one_square_of_the_image_only():
    x, y = _batch()
    x = x * 0.9 + 0.1  # no zero pixels before
    xo, yo = cutout(x, y, _gen(7), size=0.25)
    assert torch.equal(yo, y)
    changed = (xo != x).any(1)
    assert (xo.permute(1, 0, 2, 3)[:, changed] == 0).all()
    side = 0.25 * min(H, W)
    for i in range(B):
        r, c = changed[i].nonzero().unbind(1)
        assert len(r) > 0
        assert r.max() - r.min() + 1 <= side and c.max() - c.min() + 1 <= side
        assert changed[i, r.min() : r.max() + 1, c.min() : c.max() + 1].all()


def test_random_erase_fills_a_rectangle_of_the_image_only():
    x, y = _batch()
    xo, yo = random_erase(x, y, _gen(8))
    assert torch.equal(yo, y)
    changed = (xo != x).any(1)
    for i in range(B):
        r, c = changed[i].nonzero().unbind(1)
        assert len(r) >= 0.02 * H * W * 0.9
        assert changed[i, r.min() : r.max() + 1, c.min() : c.max() + 1].float().mean() > 0.99


def test_gaussian_noise_perturbs_image_keeps_mask():
    x = torch.full((B, 3, H, W), 0.5)
    y = _batch()[1]
    xo, yo = gaussian_noise(x, y, _gen(9), sigma=0.1)
    assert torch.equal(yo, y)
    assert (xo - x).std().item() == pytest.approx(0.1, rel=0.1)
    assert (xo - x).mean().abs() < 0.01
    ones = torch.ones_like(x)
    assert gaussian_noise(ones, y, _gen(9))[0].max() <= 1.0


def test_elastic_keeps_masks_binary_and_aligned():
    x, y = _encoded()
    xo, yo = elastic(x, y, _gen(10), sigma=0.1, magnitude=0.05)
    assert ((yo == 0) | (yo == 1)).all()
    assert torch.equal((xo[:, :1] > 0.5).float(), yo)  # same field for image and mask
    assert not torch.equal(yo, y)  # the field moved something
    # the deformation is a small one: most mask pixels stay where they were
    assert (yo != y).float().mean() < 0.1


def test_tumorcp_pastes_another_images_polyp():
    x, y = _encoded()  # channel 0 = mask, channel 2 = image id
    xo, yo = tumorcp(x, y, _gen(11))
    assert (yo >= y).all()  # union: foreground never lost
    replaced = (xo != x).any(1)
    assert replaced.any()
    assert not (replaced & (yo[:, 0] == 0)).any()  # image changes only inside the new mask
    for i in range(B):
        if replaced[i].any():
            source = xo[i, 2][replaced[i]].unique()
            assert len(source) == 1 and source.item() != x[i, 2, 0, 0].item()  # one other image
            assert (xo[i, 0][replaced[i]] == 1).all()  # and only its polyp pixels


@pytest.mark.parametrize("seed", range(4))
def test_tumorcp_pastes_the_whole_donor_polyp_into_an_empty_image(seed):
    x, y = _batch(seed)
    x, y = x[[0, -1]], y[[0, -1]]  # image 0 has a polyp, image 1 none: each is the other's donor
    xo, yo = tumorcp(x, y, _gen(seed))
    assert torch.equal(xo[0], x[0]) and torch.equal(yo[0], y[0])  # empty donor: nothing pasted
    # the polyp is flipped/shifted but stays whole: same area, same pixel values (permuted)
    assert yo[1].sum() == y[0].sum() > 0
    pasted = xo[1][:, yo[1, 0] > 0].sort(1).values
    polyp = x[0][:, y[0, 0] > 0].sort(1).values
    assert torch.equal(pasted, polyp)
    assert torch.equal(xo[1][:, yo[1, 0] == 0], x[1][:, yo[1, 0] == 0])


def test_parse_augs_composes_in_order_and_rejects_unknown_names():
    x, y = _batch()
    composed = parse_augs("basic + cutout")
    xa, ya = composed(x, y, _gen(13))
    g = _gen(13)
    xb, yb = cutout(*AUGMENTATIONS["basic"](x, y, g), g)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert parse_augs("none")(x, y) == (x, y)
    with pytest.raises(ValueError, match="valid names: none, basic, cutmix"):
        parse_augs("basic+mixup")
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_augs("")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_cuda_generator():
    x, y = _batch()
    x, y = x.cuda(), y.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    xo, yo = parse_augs("basic+cutmix+cutout+elastic+random-erase+gaussian-noise+tumorcp")(x, y, g)
    assert xo.device == x.device and yo.device == y.device
    assert xo.shape == x.shape and ((yo == 0) | (yo == 1)).all()


# --------------------------------------------------------------------------- K classes, C channels

def _k_class(channels: int, seed: int = 0):
    """K = 3 nested masks (class 1, a rectangle; class 2, a rectangle inside it, at least 2 px from its edge) and
    images whose channel 0 encodes the label (label / 2); further channels are noise. The last image has none."""
    g = _gen(seed)
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    top, left = torch.randint(0, H - 12, (B, 1, 1), generator=g), torch.randint(0, W - 12, (B, 1, 1), generator=g)
    outer = (rows >= top) & (rows < top + 10) & (cols >= left) & (cols < left + 11)
    inner = (rows >= top + 3) & (rows < top + 7) & (cols >= left + 3) & (cols < left + 8)
    y = (outer.float() + inner.float())[:, None]
    y[-1] = 0.0
    x = torch.cat([y / 2, torch.rand(B, channels - 1, H, W, generator=g)], 1)
    return x, y


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_k_class_labels_are_kept_and_move_with_the_image(name, channels):
    """After each augmentation of a K = 3 batch the mask holds labels {0, 1, 2} only, and each label sits where the
    image content carrying it moved: exactly for flips and pastes, up to the warp's interpolation for elastic
    (a pixel of class c has the warped encoding within 1/4 of c/2, i.e. weight > 1/2 on c); photometric
    augmentations leave the mask as it was."""
    x, y = _k_class(channels)
    xo, yo = parse_augs(name, num_classes=3)(x, y, _gen(1))
    assert xo.shape == x.shape and yo.shape == y.shape and yo.dtype == y.dtype
    assert xo.min() >= 0 and xo.max() <= 1
    assert ((yo == 0) | (yo == 1) | (yo == 2)).all()
    if name in ("cutout", "random-erase", "gaussian-noise"):
        assert torch.equal(yo, y)
    elif name == "elastic":
        assert not torch.equal(yo, y)
        assert ((2 * xo[:, 0] - yo[:, 0]).abs() <= 0.5 + 1e-5).all()
        for c in (1, 2):  # every class survives the small warp, most of its pixels in place
            assert ((yo == c) & (y == c)).sum() > 0.7 * (y == c).sum()
    else:
        assert torch.equal(2 * xo[:, :1], yo)
    if name in ("cutmix", "tumorcp"):  # the pasted labels are the donor's classes, cup included
        assert ((yo == 2) & (y != 2)).any()


def test_tumorcp_keeps_a_binary_batch_bit_identical_to_the_union_rule():
    """The label-preserving paste gives 1 inside the pasted mask of a binary batch: today's union, bit for bit."""
    x, y = _batch(3)
    xo, yo = tumorcp(x, y, _gen(3))
    pasted = (xo != x).any(1, keepdim=True)
    assert torch.equal(yo, torch.where(pasted, torch.ones_like(y), y))


def test_parse_augs_gives_num_classes_to_elastic_only_for_k_classes():
    x, y = _encoded()
    assert torch.equal(parse_augs("elastic", num_classes=2)(x, y, _gen(4))[1], elastic(x, y, _gen(4))[1])
    xk, yk = _k_class(1)
    assert torch.equal(parse_augs("elastic", num_classes=3)(xk, yk, _gen(4))[1],
                       elastic(xk, yk, _gen(4), num_classes=3)[1])
