"""Mask files as distributed -> class-index maps (``augforge prepare``; docs/multiclass.md, "Formats").

A dataset carries K classes (names, background first). A mask file is read in one of four ways:

- **binary** (K = 2, today's rule, :func:`augforge.data.dataset.decode_mask`): the max over colour
  channels, 16-bit scaled to 8, 0/1 scaled to 0/255, binarised at 128 (near-binary JPEG masks exact);
- **labels**: the pixel value is the class index 0..K-1: an integer label PNG (grey, 8 or 16 bit, or
  R = G = B) or a palette PNG, whose palette *index* is the class (read with Pillow; the palette's
  colours are not looked at);
- **class map** (``--class-map FILE``): each colour (or grey level) names a class; a pixel takes the
  class of the nearest listed colour within :func:`match_distance`; a pixel between colours is an
  edge blend (anti-aliasing, JPEG) when pixels of two classes lie within 2 px of it, and then takes
  the nearest class; any other pixel is a colour outside the map (refused in one line; in a JPEG mask
  only when such pixels fill an area, 1% of it, since JPEG smears the colour of small structures);
- **structures** (``--structures disc,cup``): one binary mask per structure, painted in the order
  given, a later structure over an earlier one, so nested structures are listed outer first
  (disc, then cup: a pixel in both is cup).

``--classes auto`` (the default) looks at every mask first (:func:`inspect_mask`, :func:`decide`): palette
PNGs and lossless grey masks whose values reach 2 but stay below 64 are label maps (K = the largest
value + 1); 0/255, 0/1, anti-aliased and near-binary JPEG masks are binary, prepared exactly as before;
a colour mask with two or more foreground colours, or a grey mask holding flat areas of three grey
levels (e.g. 0/128/255), is never collapsed to binary: it is refused with one line asking for
``--class-map`` (or ``--classes binary`` for today's union at 128).

Everything here is pure: encoded bytes or arrays in, arrays out; errors are one :class:`AugforgeError` line.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from augforge.data.dataset import BINARY_CLASSES
from augforge.errors import AugforgeError

MAX_AUTO_LABEL = 63  # a lossless grey mask with values in 2..63 (below the mid-grey band) is a label map
MAX_CLASSES = 256  # an index must fit a uint8 mask file
MAJOR = 0.01  # a colour or grey level counts when it holds at least 1% of a mask's pixels
FLAT_RANGE = 24  # a pixel is in a flat area when its 3x3 neighbourhood spans at most this many grey levels
MATCH_DISTANCE = 48.0  # a class-map colour matches within this RGB distance (less when two colours are closer)
BLEND_RADIUS = 2  # a pixel between colours with two classes this close (in px) is an edge blend
MODES = ("binary", "labels", "class-map", "structures")


# --------------------------------------------------------------------------- file kinds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_colour_type(data: bytes) -> int | None:
    """The IHDR colour type of PNG bytes (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA); None if not a PNG."""
    if data[:8] != PNG_MAGIC or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    return data[25]


def is_palette_png(data: bytes) -> bool:
    return png_colour_type(data) == 3


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def jpeg_components(data: bytes) -> int | None:
    """The number of colour components in a JPEG's frame header (1: grey); None when not found."""
    if not is_jpeg(data):
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            return data[i + 9] if i + 9 < len(data) else None
        i += 2 + length
    return None


def grey_file(data: bytes) -> bool | None:
    """True when the file's own header says grey (PNG colour type 0/4, one-component JPEG); None: look at
    the pixels (:func:`is_grey`)."""
    if png_colour_type(data) in (0, 4) or jpeg_components(data) == 1:
        return True
    return None


