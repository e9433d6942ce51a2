"""The demo catalog's drawing: a supersampled canvas, garment shapes and patterns, and a labelled contact sheet."""

from __future__ import annotations

import math
import random
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from assistant.core.catalog import Catalog, CatalogError, Item
from assistant.core.demo_sampling import BOTTOMS, FITS, TOPS, Look
from assistant.core.storage import atomic_write

WIDTH, HEIGHT = 64, 80  # portrait, like the real catalog's 60x80
SUPERSAMPLE = 2  # drawn at 2x and box-filtered down, for smooth edges
BACKGROUND = (226, 230, 236)  # light grey-blue, so a white garment still stands out

Point = tuple[float, float]


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
