"""Batched, mask-consistent training augmentations (baselines for the DASP comparison).

Every augmentation is a function ``aug(x, y, generator=None) -> (x, y)`` with images
x (B, C, H, W) in [0, 1] (C = 3 colour or 1 grey) and masks y (B, 1, H, W) holding the class index
(binary: {0, 1}; K classes: 0..K-1); the outputs keep shape, dtype, device and ranges, and every
mask value stays a class label. Geometric changes hit image and mask together and move labels, never
mix them: flips and pastes copy mask values (cutmix and tumorcp paste the donor's labels, not a
binarised union), and the elastic warp of a K-class mask warps its one-hot channels and takes the
class of largest weight (``elastic(..., num_classes=K)``; :func:`parse_augs` binds K). Photometric ones
(cutout, random-erase, gaussian-noise) change the image only, on all C channels. Every image of the
batch is augmented (only "basic" flips each image with probability 1/2); no per-image Python loops.

Randomness: all random numbers come from ``generator`` (drawn on the generator's device, then
moved to the batch's device; pass a generator on the batch's device to avoid copies). kornia's
augmentation modules draw from the global RNG, so they are not used; kornia only does the
deterministic elastic warp given our own noise field. The same generator state gives the same
output on the same device.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch

from augforge.ranges import one_hot
from augforge.rng import draw_device

Aug = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _uniform(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) float32 of ``shape`` drawn from ``generator``, on x's device."""
    return torch.rand(shape, generator=generator, device=draw_device(generator, x.device)).to(x.device)


def _normal(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) of ``shape`` drawn from ``generator``, on x's device and dtype."""
    return torch.randn(shape, generator=generator, device=draw_device(generator, x.device)).to(x.device, x.dtype)