def is_grey(image: np.ndarray) -> bool:
    """uint8 (H, W, 3) RGB (or (H, W)): R, G and B equal at every pixel."""
    if image.ndim == 2:
        return True
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2]))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> (H, W, 3) for C = 3, (H, W) for C = 1: a grey image's one channel, else
    the luma of ITU-R BT.601 (OpenCV's RGB2GRAY)."""
    if channels == 3:
        return image
    if is_grey(image):
        return np.ascontiguousarray(image[..., 0])
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def palette_indices(data: bytes, where: str) -> np.ndarray:
    """A palette PNG's indices, uint8 (H, W), read with Pillow (OpenCV applies the palette)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("P", "PA"):
                raise AugforgeError(f"{where}: not a palette PNG (mode {im.mode})")
            return np.asarray(im.getchannel(0) if im.mode == "PA" else im, dtype=np.uint8).copy()
    except AugforgeError:
        raise
    except Exception:  # Pillow's errors on a corrupt file are many kinds: one line
        raise AugforgeError(f"{where}: unreadable or corrupt mask file") from None


def raw_mask(data: bytes, where: str) -> np.ndarray:
    """A mask file's samples as stored: (H, W) grey (uint8 or uint16) or (H, W, 3) RGB; a palette PNG's
    palette applied (its indices: :func:`palette_indices`); alpha dropped; TIFF read as
    :func:`augforge.data.dataset._read_tiff` reads it."""
    from augforge.data.dataset import _decode, _is_tiff, tiff_mask_samples

    if _is_tiff(data):
        arr = tiff_mask_samples(data)
        if arr is not None and arr.dtype.kind == "f":
            arr = np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
    else:
        arr = _decode(data, cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.ndim == 3:
            arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB) if arr.shape[2] >= 3 else arr[..., 0]
    if arr is None:
        raise AugforgeError(f"{where}: unreadable or corrupt mask file")
    if arr.ndim == 3 and is_grey(arr):
        arr = np.ascontiguousarray(arr[..., 0])
    if arr.dtype not in (np.uint8, np.uint16):
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return arr


def _rgb8(arr: np.ndarray) -> np.ndarray:
    """A raw mask as uint8 (H, W, 3) RGB (grey repeated; 16-bit scaled to 8)."""
    if arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


# --------------------------------------------------------------------------- what a mask holds (--classes auto)

@dataclass(frozen=True)
class Inspection:
    """What one mask file holds.

    kind: "labels" (class indices: ``values``), "zero-one" (values within {0, 1}: binary or labels),
    "binary" (today's rule applies), "colour-coded" or "grey-coded" (several classes in colours or grey
    levels: ``values`` the colours or levels). ``palette``: a palette PNG.
    """

    where: str
    kind: str
    values: tuple = ()
    palette: bool = False


def _flat_levels(grey: np.ndarray) -> list[int]:
    """The grey levels (uint8 (H, W)) that fill flat areas of at least MAJOR of the pixels: low (< 48),
    high (>= 208) and mid levels rounded to 32; an anti-aliased or JPEG edge is no flat area."""
    kernel = np.ones((3, 3), np.uint8)
    flat = (cv2.dilate(grey, kernel) - cv2.erode(grey, kernel)) <= FLAT_RANGE
    values = grey[flat].astype(np.int64)
    if values.size == 0:
        return []
    low, high = values < 48, values >= 208
    levels = [0] if low.sum() >= MAJOR * grey.size else []
    mid = values[~low & ~high]
    counts = np.bincount(np.rint(mid / 32.0).astype(np.int64), minlength=9)
    levels += [int(32 * k) for k in np.flatnonzero(counts >= MAJOR * grey.size)]
    if high.sum() >= MAJOR * grey.size:
        levels.append(255)
    return levels


def inspect_mask(data: bytes, where: str) -> Inspection:
    """What a mask file holds, for ``--classes auto`` (rules in the module docstring)."""
    if is_palette_png(data):
        indices = palette_indices(data, where)
        return Inspection(where, "labels", tuple(int(v) for v in np.unique(indices)), palette=True)
    arr = raw_mask(data, where)
    lossy = is_jpeg(data)
    if arr.ndim == 3:  # colour: count the corner colours (each channel >= 128 or not) holding >= 1% of pixels
        codes = (arr >= 128).astype(np.int64) @ np.array([4, 2, 1])
        counts = np.bincount(codes.ravel(), minlength=8)
        major = np.flatnonzero(counts >= MAJOR * codes.size)
        if (major != 0).sum() >= 2:
            colours = tuple(tuple(int(c) for c in np.rint(arr[codes == k].mean(0))) for k in major)
            return Inspection(where, "colour-coded", colours)
        arr = arr.max(axis=2)
    values = np.unique(arr)
    if not lossy and values.max() <= 1:
        return Inspection(where, "zero-one", tuple(int(v) for v in values))
    if not lossy and 2 <= values.max() <= MAX_AUTO_LABEL:
        return Inspection(where, "labels", tuple(int(v) for v in values))
    grey = (arr // 257).astype(np.uint8) if arr.dtype == np.uint16 else arr
    levels = _flat_levels(grey)
    if len(levels) >= 3 and any(0 < v < 255 for v in levels):
        return Inspection(where, "grey-coded", tuple(levels))
    return Inspection(where, "binary")


def _colours_text(colours) -> str:
    return ", ".join(f"({r}, {g}, {b})" for r, g, b in colours)


def decide(inspections: list[Inspection]) -> tuple[str, tuple[str, ...]]:
    """The dataset's mask mode and classes from every mask's :class:`Inspection` (``--classes auto``):
    ("labels", background + class1..class{K-1}) when a label or palette mask reaches index 2, else
    ("binary", BINARY_CLASSES). Colour- or grey-coded masks, and binary 0/255 masks mixed with label
    masks, are one line."""
    for ins in inspections:
        if ins.kind == "colour-coded":
            raise AugforgeError(f"{ins.where}: a colour-coded mask ({_colours_text(ins.values)}): name each colour's "
                                "class with --class-map FILE (or --classes binary for their union at 128)")
        if ins.kind == "grey-coded":
            raise AugforgeError(f"{ins.where}: areas of the grey levels {', '.join(map(str, ins.values))}: a grey-coded "
                                "K-class mask? name each level's class with --class-map FILE (e.g. {\"background\": 0, "
                                "\"disc\": 128, \"cup\": 255}), or --classes binary to binarise at 128")
    labels = [ins for ins in inspections if ins.kind == "labels"]
    top = max((max(ins.values) for ins in labels), default=0)
    if top < 2:
        return "binary", BINARY_CLASSES
    binary = next((ins for ins in inspections if ins.kind == "binary"), None)
    if binary is not None:
        first = max(labels, key=lambda ins: max(ins.values))
        raise AugforgeError(f"{binary.where}: a binary 0/255 mask among label masks holding class indices (e.g. "
                            f"{first.where}: {', '.join(map(str, first.values))}); give one kind of mask, or --classes "
                            "binary to binarise every mask at 128")
    if top > MAX_AUTO_LABEL:
        where = next(ins.where for ins in labels if max(ins.values) == top)
        raise AugforgeError(f"{where}: palette index {top}: more than {MAX_AUTO_LABEL + 1} classes? name the classes with "
                            "--classes background,NAME,... (an index past them is refused)")
    return "labels", ("background", *(f"class{k}" for k in range(1, top + 1)))


# --------------------------------------------------------------------------- --classes, --class-map, --structures

def parse_classes(text: str) -> tuple[str, ...] | None:
    """``--classes``: "auto" -> None; "binary" -> BINARY_CLASSES; "background,disc,cup" -> those names."""
    text = text.strip()
    if text in ("", "auto"):
        return None
    if text == "binary":
        return BINARY_CLASSES
    names = tuple(n.strip() for n in text.split(","))
    if len(names) < 2 or any(not n for n in names) or len(set(names)) < len(names):
        raise AugforgeError(f"--classes must be auto, binary or two or more distinct names, background first "
                            f"(e.g. background,disc,cup), got {text!r}")
    if len(names) > MAX_CLASSES:
        raise AugforgeError(f"--classes: at most {MAX_CLASSES} classes, got {len(names)}")
    return names


def parse_structures(text: str) -> tuple[str, ...]:
    """``--structures disc,cup`` -> ("disc", "cup"), outer first; "" -> ()."""
    if not text.strip():
        return ()
    names = tuple(n.strip() for n in text.split(","))
    if any(not n or "/" in n for n in names) or len(set(names)) < len(names):
        raise AugforgeError(f"--structures must be distinct mask folder names, outer first (e.g. disc,cup), got {text!r}")
    return names


@dataclass(frozen=True)
class ClassMap:
    """``--class-map``: class names (background first) and the colours naming them.

    colours: float64 (M, 3) RGB in 0..255 (a grey level g is (g, g, g)); index: int64 (M,) the class of each.
    """

    names: tuple[str, ...]
    colours: np.ndarray = field(repr=False)
    index: np.ndarray = field(repr=False)
    where: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        """'background (0, 0, 0), disc (255, 0, 0), ...' for messages."""
        parts = []
        for k, name in enumerate(self.names):
            cols = [tuple(int(c) for c in col) for col, i in zip(self.colours, self.index) if i == k]
            parts.append(f"{name} " + " ".join(f"({r}, {g}, {b})" if not r == g == b else str(r) for r, g, b in cols))
        return ", ".join(parts)


def _colour(value, where: str, name: str) -> list[tuple[int, int, int]]:
    """A class's colour(s): a grey level, [r, g, b], or a list of those."""
    def one(v):
        if isinstance(v, bool):
            raise ValueError
        if isinstance(v, int):
            v = [v] * 3
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(c, int) and not isinstance(c, bool)
                                                                     for c in v)):
            raise ValueError
        if not all(0 <= c <= 255 for c in v):
            raise ValueError
        return tuple(v)

    try:
        if isinstance(value, list) and value and all(isinstance(v, (list, tuple)) for v in value):
            return [one(v) for v in value]
        return [one(value)]
    except ValueError:
        raise AugforgeError(f"{where}: the colour of {name!r} must be a grey level 0-255, [R, G, B] or a list of "
                            f"those, got {json.dumps(value)}") from None


