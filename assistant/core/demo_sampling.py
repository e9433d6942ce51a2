"""The demo catalog's sampling: each item's labels, its look (shades, offsets, pattern phase) and its title."""

from __future__ import annotations

import random
from dataclasses import dataclass

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