def _donor_index(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B,) index of another image of the batch for each image: (i + k) mod B, k in [1, B)."""
    b = x.shape[0]
    k = torch.floor(_uniform((1,), x, generator) * max(b - 1, 1)).long() + 1
    return (torch.arange(b, device=x.device) + k) % b


def _box(top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor, right: torch.Tensor, h: int, w: int):
    """(B, 1, H, W) bool: pixels whose centre lies in [top, bottom) x [left, right) (pixel units, (B,) each)."""
    rows = torch.arange(h, device=top.device) + 0.5
    cols = torch.arange(w, device=top.device) + 0.5
    in_rows = (rows >= top[:, None]) & (rows < bottom[:, None])
    in_cols = (cols >= left[:, None]) & (cols < right[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def none(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
    """Identity."""
    return x, y


def basic(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
    """Random horizontal and vertical flips, each with probability 1/2 per image, image and mask alike."""
    u = _uniform((2, x.shape[0]), x, generator)
    for flip, dim in ((u[0] < 0.5, -1), (u[1] < 0.5, -2)):
        flip = flip.view(-1, 1, 1, 1)
        x, y = torch.where(flip, x.flip(dim), x), torch.where(flip, y.flip(dim), y)
    return x, y


def cutmix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
    """CutMix (Yun et al., ICCV 2019) for segmentation: a box of another image of the batch is
    pasted at the same place into the image and the mask.

    Box area fraction lambda ~ U(0, 1) (the paper's Beta(1, 1)), image aspect ratio, centre uniform,
    clipped at the borders.
    """
    h, w = x.shape[-2:]
    # 1. box side fraction sqrt(lambda) and centre, per image
    u = _uniform((3, x.shape[0]), x, generator)
    half_h, half_w = u[0].sqrt() * h / 2, u[0].sqrt() * w / 2
    cy, cx = u[1] * h, u[2] * w
    box = _box(cy - half_h, cy + half_h, cx - half_w, cx + half_w, h, w)
    # 2. paste the donor's box into image and mask
    donor = _donor_index(x, generator)
    return torch.where(box, x[donor], x), torch.where(box, y[donor], y)


def cutout(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, size: float = 0.25):
    """Cutout (DeVries & Taylor 2017): zero a square of side ``size`` * min(H, W) in the image.

    The centre is uniform over the image, so the square may be partly outside (as in the paper).
    The mask is unchanged.
    """
    h, w = x.shape[-2:]
    half = size * min(h, w) / 2
    u = _uniform((2, x.shape[0]), x, generator)
    cy, cx = u[0] * h, u[1] * w
    box = _box(cy - half, cy + half, cx - half, cx + half, h, w)
    return x.masked_fill(box, 0.0), y


def random_erase(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    area: tuple[float, float] = (0.02, 0.4),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
):
    """Random Erasing (Zhong et al., AAAI 2020): a rectangle inside the image, of area fraction
    s ~ U(area) and aspect ratio r ~ U(aspect), filled with per-pixel U(0, 1) values. Mask unchanged.
    """
    b, c, h, w = x.shape
    # 1. rectangle size (clipped to the image) and top-left corner keeping it inside
    u = _uniform((4, b), x, generator)
    s = area[0] + u[0] * (area[1] - area[0])
    r = aspect[0] + u[1] * (aspect[1] - aspect[0])
    rh = (s * h * w * r).sqrt().clamp(max=h)
    rw = (s * h * w / r).sqrt().clamp(max=w)
    top, left = u[2] * (h - rh), u[3] * (w - rw)
    box = _box(top, top + rh, left, left + rw, h, w)
    # 2. fill with random values
    fill = _uniform((b, c, h, w), x, generator).to(x.dtype)
    return torch.where(box, fill, x), y


def gaussian_noise(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, sigma: float = 0.1):
    """Gaussian noise training: x + N(0, sigma^2) per pixel, clamped to [0, 1]. Mask unchanged."""
    return (x + sigma * _normal(tuple(x.shape), x, generator)).clamp(0.0, 1.0), y


def elastic(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    sigma: float = 0.08,
    magnitude: float = 0.02,
    num_classes: int = 2,
):
    """Elastic deformation (Simard et al., ICDAR 2003), one field for image and mask.

    sigma: smoothing of the displacement field, as a fraction of min(H, W); magnitude: standard
    deviation of the displacement, as a fraction of the image size (approximately; the field is
    weaker near the borders). Both are warped bilinearly (reflection padding); a binary mask
    (``num_classes`` 2) is re-binarised at 0.5. A K-class mask (``num_classes`` K > 2) is warped as its
    K one-hot channels and each pixel takes the class of largest warped weight (the same rule: for two
    classes the weight of class 1 exceeds 1/2), so labels move and are never averaged into another class.
    """
    from kornia.geometry.transform import elastic_transform2d

    b, c, h, w = x.shape
    # 1. white noise U(-1, 1) for the x- and y-displacement
    noise = _uniform((b, 2, h, w), x, generator).to(x.dtype) * 2 - 1
    # 2. Gaussian smoothing of std sigma_px shrinks the noise std to 1 / (sigma_px * sqrt(12 pi));
    #    alpha rescales it to 2 * magnitude in grid units ([-1, 1] spans the image)
    sigma_px = max(sigma * min(h, w), 0.5)
    kernel = 2 * math.ceil(3 * sigma_px) + 1
    alpha = 2 * magnitude * sigma_px * math.sqrt(12 * math.pi)
    # 3. warp image and mask together (a K-class mask as K one-hot channels), re-binarise the mask
    labels = y.to(x.dtype) if num_classes <= 2 else one_hot(y, num_classes, x.dtype)
    warped = elastic_transform2d(
        torch.cat([x, labels], 1),
        noise,
        kernel_size=(kernel, kernel),
        sigma=(sigma_px, sigma_px),
        alpha=(alpha, alpha),
        padding_mode="reflection",
    )
    if num_classes > 2:
        return warped[:, :c].clamp(0.0, 1.0), warped[:, c:].argmax(1, keepdim=True).to(y.dtype)
    return warped[:, :c].clamp(0.0, 1.0), (warped[:, c:] > 0.5).to(y.dtype)


def _gather_pixels(t: torch.Tensor, src_rows: torch.Tensor, src_cols: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = t[b, :, src_rows[b, i], src_cols[b, j]]; t (B, C, H, W), src_* (B, H) / (B, W)."""
    b, c, h, w = t.shape
    t = t.gather(2, src_rows[:, None, :, None].expand(b, c, h, w))
    return t.gather(3, src_cols[:, None, None, :].expand(b, c, h, w))


def _shifted_flipped_sources(present: torch.Tensor, flip: torch.Tensor, u: torch.Tensor):
    """Source indices along one axis for a random flip then an integer shift that keeps the object inside.

    present: (B, N) bool, where the donor object occupies this axis; flip: (B,) bool; u: (B,) U[0, 1).
    Returns src (B, N) long (clamped) and valid (B, N) bool (False where the source is off the image).
    """
    n = present.shape[1]
    idx = torch.arange(n, device=present.device)
    # 1. object extent [first, last] (an empty mask gives [0, n-1], hence shift 0), after the flip
    first = present.float().argmax(1)
    last = n - 1 - present.flip(1).float().argmax(1)
    first, last = torch.where(flip, n - 1 - last, first), torch.where(flip, n - 1 - first, last)
    # 2. shift uniform over the offsets that keep [first, last] inside [0, n-1]
    count = n - last + first
    shift = torch.minimum((u * count).long(), count - 1) - first
    # 3. output index i reads flipped-donor index i - shift, i.e. donor index (n-1-(i-shift) if flipped)
    src = idx[None, :] - shift[:, None]
    valid = (src >= 0) & (src < n)
    src = torch.where(flip[:, None], n - 1 - src, src).clamp(0, n - 1)
    return src, valid


def tumorcp(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
    """TumorCP (Yang et al., MICCAI 2021), object-level copy-paste: the polyp (masked region) of
    another image of the batch, randomly flipped and shifted (staying inside the image), is pasted
    into each image: image pixels are replaced inside the pasted mask and the mask becomes the union.
    With K classes the object is the donor's foreground (every class > 0) and it is pasted with its own
    labels (a disc with its nested cup stays a disc with its cup); binary masks get 1 there, as before.

    Simplification: TumorCP's rotation/scaling/elastic/gamma object transforms are left out.
    """
    h, w = x.shape[-2:]
    donor = _donor_index(x, generator)
    x_donor, y_donor = x[donor], y[donor]
    # 1. random flips and shifts per image
    u = _uniform((4, x.shape[0]), x, generator)
    fg = y_donor[:, 0] > 0.5
    src_rows, valid_rows = _shifted_flipped_sources(fg.any(2), u[0] < 0.5, u[2])
    src_cols, valid_cols = _shifted_flipped_sources(fg.any(1), u[1] < 0.5, u[3])
    # 2. move the donor image and mask
    y_paste = _gather_pixels(y_donor, src_rows, src_cols)
    paste = (y_paste > 0.5) & (valid_rows[:, None, :, None] & valid_cols[:, None, None, :])
    x_paste = _gather_pixels(x_donor, src_rows, src_cols)
    # 3. paste: donor pixels and labels inside the pasted mask (binary: 1 there, the union of the masks)
    return torch.where(paste, x_paste, x), torch.where(paste, y_paste, y)


AUGMENTATIONS: dict[str, Aug] = {
    "none": none,
    "basic": basic,
    "cutmix": cutmix,
    "cutout": cutout,
    "elastic": elastic,
    "random-erase": random_erase,
    "gaussian-noise": gaussian_noise,
    "tumorcp": tumorcp,
}


NEEDS_CLASSES = ("elastic",)  # the augmentations that take num_classes (they must know K to move labels)


def parse_augs(spec: str, num_classes: int = 2) -> Aug:
    """Compose augmentations named in ``spec`` joined by "+" (e.g. "basic+cutout"), applied in order.

    ``num_classes``: K of the masks (2: binary); given to the augmentations that need it (elastic)."""
    names = [name.strip() for name in spec.split("+")]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(
            f"unknown augmentation {', '.join(map(repr, unknown))}; valid names: {', '.join(AUGMENTATIONS)} "
            f"(join several with '+')"
        )
    augs = [partial(AUGMENTATIONS[name], num_classes=num_classes) if name in NEEDS_CLASSES and num_classes > 2
            else AUGMENTATIONS[name] for name in names]

    def apply(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        for aug in augs:
            x, y = aug(x, y, generator)
        return x, y

    return apply