def parse_class_map(text: str, where: str) -> ClassMap:
    """A class map's text: a JSON object {"background": [0, 0, 0], "disc": [255, 0, 0], "cup": 128, ...} (a grey
    level or [R, G, B], or a list of those per class; classes in the order given, background first), or
    lines ``NAME R G B`` / ``NAME GREY`` (commas allowed between numbers; ``#`` starts a comment)."""
    entries: list[tuple[str, object]] = []
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise AugforgeError(f"{where}: not valid JSON ({e.msg}, line {e.lineno})") from None
        entries = [(str(k), v) for k, v in data.items()]
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"(?P<name>.+?)[\s:=]+(?P<nums>\d+(?:[\s,]+\d+){0,2})", line)
            nums = [int(x) for x in re.split(r"[\s,]+", m["nums"])] if m else []
            if m is None or len(nums) not in (1, 3):
                raise AugforgeError(f"{where}: line {n}: expected 'NAME R G B' or 'NAME GREY', got {line!r}")
            entries.append((m["name"].strip().strip("\"'"), nums[0] if len(nums) == 1 else nums))
    names: list[str] = []
    colours: list[tuple[int, int, int]] = []
    index: list[int] = []
    for name, value in entries:
        if not name or name in names:
            raise AugforgeError(f"{where}: class name {name!r} is empty or given twice")
        for col in _colour(value, where, name):
            if col in colours:
                raise AugforgeError(f"{where}: the colour {col} names two classes ({names[index[colours.index(col)]]}, "
                                    f"{name})")
            colours.append(col)
            index.append(len(names))
        names.append(name)
    if len(names) < 2:
        raise AugforgeError(f"{where}: a class map names at least two classes, background first")
    if len(names) > MAX_CLASSES:
        raise AugforgeError(f"{where}: at most {MAX_CLASSES} classes, got {len(names)}")
    return ClassMap(tuple(names), np.array(colours, np.float64), np.array(index, np.int64), where)


