"""Seeded synthetic colonoscopy frames with polyps: the demo's embedded dataset and the fast tests' data.

Each frame imitates a Kvasir-SEG image (Jha et al., MMM 2020) at low cost: reddish/pink mucosa with
low-frequency colour and brightness noise, fine granular texture, dark curved folds with a lit ridge,
thin vessels, sometimes a dark lumen, an endoscope vignette, small specular highlights and sensor
noise. 0-2 polyps (10% none, 65% one, 25% two) are irregular blobs (an ellipse with smoothed radial
noise, 2-25% of the image) with their own hue shift, granular texture, dome shading lit from one side,
a cast shadow and a soft edge. The polyp's colour shift is random in sign and size, so polyp and
background colour distributions overlap: no single-channel threshold separates them.

Pair ``index`` depends only on ``(seed, index, size)`` (``numpy.random.default_rng([seed, index])``),
so any shard reproduces the same bytes. Only float64 numpy arithmetic, ``cv2`` drawing, ``cv2.resize``
and ``cv2.GaussianBlur`` with explicit kernel sizes are used. The random draws do not depend on
``size`` (geometry is in normalised units) except the last one (per-pixel noise), so the same
``(seed, index)`` gives the same scene at every size.
"""

from __future__ import annotations

import cv2
import numpy as np

_N_POLYPS_P = (0.10, 0.65, 0.25)  # P(0 polyps), P(1), P(2)
_SUBPIXEL_BITS = 4  # fixed-point precision of polygon vertices for cv2.fillPoly
_PINK = np.array([0.92, 0.52, 0.50])  # RGB mucosa palette endpoints, in [0, 1]
_ORANGE = np.array([0.90, 0.50, 0.30])


def _odd(x: float) -> int:
    """Smallest odd kernel size >= max(x, 1)."""
    k = max(int(np.ceil(x)), 1)
    return k if k % 2 else k + 1


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (kernel about 3 sigma each side, replicated borders) of a float64 (H, W[, C]) field.

    Wide blurs run on a copy downsampled so that sigma is 2 px there, then upsampled bilinearly.
    """
    factor = int(sigma_px // 2)
    if factor < 2:
        return cv2.GaussianBlur(a, (_odd(6.0 * sigma_px),) * 2, sigma_px, borderType=cv2.BORDER_REPLICATE)
    small = cv2.resize(a, (-(-a.shape[1] // factor), -(-a.shape[0] // factor)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (_odd(6.0 * sigma_px / factor),) * 2, sigma_px / factor,
                             borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)


def _smooth_noise(rng: np.random.Generator, grid: int, height: int, width: int, channels: int = 1) -> np.ndarray:
    """Isotropic smooth noise, std about 0.5, float64 (height, width[, channels]).

    A standard-normal ``(grid, grid, channels)`` field is upsampled bilinearly to 4 px per cell (at most the
    output size), blurred over half a cell (no grid artefacts), then upsampled bilinearly to the output.
    """
    cells = rng.standard_normal((grid, grid, channels))
    work = min(4 * grid, max(height, width))
    field = cv2.resize(cells, (work, work), interpolation=cv2.INTER_LINEAR)
    field = cv2.GaussianBlur(field, (_odd(3.0 * work / grid),) * 2, 0.5 * work / grid, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)


def _draw_folds(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold valleys and their lit ridges: blurred elliptic arcs, each ``(size, size)`` in [0, 1]."""
    valleys = np.zeros((size, size))
    ridges = np.zeros((size, size))
    for _ in range(rng.integers(1, 5)):
        centre = rng.uniform(-0.6, 1.6, 2) * size
        axes = rng.uniform(0.3, 1.1, 2) * size
        angle, start = rng.uniform(0, 360, 2)
        span = rng.uniform(50, 160)
        width = rng.uniform(0.03, 0.08) * size
        offset = rng.uniform(0.02, 0.04) * size  # ridge sits just inside the valley
        for canvas, shrink in ((valleys, 0.0), (ridges, offset)):
            cv2.ellipse(
                canvas,
                tuple(int(v) for v in np.rint(centre * 2**_SUBPIXEL_BITS)),
                tuple(int(v) for v in np.rint(np.maximum(axes - shrink, 1) * 2**_SUBPIXEL_BITS)),
                angle, start, start + span, 1.0, max(int(round(width)), 1), cv2.LINE_AA, _SUBPIXEL_BITS,
            )
    return _blur(valleys, 0.03 * size), _blur(ridges, 0.03 * size)


