"""Rendering the world's items: a small picture and a title drawn from each item's latent attributes.

The picture shows the image attributes (colour, shape, pattern) and the style (as background and
border); the title shows the text attributes (category noun, brand word) and the style (as an
adjective). Nothing else about the item leaks into either: a colour word never appears in a title,
a category never changes the picture, and the co-consumption cluster is in neither. Per-item
nuisance (position, size, shade, pattern phase, title template and filler words) makes two items
of the same class look and read differently, as real products do.

Every random draw comes from the ``np.random.Generator`` passed in, in a fixed order, and PNGs are
written with fixed settings and no metadata, so the same seed gives the same bytes.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

# Attribute values. The order is the value index stored in ground_truth.json.
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle", "star", "diamond")
PATTERNS = ("solid", "stripes", "dots", "checks")
CATEGORIES = ("mug", "lamp", "notebook", "backpack", "clock", "vase")
BRANDS = ("Acorn", "Brisk", "Calder", "Dunmore", "Everly", "Fennick", "Glint", "Harbor")
STYLES = ("classic", "modern", "rustic", "retro")

# Base RGB of each colour value; every item gets its own shade around it.
_COLOUR_RGB = {
    "red": (205, 40, 45), "orange": (240, 135, 25), "yellow": (235, 205, 35),
    "green": (50, 160, 70), "blue": (40, 90, 200), "purple": (130, 55, 170),
}
# Style in the picture: background RGB, border RGB, border width in pixels (per 64 px).
_STYLE_LOOK = {
    "classic": ((240, 234, 214), (90, 70, 50), 2),
    "modern": ((250, 250, 250), (250, 250, 250), 0),
    "rustic": ((196, 164, 122), (120, 85, 50), 1),
    "retro": ((176, 216, 208), (30, 95, 95), 5),
}
# Style in the title: two adjectives per style (the encoder has to see they mean the same).
_STYLE_WORDS = {
    "classic": ("Classic", "Timeless"), "modern": ("Modern", "Minimalist"),
    "rustic": ("Rustic", "Farmhouse"), "retro": ("Retro", "Vintage"),
}
_CATEGORY_WORDS = {
    "mug": ("mug", "coffee mug"), "lamp": ("lamp", "desk lamp"),
    "notebook": ("notebook", "journal"), "backpack": ("backpack", "rucksack"),
    "clock": ("clock", "wall clock"), "vase": ("vase", "flower vase"),
}
_FILLERS = ("", "", " with gift box", " (set of 2)", " for home and office", " premium edition",
            " XL", " compact size", " 2-pack", " new version")
_TEMPLATES = (
    "{brand} {adj} {noun}{filler}",
    "{adj} {noun} by {brand}{filler}",
    "{brand} {noun} - {adj} design{filler}",
)


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Corner points of a polygon shape of circumradius r around (cx, cy); None for circle/square."""
    if shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        radii = np.full(3, r)
    elif shape == "diamond":
        angles = np.deg2rad([-90.0, 0.0, 90.0, 180.0])
        radii = np.array([r, 0.7 * r, r, 0.7 * r])
    elif shape == "star":
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    else:
        return None
    return [(float(cx + q * np.cos(a)), float(cy + q * np.sin(a))) for a, q in zip(angles, radii)]


def _texture(size: int, rgb: tuple[int, int, int], pattern: str, rng: np.random.Generator) -> Image.Image:
    """A size x size fill of colour ``rgb`` carrying ``pattern`` (drawn in a darker shade)."""
    tex = Image.new("RGB", (size, size), rgb)
    draw = ImageDraw.Draw(tex)
    dark = tuple(int(c * 0.5) for c in rgb)
    period = int(rng.integers(5, 9)) * size // 64 or 2     # pattern spacing, pixels
    phase = int(rng.integers(0, period))                  # pattern offset, pixels
    if pattern == "stripes":
        for y in range(phase - period, size, period):
            draw.rectangle([0, y, size, y + max(1, period // 3)], fill=dark)
    elif pattern == "dots":
        rad = max(1.0, period / 4)
        for y in range(phase, size, period):
            for x in range(phase, size, period):
                draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=dark)
    elif pattern == "checks":
        for y in range(phase - period, size, period):
            for x in range(phase - period, size, period):
                if ((x - phase) // period + (y - phase) // period) % 2 == 0:
                    draw.rectangle([x, y, x + period - 1, y + period - 1], fill=dark)
    return tex


def render_image(colour: str, shape: str, pattern: str, style: str, size: int,
                 rng: np.random.Generator) -> Image.Image:
    """The item's picture: a ``shape`` in ``colour`` with ``pattern``, on the ``style`` background.

    Nuisance drawn from ``rng``: object size (50-80% of the picture), position (+-10%), colour shade
    (+-20 per channel), background tint (+-8 per channel), pattern spacing and phase.
    """
    bg, border_rgb, border = _STYLE_LOOK[style]
    tint = rng.integers(-8, 9, size=3)
    bg = tuple(int(np.clip(c + t, 0, 255)) for c, t in zip(bg, tint))
    img = Image.new("RGB", (size, size), border_rgb if border else bg)
    width = border * size // 64
    if width:
        ImageDraw.Draw(img).rectangle([width, width, size - 1 - width, size - 1 - width], fill=bg)

    shade = rng.integers(-20, 21, size=3)
    rgb = tuple(int(np.clip(c + s, 0, 255)) for c, s in zip(_COLOUR_RGB[colour], shade))
    r = size * rng.uniform(0.25, 0.40)                     # half the object's extent, pixels
    cx = size / 2 + size * rng.uniform(-0.10, 0.10)
    cy = size / 2 + size * rng.uniform(-0.10, 0.10)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    polygon = _shape_polygon(shape, cx, cy, r)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        q = 0.85 * r
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=255)
    else:
        draw.polygon(polygon, fill=255)
    img.paste(_texture(size, rgb, pattern, rng), (0, 0), mask)
    return img


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding with fixed settings and no metadata chunks (same picture -> same bytes)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def render_title(category: str, brand: str, style: str, rng: np.random.Generator) -> str:
    """The item's title: brand word, category noun and style adjective in a random template,
    plus an uninformative filler. Never contains a comma (keeps items.csv simple to read)."""
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    adj = _STYLE_WORDS[style][int(rng.integers(2))]
    noun = _CATEGORY_WORDS[category][int(rng.integers(2))]
    filler = _FILLERS[int(rng.integers(len(_FILLERS)))]
    if template.startswith("{adj}"):
        return template.format(brand=brand, adj=adj, noun=noun, filler=filler)
    return template.format(brand=brand, adj=adj.lower(), noun=noun, filler=filler)