def read_class_map(path: str | Path) -> ClassMap:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise AugforgeError(f"--class-map {path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    return parse_class_map(text, f"--class-map {path}")


def match_distance(class_map: ClassMap) -> float:
    """How far (RGB, 0-255 units) a pixel may be from a class colour and take it: MATCH_DISTANCE, or half the
    distance between the two closest colours of different classes when that is less."""
    c, k = class_map.colours, class_map.index
    d = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    d[k[:, None] == k[None, :]] = np.inf
    return float(min(MATCH_DISTANCE, 0.5 * d.min()))


# --------------------------------------------------------------------------- mask files -> class indices

def _value_text(colour) -> str:
    r, g, b = (int(c) for c in colour)
    return f"value {r}" if r == g == b else f"colour ({r}, {g}, {b})"


def map_colours(rgb: np.ndarray, class_map: ClassMap, where: str, *, lossy: bool = False) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> uint8 (H, W) class indices by ``class_map`` (rules in the module docstring).

    1. each pixel's nearest class colour and its distance;
    2. a pixel within :func:`match_distance` takes that class;
    3. a pixel farther off takes it too when pixels of two classes (step 2) lie within BLEND_RADIUS px
       (an edge blend); any other such pixel is a colour outside the map: one line naming the file, the
       colour and how many pixels hold it. In a ``lossy`` (JPEG) mask, whose chroma is smeared over
       whole blocks (small structures lose their colour), only an area of such pixels is refused (pixels
       whose 3x3 neighbourhood is all outside, on at least MAJOR of the mask); the rest take the nearest
       class.
    """
    # 1. nearest class colour
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    d2 = ((pixels[:, None, :] - class_map.colours[None].astype(np.float32)) ** 2).sum(-1)
    nearest = d2.argmin(1)
    dist = np.sqrt(d2[np.arange(len(nearest)), nearest]).reshape(rgb.shape[:2])
    labels = class_map.index[nearest].reshape(rgb.shape[:2]).astype(np.uint8)
    # 2. matched pixels
    matched = dist <= match_distance(class_map)
    if matched.all():
        return labels
    # 3. edge blends: count the classes with a matched pixel within BLEND_RADIUS
    kernel = np.ones((2 * BLEND_RADIUS + 1,) * 2, np.uint8)
    near = np.zeros(rgb.shape[:2], np.int64)
    for k in range(class_map.num_classes):
        near += cv2.dilate(((labels == k) & matched).astype(np.uint8), kernel) > 0
    outside = ~matched & (near < 2)
    if lossy:  # only an area of such pixels (3x3 neighbourhoods all outside) on MAJOR of the mask is refused
        outside = cv2.erode(outside.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        if outside.sum() < MAJOR * outside.size:
            outside[:] = False
    if outside.any():
        colours, counts = np.unique(rgb[outside].reshape(-1, 3), axis=0, return_counts=True)
        worst = colours[counts.argmax()]
        raise AugforgeError(f"{where}: {_value_text(worst)} on {counts.max()} pixel(s) is not in the class map "
                            f"{class_map.where.removeprefix('--class-map ')} ({class_map.describe()})")
    return labels


def class_map_labels(data: bytes, where: str, class_map: ClassMap) -> np.ndarray:
    """A colour-coded (or grey-coded) mask file -> uint8 (H, W) class indices (:func:`map_colours`)."""
    return map_colours(_rgb8(raw_mask(data, where)), class_map, where, lossy=is_jpeg(data))


def index_labels(data: bytes, where: str, num_classes: int) -> np.ndarray:
    """An integer label or palette PNG -> uint8 (H, W) class indices; a value >= ``num_classes`` is one line."""
    if is_palette_png(data):
        labels, what = palette_indices(data, where), "palette index"
    else:
        arr = raw_mask(data, where)
        if arr.ndim == 3:
            raise AugforgeError(f"{where}: a colour mask where class indices were expected; name each colour's class "
                                "with --class-map FILE")
        if is_jpeg(data):
            raise AugforgeError(f"{where}: a JPEG mask cannot hold class indices exactly (lossy); give PNG label masks "
                                "or a --class-map of its grey levels")
        labels, what = arr, "value"
    top = int(labels.max(initial=0))
    if top >= num_classes:
        count = int(np.count_nonzero(labels == top))
        raise AugforgeError(f"{where}: {what} {top} on {count} pixel(s) is outside the {num_classes} classes "
                            f"(0..{num_classes - 1}); name them with --classes or --class-map")
    return labels.astype(np.uint8)


def paint_structures(masks: list[np.ndarray]) -> np.ndarray:
    """Binary masks (H, W) uint8 {0, 255}, one per structure, outer first -> uint8 (H, W) class indices:
    structure s (1-based) paints its pixels with s, over the structures before it."""
    labels = np.zeros(masks[0].shape, np.uint8)
    for s, mask in enumerate(masks, 1):
        labels[mask > 0] = s
    return labels


def binary_from_palette(data: bytes, where: str) -> np.ndarray:
    """A palette PNG of a binary dataset -> uint8 (H, W) {0, 255}: index 0 background, 1 foreground (another
    index is one line)."""
    return index_labels(data, where, 2) * np.uint8(255)


# --------------------------------------------------------------------------- resizing

def fit_labels(labels: np.ndarray, size: int, fit: str, num_classes: int) -> np.ndarray:
    """Class indices (H, W) uint8 -> (size, size): padded with background (``fit="pad"``), then each output
    pixel takes the class covering the largest share of it (per-class area fractions, OpenCV INTER_AREA;
    ties to the lower index): the binary rule "area, then threshold at 128" for K classes."""
    if fit == "pad":
        h, w = labels.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        labels = cv2.copyMakeBorder(labels, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    if labels.shape == (size, size):
        return labels
    shares = np.stack([cv2.resize((labels == k).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
                       for k in range(num_classes)], axis=0)
    return shares.argmax(0).astype(np.uint8)


def fit_image(image: np.ndarray, size: int, fit: str) -> np.ndarray:
    """uint8 (H, W, 3) or (H, W) -> (size, size[, 3]): black padding (``fit="pad"``), then area interpolation
    (as :func:`augforge.stages.prepare.fit_square` does for the image)."""
    if fit == "pad":
        h, w = image.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        image = cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