def _draw_vessels(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thin branching vessels as smooth random walks, ``(size, size)`` in [0, 1]."""
    canvas = np.zeros((size, size))
    for _ in range(rng.integers(2, 7)):
        n = 12
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.35, n))
        steps = np.stack([np.cos(heading), np.sin(heading)], 1) * rng.uniform(0.02, 0.05)
        points = rng.uniform(0, 1, 2) + np.cumsum(steps, 0)
        pts = np.rint(points * size * 2**_SUBPIXEL_BITS).astype(np.int32)
        cv2.polylines(canvas, [pts], False, 1.0, max(round(0.008 * size), 1), cv2.LINE_AA, _SUBPIXEL_BITS)
    return _blur(canvas, 0.006 * size)


def _polyp_mask(rng: np.random.Generator, size: int, area_frac: float) -> np.ndarray:
    """One irregular blob: an ellipse with smoothed radial noise, filled; ``(size, size)`` uint8 {0, 1}."""
    # 1. radius r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)), harmonics 2..6 with decaying amplitude
    theta = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    k = np.arange(2, 7)[:, None]
    amps = rng.uniform(0.0, 0.22, (5, 1)) / k
    phases = rng.uniform(0, 2 * np.pi, (5, 1))
    radial = 1.0 + (amps * np.cos(k * theta + phases)).sum(0)
    # 2. ellipse of the requested area, random aspect ratio and rotation
    aspect = rng.uniform(0.6, 1.0)
    radius = np.sqrt(area_frac / np.pi)
    rot = rng.uniform(0, 2 * np.pi)
    ex, ey = radius / np.sqrt(aspect) * np.cos(theta), radius * np.sqrt(aspect) * np.sin(theta)
    x = radial * (ex * np.cos(rot) - ey * np.sin(rot))
    y = radial * (ex * np.sin(rot) + ey * np.cos(rot))
    # 3. centre keeps most of the blob inside the frame; fill with sub-pixel vertices
    centre = rng.uniform(0.5 * radius + 0.08, 0.92 - 0.5 * radius, 2)
    pts = np.stack([centre[0] + x, centre[1] + y], 1) * size * 2**_SUBPIXEL_BITS
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return mask


def _check_args(index: int, size: int, seed: int) -> None:
    if index < 0 or seed < 0:
        raise ValueError(f"index/n and seed must be >= 0, got {index} and {seed}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")


def _draw_polyp(rng: np.random.Generator, image: np.ndarray, blob: np.ndarray, colour: np.ndarray,
                light: np.ndarray, radius_px: float) -> np.ndarray:
    """Blend one polyp ``blob`` (size, size) {0, 1} into ``image`` (size, size, 3) in place; return the
    (x, y) pixel where its specular highlight goes.

    Work happens in the blob's bounding box plus a margin covering the cast shadow.
    """
    # 1. crop around the blob
    x, y, w, h = cv2.boundingRect(blob)
    margin = int(radius_px) + 3
    y0, y1, x0, x1 = max(y - margin, 0), min(y + h + margin, blob.shape[0]), max(x - margin, 0), \
        min(x + w + margin, blob.shape[1])
    crop = blob[y0:y1, x0:x1].astype(np.float64)
    # 2. dome height (wide blur of the blob) and how much each point faces the light, computed at
    #    1/factor resolution and upsampled bilinearly (continuous shading, no interpolation ripples)
    factor = max(int(0.35 * radius_px // 2), 1)
    small = cv2.resize(crop, (-(-crop.shape[1] // factor), -(-crop.shape[0] // factor)), interpolation=cv2.INTER_AREA)
    dome = _blur(small, 0.35 * radius_px / factor)
    dome = dome / max(dome.max(), 1e-6)
    grad_y, grad_x = np.gradient(dome)
    facing = (grad_x * light[0] + grad_y * light[1]) * (radius_px / factor)  # > 0 on the lit side
    dome, facing = (cv2.resize(a, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) for a in (dome, facing))
    # 3. polyp colour: hue shift of the mucosa colour, granular texture scaled to the polyp, dome shading
    shift = np.array([rng.uniform(-0.04, 0.1), *rng.uniform(-0.22, 0.12, 2)])
    texture = 1.0 + 0.08 * _smooth_noise(rng, 8, y1 - y0, x1 - x0) + 0.1 * _smooth_noise(rng, 24, y1 - y0, x1 - x0)
    polyp = (0.8 + 0.25 * dome - 0.35 * facing) * texture
    polyp = polyp[..., None] * (colour * (1.0 + shift))
    # 4. shadow cast away from the light, then soft-edged alpha blending
    offset = light * 0.25 * radius_px
    shadow = cv2.warpAffine(_blur(crop, 0.15 * radius_px), np.float64([[1, 0, offset[0]], [0, 1, offset[1]]]),
                            (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = _blur(crop, 0.012 * blob.shape[0] + 0.3)
    region = image[y0:y1, x0:x1]  # a view: the blend below writes into `image`
    region *= ((1.0 - 0.35 * shadow) * (1.0 - alpha))[..., None]
    polyp *= alpha[..., None]
    region += polyp
    peak_y, peak_x = np.unravel_index(np.argmax(dome + 0.5 * facing), dome.shape)
    return np.array([x0 + peak_x, y0 + peak_y], np.float64)


def synthetic_pair(index: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic colonoscopy frame ``index`` of the stream ``seed``.

    Returns ``image`` (size, size, 3) uint8 RGB and ``mask`` (size, size) uint8 in {0, 255}
    (255 = polyp, exactly the filled polygons; the image blends each polyp over ~1.5% of ``size``
    around that boundary). Deterministic in ``(seed, index, size)``.
    """
    _check_args(index, size, seed)
    rng = np.random.default_rng([seed, index])
    scale = size * 2**_SUBPIXEL_BITS  # normalised [0, 1] coordinates -> fixed-point pixels for cv2 drawing

    # 1. mucosa: palette colour (0-255 units) with low-frequency colour noise, granular brightness texture
    base = (_PINK + rng.uniform(0, 1) * (_ORANGE - _PINK)) * rng.uniform(0.85, 1.1) + rng.normal(0, 0.025, 3)
    base = 255.0 * base
    lum = 1.0 + 0.1 * _smooth_noise(rng, 12, size, size) + 0.08 * _smooth_noise(rng, 48, size, size)

    # 2. folds (dark valley + lit ridge), optional dark lumen, vessels (darken green/blue more than red)
    valleys, ridges = _draw_folds(rng, size)
    lum = lum * (1.0 - rng.uniform(0.3, 0.55) * valleys) + rng.uniform(0.1, 0.25) * ridges
    if rng.uniform() < 0.35:
        lumen = np.zeros((size, size))
        centre = np.rint(rng.uniform(0.15, 0.85, 2) * scale).astype(int)
        axes = np.rint(rng.uniform(0.06, 0.16, 2) * scale).astype(int)
        cv2.ellipse(lumen, tuple(centre), tuple(axes), rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA,
                    _SUBPIXEL_BITS)
        lum = lum * (1.0 - 0.85 * _blur(lumen, 0.06 * size))
    vessels = _draw_vessels(rng, size) * rng.uniform(0.1, 0.25)
    image = _smooth_noise(rng, 4, size, size, 3)  # in-place updates: full-size float64 ops dominate the cost
    image *= 0.08
    image -= vessels[..., None] * np.array([0.3, 1.0, 0.8])
    image += 1.0
    image *= lum[..., None] * base

    # 3. polyps, lit from direction `light` (x, y); the mask is the union of the filled blobs
    n_polyps = rng.choice(3, p=_N_POLYPS_P)
    mask = np.zeros((size, size), np.uint8)
    light = rng.normal(0, 1, 2)
    light = light / np.linalg.norm(light)
    spots = []
    for area in rng.uniform(0.025, 0.17, n_polyps) / max(n_polyps, 1) ** 0.5:
        blob = _polyp_mask(rng, size, area)
        mask |= blob
        spots.append(_draw_polyp(rng, image, blob, base, light, np.sqrt(area / np.pi) * size) / size)

    # 4. illumination: low-frequency brightness times an endoscope vignette around an off-centre axis
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    axis = rng.normal(0, 0.08, 2)
    r2 = (c[None, :] - axis[0]) ** 2 + (c[:, None] - axis[1]) ** 2
    illumination = (1.0 + 0.2 * _smooth_noise(rng, 5, size, size)) / (1.0 + rng.uniform(0.25, 0.6) * r2 * r2)

    # 5. specular highlights: small bright ellipses, one per polyp dome plus random ones
    spec = np.zeros((size, size))
    for spot in [*spots, *rng.uniform(0.1, 0.9, (rng.integers(2, 9), 2))]:
        centre = np.rint((spot + rng.normal(0, 0.015, 2)) * scale).astype(int)
        axes = np.rint(rng.uniform(0.004, 0.02, 2) * scale + 1).astype(int)
        cv2.ellipse(spec, tuple(centre), tuple(axes), rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA,
                    _SUBPIXEL_BITS)
    spec = np.minimum(_blur(spec, 0.006 * size + 0.3) * 1.5, 1.0)

    # 6. image * illumination, highlights blended to white, grey sensor noise; round half up to uint8
    image *= (illumination * (1.0 - spec))[..., None]
    image += (255.0 * spec + rng.normal(0.0, 2.55, (size, size)) + 0.5)[..., None]
    image_u8 = np.clip(image, 0.0, 255.0, out=image).astype(np.uint8)  # truncating x + 0.5 rounds half up
    return image_u8, mask * np.uint8(255)


def synthetic_pairs(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``0 .. n-1`` of stream ``seed``: images (n, size, size, 3) uint8 RGB, masks (n, size, size) uint8 {0, 255}.

    Pair ``i`` equals ``synthetic_pair(i, size, seed)`` byte for byte.
    """
    _check_args(n, size, seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], masks[i] = synthetic_pair(i, size, seed)
    return images, masks


# --------------------------------------------------------------------------- fundus: 3 classes, one channel

FUNDUS_CLASSES = ("background", "disc", "cup")
_FUNDUS_STREAM = 1  # the fundus pairs' streams are numpy.random.default_rng([seed, index, 1])
FUNDUS_PALETTE = ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # palette PNG colours of the source files (VOC's first three)
FUNDUS_COLOURS = {"background": [0, 0, 0], "disc": [255, 0, 0], "cup": [0, 0, 255]}  # colour-coded source files


def _fundus_blob(rng: np.random.Generator, size: int, centre: np.ndarray, radius: float, aspect: float,
                 rot: float, rough: float) -> np.ndarray:
    """A filled near-ellipse (smoothed radial noise, harmonics 2..5 of amplitude up to ``rough``), centre and
    radius in [0, 1] units, ``(size, size)`` uint8 {0, 1}."""
    theta = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
    k = np.arange(2, 6)[:, None]
    radial = 1.0 + (rng.uniform(0.0, rough, (4, 1)) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0)
    ex, ey = radius / np.sqrt(aspect) * np.cos(theta), radius * np.sqrt(aspect) * np.sin(theta)
    x = radial * (ex * np.cos(rot) - ey * np.sin(rot))
    y = radial * (ex * np.sin(rot) + ey * np.cos(rot))
    pts = np.stack([centre[0] + x, centre[1] + y], 1) * size * 2**_SUBPIXEL_BITS
    blob = np.zeros((size, size), np.uint8)
    cv2.fillPoly(blob, [np.rint(pts).astype(np.int32)], 1, cv2.LINE_8, _SUBPIXEL_BITS)
    return blob


def _fundus_vessels(rng: np.random.Generator, size: int, origin: np.ndarray, disc_radius: float) -> np.ndarray:
    """Retinal vessels leaving the disc: 4-7 tapering, gently curving random walks from near ``origin`` (the
    cup), each with up to two branches; ``(size, size)`` in [0, 1]."""
    canvas = np.zeros((size, size))

    def walk(start: np.ndarray, heading: float, width: float, n: int) -> list[tuple[np.ndarray, float, float]]:
        points, stops = [start], []
        for _ in range(n):
            heading += rng.normal(0, 0.18)
            points.append(points[-1] + rng.uniform(0.035, 0.06) * np.array([np.cos(heading), np.sin(heading)]))
            stops.append(heading)
        for j in range(n):  # tapering segments
            w = width * (1.0 - 0.6 * j / n)
            a, b = (np.rint(p * size * 2**_SUBPIXEL_BITS).astype(int) for p in points[j:j + 2])
            cv2.line(canvas, tuple(a), tuple(b), 1.0, max(int(round(w * size)), 1), cv2.LINE_AA, _SUBPIXEL_BITS)
        return [(points[j], stops[j], width * (1.0 - 0.6 * j / n)) for j in range(2, n, 3)]

    for heading in rng.uniform(0, 2 * np.pi) + np.sort(rng.uniform(0, 2 * np.pi, rng.integers(4, 8))):
        start = origin + rng.normal(0, 0.2 * disc_radius, 2)
        for point, h, w in walk(start, heading, rng.uniform(0.014, 0.024), 14)[:rng.integers(0, 3)]:
            walk(point, h + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), 0.6 * w, 8)
    return _blur(canvas, 0.004 * size + 0.3)


def synthetic_fundus_pair(index: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic grey disc-centred fundus crop ``index`` of the stream ``seed`` (K = 3, C = 1).

    Imitates the optic-disc crops of glaucoma sets (REFUGE, RIGA, Drishti-GS) in grey: a retina of smooth
    low-frequency brightness and fine choroidal texture; a bright optic disc (6-22% of the crop, slightly
    elongated vertically, soft edge) holding a brighter, softer-edged cup (cup-to-disc diameter ratio
    0.35-0.75, off-centre by up to 15% of the disc radius); dark tapering vessels leaving the cup over the
    disc and the retina; a vignette and sensor noise. Returns ``image`` (size, size) uint8 and ``labels``
    (size, size) uint8 in {0, 1, 2} (0 background, 1 disc outside the cup, 2 cup; the cup lies inside the
    disc with a rim of at least 1.5% of ``size``, 1 px, by construction). Deterministic in ``(seed, index, size)``; the draws do not depend on ``size``
    except the last (per-pixel noise).
    """
    _check_args(index, size, seed)
    rng = np.random.default_rng([seed, index, _FUNDUS_STREAM])

    # 1. retina: base level, low-frequency brightness, fine choroidal texture
    base = 255.0 * rng.uniform(0.28, 0.42)
    retina = 1.0 + 0.12 * _smooth_noise(rng, 4, size, size) + 0.04 * _smooth_noise(rng, 32, size, size)

    # 2. disc and nested cup (normalised units), painted disc then cup
    centre = 0.5 + np.clip(rng.normal(0, 0.05, 2), -0.12, 0.12)
    disc_radius = np.sqrt(rng.uniform(0.06, 0.22) / np.pi)
    disc = _fundus_blob(rng, size, centre, disc_radius, rng.uniform(0.8, 1.0), np.pi / 2 + rng.normal(0, 0.2), 0.12)
    cdr = rng.uniform(0.35, 0.75)
    offset = rng.uniform(0, 0.15 * disc_radius) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    rim = max(int(round(0.015 * size)), 1)  # the neuroretinal rim: the cup stays this many px inside the disc
    inner = cv2.erode(disc, np.ones((2 * rim + 1,) * 2, np.uint8))
    cup = _fundus_blob(rng, size, centre + offset, cdr * disc_radius, rng.uniform(0.75, 1.0),
                       np.pi / 2 + rng.normal(0, 0.3), 0.2) & inner
    labels = disc + cup  # 0, 1 (disc), 2 (cup)

    # 3. brightness: disc and cup raised with soft edges (the cup's edge softer: it is seen by depth, not colour)
    disc_gain, cup_gain = rng.uniform(0.55, 0.95), rng.uniform(0.25, 0.5)
    glow = disc_gain * _blur(disc.astype(np.float64), 0.012 * size + 0.3) + \
        cup_gain * _blur(cup.astype(np.float64), 0.025 * size + 0.3)
    halo = 0.12 * _blur(disc.astype(np.float64), 0.08 * size)  # peripapillary brightening
    image = retina * (1.0 + glow + halo) * (1.0 + 0.05 * _smooth_noise(rng, 12, size, size))

    # 4. vessels, darker on the retina than over the disc
    vessels = _fundus_vessels(rng, size, centre + offset, disc_radius)
    image *= 1.0 - rng.uniform(0.3, 0.5) * vessels

    # 5. vignette, sensor noise; round half up to uint8
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    r2 = (c[None, :] - rng.normal(0, 0.1)) ** 2 + (c[:, None] - rng.normal(0, 0.1)) ** 2
    image *= base / (1.0 + rng.uniform(0.1, 0.35) * r2)
    image += rng.normal(0.0, 2.55, (size, size)) + 0.5
    return np.clip(image, 0.0, 255.0).astype(np.uint8), labels.astype(np.uint8)


def synthetic_fundus_pairs(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fundus pairs ``0 .. n-1`` of stream ``seed``: images (n, size, size) uint8, labels (n, size, size) uint8
    in {0, 1, 2}; pair ``i`` equals ``synthetic_fundus_pair(i, size, seed)`` byte for byte."""
    _check_args(n, size, seed)
    images = np.empty((n, size, size), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    for i in range(n):
        images[i], labels[i] = synthetic_fundus_pair(i, size, seed)
    return images, labels


FUNDUS_LAYOUTS = ("palette", "structures", "labels", "colour")


def write_fundus_source(root, layout: str = "palette", n: int = 12, size: int = 64, seed: int = 0) -> dict:
    """The fundus pairs written as a distributed set would ship them, for ``augforge prepare``:
    ``images/eye<i>.png`` (grey PNG) and

    - ``palette``: ``masks/eye<i>.png`` palette PNGs (index = class; palette :data:`FUNDUS_PALETTE`, written
      with Pillow);
    - ``structures``: ``masks/disc/eye<i>.png`` and ``masks/cup/eye<i>.png``, 0/255 each, the disc mask
      holding the cup (prepare with ``--structures disc,cup``);
    - ``labels``: ``masks/eye<i>.png`` grey PNGs holding 0, 1, 2;
    - ``colour``: ``masks/eye<i>.png`` RGB PNGs in :data:`FUNDUS_COLOURS`, and that class map as
      ``class_map.json`` beside the folders (prepare with ``--class-map``).

    Returns {"root", "ids", "options": the prepare options this layout needs}.
    """
    from pathlib import Path

    if layout not in FUNDUS_LAYOUTS:
        raise ValueError(f"layout must be one of {FUNDUS_LAYOUTS}, got {layout!r}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for folder in (("masks/disc", "masks/cup") if layout == "structures" else ("masks",)):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"eye{i:03d}" for i in range(n)]
    colours = np.array(list(FUNDUS_COLOURS.values()), np.uint8)
    for i, stem in enumerate(ids):
        image, labels = synthetic_fundus_pair(i, size, seed)
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        if layout == "palette":
            from PIL import Image

            im = Image.fromarray(labels, mode="P")
            im.putpalette([c for rgb in FUNDUS_PALETTE for c in rgb])
            im.save(root / "masks" / f"{stem}.png")
        elif layout == "structures":
            cv2.imwrite(str(root / "masks" / "disc" / f"{stem}.png"), (labels >= 1).astype(np.uint8) * 255)
            cv2.imwrite(str(root / "masks" / "cup" / f"{stem}.png"), (labels == 2).astype(np.uint8) * 255)
        elif layout == "labels":
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), labels)
        else:
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), colours[labels][..., ::-1])
    options: list[str] = []
    if layout == "structures":
        options = ["--structures", "disc,cup"]
    elif layout == "colour":
        import json

        (root / "class_map.json").write_text(json.dumps(FUNDUS_COLOURS))
        options = ["--class-map", str(root / "class_map.json")]
    elif layout == "labels":
        options = ["--classes", ",".join(FUNDUS_CLASSES)]
    return {"root": root, "ids": ids, "options": options}
