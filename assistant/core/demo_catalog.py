"""The embedded demo catalog: garments drawn with PIL from exact attribute labels, so demos need no download."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from assistant.core.catalog import Catalog, CatalogError, Item
from assistant.core.storage import atomic_write, atomic_write_text, cache_dir

VERSION = 3  # part of the cache folder name: bump it whenever the drawing or the sampling changes
WIDTH, HEIGHT = 64, 80  # portrait, like the real catalog's 60x80
SUPERSAMPLE = 2  # drawn at 2x and box-filtered down, for smooth edges
BACKGROUND = (226, 230, 236)  # light grey-blue, so a white garment still stands out

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (250, 250, 248),
    "grey": (135, 135, 135),
    "navy": (28, 38, 102),
    "blue": (40, 112, 226),
    "red": (210, 32, 38),
    "green": (38, 150, 62),
    "pink": (246, 150, 192),
    "brown": (122, 76, 40),
    "purple": (124, 52, 164),
    "yellow": (246, 214, 42),
    "orange": (246, 132, 22),
}
FITS = {"slim": 0.8, "regular": 1.0, "loose": 1.22}  # silhouette width factor
TOPS = ("shirt", "t-shirt", "sweater", "jacket")
BOTTOMS = ("trousers", "shorts")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {  # every label the generator writes, by attribute
    "garment": ("dress", "shirt", "t-shirt", "skirt", "trousers", "shorts", "jacket", "sweater"),
    "colour": tuple(COLOURS),
    "pattern": ("solid", "stripes", "dots", "checks", "floral"),
    "sleeve": ("sleeveless", "short", "long"),
    "length": ("mini", "knee", "maxi", "cropped", "full"),
    "neckline": ("round", "v-neck", "collar"),
    "fit": tuple(FITS),
    "gender": ("women", "men", "unisex"),
}
STALE_SECONDS = 3600  # a temp folder this old is a killed generation's leftover (a whole one takes seconds)

# How often each value turns up, per garment: a plausible shop, every value well represented at 2,000 items.
GARMENT_WEIGHTS = {"dress": 15, "shirt": 14, "t-shirt": 15, "skirt": 10, "trousers": 14, "shorts": 9,
                   "jacket": 11, "sweater": 12}
COLOUR_WEIGHTS = {"black": 14, "white": 11, "grey": 9, "navy": 10, "blue": 10, "red": 8, "green": 7, "pink": 7,
                  "brown": 6, "purple": 5, "yellow": 6, "orange": 5}
COLOUR_BIAS = {  # multipliers on COLOUR_WEIGHTS
    "trousers": {"black": 2, "navy": 2, "grey": 1.5, "brown": 1.5, "pink": 0.4, "yellow": 0.4, "orange": 0.4},
    "jacket": {"black": 1.8, "navy": 1.5, "brown": 1.5, "pink": 0.5, "yellow": 0.6},
    "dress": {"red": 1.6, "pink": 1.6, "purple": 1.4, "brown": 0.5, "grey": 0.6},
    "skirt": {"pink": 1.4, "red": 1.3},
    "t-shirt": {"white": 1.6, "yellow": 1.4, "orange": 1.4},
    "shirt": {"white": 1.8, "blue": 1.6},
}
PATTERN_WEIGHTS = {
    "dress": {"solid": 38, "stripes": 12, "dots": 16, "checks": 10, "floral": 24},
    "shirt": {"solid": 40, "stripes": 22, "dots": 6, "checks": 26, "floral": 6},
    "t-shirt": {"solid": 50, "stripes": 24, "dots": 10, "checks": 4, "floral": 12},
    "skirt": {"solid": 40, "stripes": 10, "dots": 14, "checks": 16, "floral": 20},
    "trousers": {"solid": 62, "stripes": 14, "dots": 4, "checks": 16, "floral": 4},
    "shorts": {"solid": 50, "stripes": 16, "dots": 8, "checks": 14, "floral": 12},
    "jacket": {"solid": 60, "stripes": 8, "dots": 4, "checks": 24, "floral": 4},
    "sweater": {"solid": 50, "stripes": 22, "dots": 10, "checks": 10, "floral": 8},
}
SLEEVE_WEIGHTS = {
    "dress": {"sleeveless": 40, "short": 35, "long": 25},
    "shirt": {"sleeveless": 8, "short": 35, "long": 57},
    "t-shirt": {"sleeveless": 18, "short": 64, "long": 18},
    "jacket": {"sleeveless": 14, "short": 8, "long": 78},
    "sweater": {"sleeveless": 14, "short": 10, "long": 76},
}
NECKLINE_WEIGHTS = {
    "dress": {"round": 40, "v-neck": 40, "collar": 20},
    "shirt": {"round": 12, "v-neck": 10, "collar": 78},
    "t-shirt": {"round": 62, "v-neck": 30, "collar": 8},
    "jacket": {"round": 18, "v-neck": 24, "collar": 58},
    "sweater": {"round": 50, "v-neck": 35, "collar": 15},
}
LENGTH_WEIGHTS = {
    "dress": {"mini": 35, "knee": 40, "maxi": 25},
    "skirt": {"mini": 35, "knee": 40, "maxi": 25},
    "shorts": {"mini": 55, "knee": 45},
    "trousers": {"cropped": 35, "full": 65},
}
# Gender shows as the cut: women's garments have a shaped waist (or hips), the others are straight; whether a
# straight cut is men's or unisex follows the garment type (t-shirts and sweaters unisex, the rest men's).
GENDER_WEIGHTS = {
    "dress": {"women": 1}, "skirt": {"women": 1},
    "shirt": {"men": 55, "women": 45}, "jacket": {"men": 50, "women": 50},
    "trousers": {"men": 55, "women": 45}, "shorts": {"men": 50, "women": 50},
    "t-shirt": {"unisex": 60, "women": 40}, "sweater": {"unisex": 60, "women": 40},
}
FIT_WEIGHTS = {"women": {"slim": 40, "regular": 38, "loose": 22}, "men": {"slim": 25, "regular": 50, "loose": 25},
               "unisex": {"slim": 20, "regular": 45, "loose": 35}}

WORDS = {
    "pattern": {"solid": "plain", "stripes": "striped", "dots": "polka-dot", "checks": "checked",
                "floral": "floral"},
    "sleeve": {"sleeveless": "sleeveless", "short": "short-sleeve", "long": "long-sleeve"},
    "length": {"mini": "mini", "knee": "knee-length", "maxi": "maxi", "cropped": "cropped",
               "full": "full-length"},
    "neckline": {"round": "round-neck", "v-neck": "v-neck", "collar": "collared"},
    "fit": {"slim": "slim", "regular": "regular-fit", "loose": "loose"},
}
GENDER_PREFIX = {"women": "women's", "men": "men's", "unisex": "unisex"}
GENDER_SUFFIX = {"women": "for women", "men": "for men", "unisex": "(unisex)"}

Point = tuple[float, float]
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    """How one item is drawn beyond its labels: colour shades, offsets and pattern layout (from the item's rng)."""

    main: Colour
    contrast: Colour
    outline: Colour
    inner: Colour
    accent: Colour
    dx: float
    dy: float
    scale: float
    spacing: int
    phase: int


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _mix(colour: Colour, other: Colour, amount: float) -> Colour:
    r, g, b = (round(c + (o - c) * amount) for c, o in zip(colour, other, strict=True))
    return r, g, b


def _luminance(colour: Colour) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def sample_attributes(rng: random.Random) -> dict[str, str]:
    """One item's labels; attributes that do not apply to its garment are left out."""
    garment = _weighted(rng, GARMENT_WEIGHTS)
    bias = COLOUR_BIAS.get(garment, {})
    colours = {name: weight * bias.get(name, 1.0) for name, weight in COLOUR_WEIGHTS.items()}
    gender = _weighted(rng, GENDER_WEIGHTS[garment])
    attributes = {"garment": garment, "colour": _weighted(rng, colours)}
    patterns = dict(PATTERN_WEIGHTS[garment])
    if gender == "men":
        patterns["floral"] *= 0.4
        patterns["dots"] *= 0.6
    attributes["pattern"] = _weighted(rng, patterns)
    if garment in SLEEVE_WEIGHTS:
        attributes["sleeve"] = _weighted(rng, SLEEVE_WEIGHTS[garment])
    if garment in LENGTH_WEIGHTS:
        attributes["length"] = _weighted(rng, LENGTH_WEIGHTS[garment])
    if garment in NECKLINE_WEIGHTS:
        attributes["neckline"] = _weighted(rng, NECKLINE_WEIGHTS[garment])
    attributes["fit"] = _weighted(rng, FIT_WEIGHTS[gender])
    attributes["gender"] = gender
    return attributes


def sample_look(rng: random.Random, colour: str) -> Look:
    """Small per-item variation: colour jitter, position, size and pattern phase."""
    r, g, b = (min(255, max(0, c + rng.randint(-8, 8))) for c in COLOURS[colour])
    main = (r, g, b)
    contrast = (252, 252, 250) if _luminance(main) < 150 else (30, 40, 92)
    outline = _mix(main, (0, 0, 0), 0.55) if colour != "black" else (70, 70, 74)
    inner = _mix(main, (0, 0, 0), 0.4) if _luminance(main) > 60 else _mix(main, (255, 255, 255), 0.28)
    accent = (236, 196, 40) if colour not in ("yellow", "orange") else (200, 40, 60)
    return Look(main=main, contrast=contrast, outline=outline, inner=inner, accent=accent,
                dx=rng.uniform(-1.5, 1.5), dy=rng.uniform(-1.0, 1.0), scale=rng.uniform(0.97, 1.03),
                spacing=rng.choice((6, 7)), phase=rng.randrange(6))


def title_of(attributes: dict[str, str], rng: random.Random) -> str:
    """A product title written from the labels, in one of a few word orders."""
    words = {name: WORDS[name][value] for name, value in attributes.items() if name in WORDS}
    garment, colour, gender = attributes["garment"], attributes["colour"], attributes["gender"]
    shape = [words[name] for name in ("sleeve", "neckline", "length") if name in words]
    form = rng.randrange(3)
    if form == 0:
        text = " ".join([colour, words["pattern"], *shape, words["fit"], garment, GENDER_SUFFIX[gender]])
    elif form == 1:
        text = " ".join([GENDER_PREFIX[gender], words["fit"], words["pattern"], colour, *shape, garment])
    else:
        details = [words["pattern"], f"{attributes['fit']} fit", *shape, GENDER_SUFFIX[gender].strip("()")]
        text = f"{garment} in {colour}, {', '.join(details)}"
    return text[0].upper() + text[1:]


# ---- drawing -------------------------------------------------------------------------------------------------


class Canvas:
    """A supersampled drawing surface: geometry is given in final-image pixels."""

    def __init__(self, look: Look, pattern: str, vertical_stripes: bool) -> None:
        self.look = look
        self.size = (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE)
        self.image = Image.new("RGB", self.size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.texture = Image.new("RGB", self.size, look.main)
        for mask, colour in zip(_pattern_masks(pattern, look.spacing, look.phase, vertical_stripes),
                                (look.contrast, look.accent), strict=False):
            self.texture.paste(colour, mask=mask)

    def xy(self, points: list[Point]) -> list[Point]:
        s, look = SUPERSAMPLE, self.look
        cx, cy = WIDTH / 2, HEIGHT / 2
        return [((cx + (x - cx) * look.scale + look.dx) * s, (cy + (y - cy) * look.scale + look.dy) * s)
                for x, y in points]

    def part(self, points: list[Point]) -> None:
        """A piece of fabric: filled with the item's pattern, outlined."""
        xy = self.xy(points)
        mask = Image.new("L", self.size, 0)
        ImageDraw.Draw(mask).polygon(xy, fill=255)
        self.image.paste(self.texture, mask=mask)
        self.draw.polygon(xy, outline=self.look.outline, width=SUPERSAMPLE + 1)

    def shade(self, points: list[Point]) -> None:
        """The garment's inside showing through a neckline: a darker (or, on black, lighter) shade, outlined."""
        self.draw.polygon(self.xy(points), fill=self.look.inner, outline=self.look.outline,
                          width=SUPERSAMPLE + 1)

    def line(self, points: list[Point], width: float = 1) -> None:
        self.draw.line(self.xy(points), fill=self.look.outline, width=max(1, round(width * SUPERSAMPLE)))

    def dot(self, point: Point, radius: float = 0.8) -> None:
        (x, y), r = self.xy([point])[0], radius * SUPERSAMPLE
        self.draw.ellipse((x - r, y - r, x + r, y + r), fill=self.look.outline)

    def finish(self) -> Image.Image:
        return self.image.resize((WIDTH, HEIGHT), Image.Resampling.BOX)


@lru_cache(maxsize=256)
def _pattern_masks(pattern: str, spacing: int, phase: int, vertical: bool) -> tuple[Image.Image, ...]:
    """Where the contrast colour (and, for flowers, the accent colour) goes, over the whole canvas."""
    size = (WIDTH * SUPERSAMPLE, HEIGHT * SUPERSAMPLE)
    s = SUPERSAMPLE
    if pattern == "solid":
        return ()
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if pattern in ("stripes", "checks"):
        step = spacing if pattern == "stripes" else spacing + 1
        thickness = 2 if pattern == "stripes" else 1
        for offset in range(phase - step, max(WIDTH, HEIGHT) + step, step):
            if pattern == "checks" or not vertical:
                draw.rectangle((0, offset * s, size[0], (offset + thickness) * s - 1), fill=255)
            if pattern == "checks" or vertical:
                draw.rectangle((offset * s, 0, (offset + thickness) * s - 1, size[1]), fill=255)
        return (mask,)
    if pattern == "dots":
        step = spacing + 1
        for row, y in enumerate(range(phase - step, HEIGHT + step, step)):
            for x in range(phase - step + (row % 2) * step // 2, WIDTH + step, step):
                draw.ellipse(((x - 1.5) * s, (y - 1.5) * s, (x + 1.5) * s, (y + 1.5) * s), fill=255)
        return (mask,)
    centres = Image.new("L", size, 0)
    centre_draw = ImageDraw.Draw(centres)
    layout = random.Random(f"floral-{spacing}-{phase}")
    step = spacing + 4
    for row, y in enumerate(range(-step, HEIGHT + step, step)):
        for x in range(-step + (row % 2) * step // 2, WIDTH + step, step):
            fx, fy = x + layout.uniform(-2, 2), y + layout.uniform(-2, 2)
            for px, py in ((fx - 1.4, fy), (fx + 1.4, fy), (fx, fy - 1.4), (fx, fy + 1.4)):
                draw.ellipse(((px - 1.1) * s, (py - 1.1) * s, (px + 1.1) * s, (py + 1.1) * s), fill=255)
            centre_draw.ellipse(((fx - 0.7) * s, (fy - 0.7) * s, (fx + 0.7) * s, (fy + 0.7) * s), fill=255)
    return mask, centres


def _mirror(points: list[Point]) -> list[Point]:
    """A left-half outline, top to bottom, closed by its mirror image about the centre line."""
    return points + [(WIDTH - x, y) for x, y in reversed(points)]


def _sleeve(canvas: Canvas, shoulder: Point, armpit: Point, sleeve: str, reach: float, fit: float,
            cuff: bool) -> None:
    """Both sleeves: short ones stick out at an angle, long ones hang beside the body down to `reach`."""
    (sx, sy), (ax, ay) = shoulder, armpit
    if sleeve == "short":
        width = 9 * fit ** 0.5
        outer = (sx - 8.5 * fit ** 0.5, sy + 8)
        inner = (outer[0] + width * 0.55, outer[1] + width * 0.8)
        cuff_line = [outer, inner]
    else:
        outer = (sx - 5 - 5.5 * fit, reach)  # held a little away from the body, so a shaped waist shows
        inner = (outer[0] + 6 * fit, reach + 1)
        cuff_line = [(outer[0] + 0.3, reach - 3), (inner[0], reach - 2)]
    for flip in (False, True):
        points = [(sx, sy), outer, inner, (ax, ay)]
        if flip:
            points = [(WIDTH - x, y) for x, y in points]
        canvas.part(points)
        if cuff:
            canvas.line([(WIDTH - x, y) for x, y in cuff_line] if flip else cuff_line)


def _neckline(canvas: Canvas, neckline: str, top: float, half: float, garment: str) -> float:
    """Draws the neckline over the body; returns where a front placket can start."""
    c = WIDTH / 2
    if neckline == "round":
        depth, half = 7.0, half + 1.0
        canvas.shade([(c + half * math.cos(math.pi * i / 8), top + depth * math.sin(math.pi * i / 8))
                      for i in range(9)])
        return top + depth
    if neckline == "v-neck":
        depth = 15 if garment != "jacket" else 20
        canvas.shade([(c - half, top), (c + half, top), (c, top + depth)])
        return top + depth
    depth = 10 if garment != "jacket" else 18
    canvas.shade([(c - half, top - 1.5), (c + half, top - 1.5), (c + half, top + 1), (c - half, top + 1)])
    if garment == "jacket":  # lapels
        canvas.shade([(c - 1, top + 1), (c + 1, top + 1), (c, top + depth)])
        for side in (-1, 1):
            canvas.part([(c + side * (half + 1.5), top - 1.5), (c + side * 0.5, top + depth),
                         (c + side * (half - 0.5), top + 8), (c + side * (half + 4), top + 6)])
    else:
        for side in (-1, 1):
            canvas.part([(c + side * (half + 1.2), top - 1.5), (c + side * 0.3, top + 2.5),
                         (c + side * 3.5, top + depth), (c + side * (half + 2.2), top + 4.5)])
    return top + depth


def draw_top(canvas: Canvas, attributes: dict[str, str]) -> None:
    """Shirt, t-shirt, sweater or jacket, front view."""
    garment, gender = attributes["garment"], attributes["gender"]
    fit = FITS[attributes["fit"]]
    top = 11.0
    hem = {"t-shirt": 62.0, "sweater": 63.0, "shirt": 67.0, "jacket": 69.0}[garment]
    half_neck = 6.5 if garment == "jacket" else 5.0
    shoulder = 12.5 * fit * (1.08 if gender == "men" else 1.0)
    hem_half = shoulder * (0.94 if gender == "men" else 1.0)
    armpit_y = top + 14
    if attributes["sleeve"] == "sleeveless":
        left = [(WIDTH / 2 - half_neck, top), (WIDTH / 2 - half_neck - 3.5, top),
                (WIDTH / 2 - shoulder * 0.78, top + 8), (WIDTH / 2 - shoulder * 0.96, armpit_y)]
    else:
        left = [(WIDTH / 2 - half_neck, top), (WIDTH / 2 - shoulder, top + 3),
                (WIDTH / 2 - shoulder * 0.97, armpit_y)]
        _sleeve(canvas, left[1], (left[2][0] + 1.5, left[2][1] + 1), attributes["sleeve"], hem - 3, fit,
                cuff=garment in ("shirt", "sweater", "jacket"))
    if gender == "women":  # a shaped waist
        waist_y = top + 0.5 * (hem - top)
        left += [(WIDTH / 2 - shoulder * 0.74, waist_y), (WIDTH / 2 - hem_half * 1.02, hem)]
    else:
        left += [(WIDTH / 2 - hem_half, hem)]
    canvas.part(_mirror(left))
    placket_top = _neckline(canvas, attributes["neckline"], top, half_neck, garment)
    c = WIDTH / 2
    if garment == "shirt":
        canvas.line([(c, placket_top), (c, hem)])
        for y in range(int(placket_top) + 3, int(hem) - 1, 7):
            canvas.dot((c + 1.2, y), 0.6)
    elif garment == "jacket":
        canvas.line([(c, placket_top), (c, hem)])
        for y in (placket_top + 5, placket_top + 14):
            canvas.dot((c - 1.8, y), 0.9)
        for side in (-1, 1):
            canvas.line([(c + side * 3, hem - 13), (c + side * (hem_half - 2.5), hem - 13)], width=1.2)
    elif garment == "sweater":
        canvas.line([(c - hem_half + 0.5, hem - 3.5), (c + hem_half - 0.5, hem - 3.5)])


def draw_dress(canvas: Canvas, attributes: dict[str, str]) -> None:
    """A dress: a fitted bodice with neckline and sleeves, a skirt flaring from the waist to its length."""
    fit = FITS[attributes["fit"]]
    top, waist_y = 9.0, 33.0
    hem = {"mini": 53.0, "knee": 65.0, "maxi": 77.0}[attributes["length"]]
    half_neck, shoulder = 5.0, 12.0 * (0.5 + 0.5 * fit)
    waist = 8.5 * (0.6 + 0.4 * fit)
    hem_half = waist + (hem - waist_y) * (0.1 + 0.32 * (fit - FITS["slim"]) / (FITS["loose"] - FITS["slim"]))
    if attributes["sleeve"] == "sleeveless":
        left = [(WIDTH / 2 - half_neck, top), (WIDTH / 2 - half_neck - 3, top),
                (WIDTH / 2 - shoulder * 0.8, top + 8), (WIDTH / 2 - shoulder * 0.95, top + 13)]
    else:
        left = [(WIDTH / 2 - half_neck, top), (WIDTH / 2 - shoulder, top + 3), (WIDTH / 2 - shoulder * 0.95, top + 13)]
        _sleeve(canvas, left[1], (left[2][0] + 1.5, left[2][1] + 1), attributes["sleeve"], waist_y + 12, fit,
                cuff=False)
    left += [(WIDTH / 2 - waist, waist_y), (WIDTH / 2 - hem_half, hem)]
    canvas.part(_mirror(left))
    canvas.line([(WIDTH / 2 - waist, waist_y), (WIDTH / 2 + waist, waist_y)])
    _neckline(canvas, attributes["neckline"], top, half_neck, "dress")


def draw_skirt(canvas: Canvas, attributes: dict[str, str]) -> None:
    """A skirt from a waistband; fit sets how far it flares."""
    fit = FITS[attributes["fit"]]
    top = 10.0
    hem = {"mini": 38.0, "knee": 56.0, "maxi": 75.0}[attributes["length"]]
    waist = 11.0 * (0.7 + 0.3 * fit)
    flare = 1.5 + 14.5 * (fit - FITS["slim"]) / (FITS["loose"] - FITS["slim"])
    hem_half = waist + flare * (0.55 + 0.45 * (hem - top) / 65)
    canvas.part(_mirror([(WIDTH / 2 - waist, top), (WIDTH / 2 - hem_half, hem)]))
    canvas.line([(WIDTH / 2 - waist, top + 3.5), (WIDTH / 2 + waist, top + 3.5)])


def draw_bottoms(canvas: Canvas, attributes: dict[str, str]) -> None:
    """Trousers or shorts: women's cut is narrower at the waist with curved hips, men's is straight."""
    garment, gender = attributes["garment"], attributes["gender"]
    fit = FITS[attributes["fit"]]
    c = WIDTH / 2
    if garment == "trousers":
        top, hip_y, crotch_y = 5.0, 21.0, 33.0
        hem = {"cropped": 61.0, "full": 77.0}[attributes["length"]]
        hip, leg = 12.5 * (0.75 + 0.25 * fit), 4.6 * fit ** 1.6
    else:
        top, hip_y, crotch_y = 16.0, 28.0, 37.0
        hem = {"mini": 49.0, "knee": 61.0}[attributes["length"]]
        hip, leg = 14.0 * (0.75 + 0.25 * fit), 6.5 * fit ** 1.6
    waist = hip * (0.74 if gender == "women" else 0.97)
    leg_centre = leg + 1 + (hem - crotch_y) * 0.08  # a gap between the legs that widens downwards
    left = [(c - waist, top), (c - hip * (0.97 if gender == "women" else 1.0), hip_y - 6), (c - hip, hip_y),
            (c - leg_centre - leg, hem), (c - leg_centre + leg, hem), (c, crotch_y)]
    canvas.part(left + [(2 * c - x, y) for x, y in reversed(left[:-1])])
    canvas.line([(c - waist + 0.5, top + 3.5), (c + waist - 0.5, top + 3.5)])
    canvas.line([(c, top + 3.5), (c, crotch_y - 5)])
    for side in (-1, 1):  # pocket openings
        canvas.line([(c + side * (waist - 4.5), top + 3.5), (c + side * (hip - 1.2), hip_y - 5)])
    if garment == "shorts":  # turn-ups
        for side in (-1, 1):
            canvas.line([(c + side * (leg_centre + leg - 0.3), hem - 3.5),
                         (c + side * (leg_centre - leg + 0.6), hem - 3.5)])


DRAWERS = {"dress": draw_dress, "skirt": draw_skirt, "trousers": draw_bottoms, "shorts": draw_bottoms,
           **dict.fromkeys(TOPS, draw_top)}


def render(attributes: dict[str, str], look: Look) -> Image.Image:
    """The item's picture: its garment in its colour, pattern, cut and fit on a plain background."""
    garment = attributes["garment"]
    canvas = Canvas(look, attributes["pattern"], vertical_stripes=garment in ("skirt", *BOTTOMS))
    DRAWERS[garment](canvas, attributes)
    return canvas.finish()


def make_item(index: int, seed: int) -> tuple[dict, Image.Image]:
    """Item `index` of the catalog for `seed` (its own rng, so a smaller catalog is a prefix of a larger one)."""
    rng = random.Random(f"demo-{seed}-{index}")
    attributes = sample_attributes(rng)
    look = sample_look(rng, attributes["colour"])
    item_id = f"d{index:05d}"
    record = {"id": item_id, "image": f"images/{item_id}.png", "title": title_of(attributes, rng),
              "category": attributes["garment"], "attributes": attributes}
    return record, render(attributes, look)


def generate_demo_catalog(folder: Path, n_items: int = 2000, seed: int = 0) -> Path:
    """Draw `n_items` garments into `folder/images/` and list them in `folder/catalog.jsonl` (written last)."""
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, not {n_items}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(n_items):
        record, image = make_item(index, seed)
        image.save(folder / record["image"], format="PNG", optimize=False)
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=False))
    atomic_write_text(folder / "catalog.jsonl", "\n".join(lines) + "\n")
    return folder


def ensure_demo_catalog(n_items: int = 2000, seed: int = 0) -> Path:
    """The demo catalog's folder in the cache, generated on first use (in a temp folder renamed when complete)."""
    target = cache_dir() / f"demo-v{VERSION}-s{seed}-n{n_items}"
    if (target / "catalog.jsonl").exists():
        return target
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        if time.time() - leftover.stat().st_mtime > STALE_SECONDS:
            shutil.rmtree(leftover, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        generate_demo_catalog(work, n_items=n_items, seed=seed)
        if target.exists() and not (target / "catalog.jsonl").exists():
            shutil.rmtree(target)  # not ours to keep: an incomplete folder under our own cache name
        try:
            os.rename(work, target)
        except OSError:
            if not (target / "catalog.jsonl").exists():  # another process did not win the race either
                raise
    finally:
        if work.exists():
            shutil.rmtree(work)
    return target


def demo_options(source: str) -> dict[str, int]:
    """`demo`, `demo:N` or `demo:N:SEED` -> keyword arguments for ensure_demo_catalog."""
    name, *numbers = source.split(":")
    if name != "demo" or len(numbers) > 2 or not all(n.isdigit() and int(n) >= 0 for n in numbers):
        raise CatalogError(f"{source!r}: the demo catalog is 'demo', 'demo:N_ITEMS' or 'demo:N_ITEMS:SEED'")
    options = dict(zip(("n_items", "seed"), map(int, numbers), strict=False))
    if options.get("n_items", 1) < 1:
        raise CatalogError(f"{source!r}: the demo catalog needs at least 1 item")
    return options


CAPTION_WORDS = {"short": "short sleeves", "long": "long sleeves", "round": "round neck", "collar": "collar",
                 "knee": "knee length"}


def _caption(item: Item) -> list[str]:
    """Four short lines naming every label of an item, for the contact sheet."""
    a = {name: CAPTION_WORDS.get(value, value) for name, value in item.attributes.items()}
    return [f"{item.category} ({a['gender']})", f"{a['colour']} {a['pattern']}, {a['fit']}",
            ", ".join(a[name] for name in ("sleeve", "length") if name in a), a.get("neckline", "")]


def contact_sheet(catalog: Catalog, path: Path, columns: int = 12, rows: int = 6) -> Path:
    """A PNG grid of the catalog's first columns x rows items, each with its garment and labels underneath."""
    zoom, caption_lines, line_height = 2, 4, 10
    font = ImageFont.load_default(size=9)
    cell_w, cell_h = WIDTH * zoom + 4, HEIGHT * zoom + caption_lines * line_height + 6
    items = catalog.items[: columns * rows]
    if not items:
        raise CatalogError(f"{catalog.name}: no items to put on a contact sheet")
    sheet = Image.new("RGB", (columns * cell_w, -(-len(items) // columns) * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for n, item in enumerate(items):
        x, y = (n % columns) * cell_w + 2, (n // columns) * cell_h + 2
        sheet.paste(catalog.open_image(item).resize((WIDTH * zoom, HEIGHT * zoom), Image.Resampling.NEAREST), (x, y))
        for line, text in enumerate(_caption(item)):
            draw.text((x, y + HEIGHT * zoom + 1 + line * line_height), text, fill=(20, 20, 20), font=font)
    return atomic_write(Path(path), lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
