"""Colour sense: any colour word (CSS4 and XKCD survey names) mapped to a catalog's colour labels in CIELAB."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from coloraide import Color
from matplotlib import colors as mpl_colors

# The basic colour terms (Berlin & Kay): a label belongs to the families its own words name, or to its nearest one.
FAMILIES = ("red", "pink", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "grey")
# Names in the colour tables that in a shop are a material, a mood or a plain word, not a colour.
NOT_COLOURS = frozenset("""
dark light pale bright medium deep ice sky ocean sea shit puke poop vomit ugly dirt mud baby night leather wood
earth forest grass leaf snot booger clay dust dusk swamp toxic pea cloudy water denim linen snow stone blush
sick barney putty spruce pine fawn sandy camo cool warm dull faded burnt neon pastel electric royal
""".split())
# Fashion colour names the survey tables lack (reviewed hex values).
FASHION_COLOURS = {
    "nude": "#e3bc9a", "skin": "#e8beac", "champagne": "#f7e7ce", "melange": "#b4b4b4", "off white": "#f4f1e6",
    "offwhite": "#f4f1e6", "ivory": "#fffff0", "wine": "#722f37", "oxblood": "#4a0000", "camel": "#c19a6b",
    "navy": "#1f2a44", "rust": "#a8400e", "mustard": "#d4a017", "teal": "#008080", "coral": "#ff7f50",
    "fuchsia": "#d62e8a", "cobalt": "#0047ab", "emerald": "#01a049", "sage": "#9caf88", "mint": "#98e0b0",
    "lilac": "#c8a2c8", "mauve": "#b784a7", "copper": "#b87333", "bronze": "#a97142", "gold": "#d4af37",
    "silver": "#c0c0c0", "steel": "#7b8a99", "charcoal": "#36454f", "taupe": "#8b7d6b", "khaki": "#c3b091",
}
MODIFIER_SHIFTS = {  # (lightness change, chroma factor) of a modifier before a colour word
    "dark": (-22.0, 1.0), "deep": (-14.0, 1.15), "light": (18.0, 0.6), "pale": (22.0, 0.45),
    "bright": (4.0, 1.35), "vivid": (2.0, 1.4), "neon": (6.0, 1.5), "pastel": (20.0, 0.4), "dusty": (4.0, 0.55),
    "muted": (0.0, 0.55), "soft": (10.0, 0.6), "rich": (-8.0, 1.2),
}
NEAREST_SPAN = 12.0  # CIEDE2000 beyond the nearest label's distance that still earns partial credit
SHADE_CREDIT = 0.7  # credit of another label in the named family ("blue" asked, "Navy Blue" shown)
RULED_OUT_SPAN = 6.0  # labels this close to a ruled-out colour word are ruled out with it
FAMILY_REACH = 18.0  # CIEDE2000 within which a label whose words name no basic colour joins its nearest family
RELATIVE_STEP = 6.0  # lightness (or chroma) a label must move to count as darker / lighter / brighter


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z]+", text.lower()))


@functools.cache
def colour_names() -> dict[str, str]:
    """Colour name (lowercase words) -> hex: CSS4, the XKCD colour survey, then the reviewed fashion names."""
    table: dict[str, str] = {}
    for name, value in mpl_colors.CSS4_COLORS.items():
        table[_words(name)] = value
    for name, value in mpl_colors.XKCD_COLORS.items():
        table[_words(name.removeprefix("xkcd:"))] = value  # the survey's sense wins over CSS (green, purple)
    table.update(FASHION_COLOURS)
    return {name: value for name, value in table.items() if name and name not in NOT_COLOURS}


@functools.cache
def lab_of_hex(value: str) -> tuple[float, float, float]:
    lightness, a, b = Color(value).convert("lab-d65").coords()
    return float(lightness), float(a), float(b)


@functools.cache
def colour_lab(words: str) -> tuple[float, float, float] | None:
    """CIELAB of a colour phrase ("scarlet", "navy blue", "dark mint"), or None when it names no colour."""
    words = _words(words)
    table = colour_names()
    if words in table:
        return lab_of_hex(table[words])
    head, _, rest = words.partition(" ")
    if head in MODIFIER_SHIFTS and rest in table:
        lightness, a, b = lab_of_hex(table[rest])
        shift, factor = MODIFIER_SHIFTS[head]
        return min(100.0, max(0.0, lightness + shift)), a * factor, b * factor
    return None


def delta_e(first: Sequence[float], second: Sequence[float]) -> float:
    """CIEDE2000 between two CIELAB colours."""
    return float(Color("lab-d65", list(first)).delta_e(Color("lab-d65", list(second)), method="2000"))


def shade_credit(distance: float) -> float:
    """Credit of another shade of the family asked for, fading with its CIEDE2000 distance."""
    return round(SHADE_CREDIT * max(0.15, 1.0 - distance / 60.0), 3)


def chroma(lab: Sequence[float]) -> float:
    return math.hypot(lab[1], lab[2])


ACHROMATIC_CHROMA = 12.0  # below this chroma a colour is black, grey or white by its lightness
ACHROMATIC = ("black", "white", "grey")


@functools.cache
def family_named_colours() -> tuple[tuple[str, ...], np.ndarray]:
    """The family and CIELAB of every colour name whose head word is a chromatic basic colour ("pale brown", "wine
    red", "greenish blue"): the colour survey's own boundaries between the families, not one prototype for each."""
    named = [(name.split()[-1], lab_of_hex(value)) for name, value in colour_names().items()
             if name.split()[-1] in FAMILIES and name.split()[-1] not in ACHROMATIC]
    return tuple(family for family, _ in named), np.array([lab for _, lab in named])


FAMILY_SHORTLIST = 48  # the named colours nearest in plain Lab distance that CIEDE2000 then orders


@functools.cache
def _nearest_family(lab: tuple[float, float, float]) -> tuple[str, float]:
    if chroma(lab) < ACHROMATIC_CHROMA:
        return ("black" if lab[0] < 20 else "white" if lab[0] > 88 else "grey"), 0.0
    families, labs = family_named_colours()
    shortlist = np.argsort(np.linalg.norm(labs - np.asarray(lab), axis=1))[:FAMILY_SHORTLIST]
    return min(((families[i], delta_e(lab, labs[i])) for i in shortlist), key=lambda fd: fd[1])


def nearest_family(lab: Sequence[float]) -> str:
    """The basic colour a CIELAB colour belongs to: greys by lightness; a chromatic one, the family of the nearest
    colour name the survey files under a basic colour (camel: "pale brown", so brown; not orange, the nearest
    prototype)."""
    return _nearest_family(tuple(float(v) for v in lab))[0]


@dataclass(frozen=True)
class ColourLabel:
    """A catalog colour label with its CIELAB (None for Multi, Metallic...) and the families it belongs to."""

    value: str
    lab: tuple[float, float, float] | None
    families: frozenset[str]


def describe_label(value: str) -> ColourLabel:
    """A label's colour from its whole name, else from its first word that names a colour ("Coffee Brown")."""
    words = _words(value)
    lab = colour_lab(words)
    if lab is None:
        lab = next((colour_lab(word) for word in words.split() if colour_lab(word) is not None), None)
    families = {word for word in words.split() if word in FAMILIES} | ({"grey"} if "gray" in words.split() else set())
    if lab is not None and not families:
        family, distance = _nearest_family(tuple(lab))
        if distance <= FAMILY_REACH:
            families.add(family)
    return ColourLabel(value, lab, frozenset(families))


class ColourSense:
    """Maps colour words onto one attribute's labels: nearest labels in CIELAB, families, relative shades."""

    def __init__(self, values: Iterable[str]) -> None:
        self.labels = {value: describe_label(value) for value in dict.fromkeys(values)}
        self._by_words = {_words(value): value for value in self.labels}
        self._relative: dict[tuple[str, str], dict[str, float]] = {}  # a dialog's every turn asks again

    def is_colour(self, words: str) -> bool:
        return _words(words) in FAMILIES or colour_lab(words) is not None or _words(words) in self._by_words

    def family_members(self, family: str) -> list[str]:
        return [value for value, label in self.labels.items() if family in label.families]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one ColourSense per catalog attribute, kept for its life)
    def wanted(self, words: str) -> dict[str, float]:
        """Label -> credit in (0, 1] for a colour phrase: its own label 1, other shades of a named family
        SHADE_CREDIT, otherwise the nearest labels in CIEDE2000 (the nearest 1, fading over NEAREST_SPAN)."""
        words = _words(words)
        if words in self._by_words:
            own = self._by_words[words]
            credits = {own: 1.0}
            if words in FAMILIES:
                credits.update({v: SHADE_CREDIT for v in self.family_members(words) if v != own})
            credits.update({v: c for v, c in self.neighbours(own).items() if v not in credits})
            return credits
        if words in FAMILIES and self.family_members(words):
            return {value: 1.0 for value in self.family_members(words)}
        lab = colour_lab(words)
        if lab is None:
            return {}
        named = {word for word in words.split() if word in FAMILIES}  # "dark green": shades of green first
        in_family = {value for value, label in self.labels.items() if label.families & named}
        distances = {value: delta_e(lab, label.lab) for value, label in self.labels.items()
                     if label.lab is not None and (value in in_family or not in_family)}
        if not distances:
            return {}
        nearest = min(distances.values())
        credits = {value: round(max(0.05, 1.0 - (d - nearest) / NEAREST_SPAN), 3)
                   for value, d in sorted(distances.items(), key=lambda kv: kv[1]) if d - nearest < NEAREST_SPAN}
        if not named:  # the shades of the word's own family come before nearer labels of another ("mint": greens)
            family = nearest_family(lab)
            for value in self.family_members(family):
                if value in distances:
                    credits[value] = max(credits.get(value, 0.0), shade_credit(distances[value]))
        return credits

    def neighbours(self, value: str) -> dict[str, float]:
        """Other labels near one label: shades of its family (up to SHADE_CREDIT, fading with CIEDE2000) and any
        label within NEAREST_SPAN (up to half that)."""
        own = self.labels[value]
        if own.lab is None:
            return {}
        credits = {}
        for other, label in self.labels.items():
            if other == value or label.lab is None:
                continue
            distance = delta_e(own.lab, label.lab)
            if label.families & own.families:
                credits[other] = shade_credit(distance)
            elif distance < NEAREST_SPAN:
                credits[other] = round(0.5 * SHADE_CREDIT * (1.0 - distance / NEAREST_SPAN), 3)
        return credits

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def ruled_out(self, words: str) -> frozenset[str]:
        """Labels a negated colour phrase rules out: a family's every member ("not blue": Navy Blue too), a label
        itself, or the labels within RULED_OUT_SPAN of the nearest to another colour word."""
        words = _words(words)
        out = set(self.family_members(words)) if words in FAMILIES else set()
        if words in self._by_words:
            out.add(self._by_words[words])
        if out:
            return frozenset(out)
        lab = colour_lab(words)
        if lab is None:
            return frozenset()
        distances = {value: delta_e(lab, label.lab) for value, label in self.labels.items() if label.lab is not None}
        nearest = min(distances.values(), default=0.0)
        return frozenset(value for value, d in distances.items() if d - nearest <= RULED_OUT_SPAN)

    def relative(self, reference: str, direction: str) -> dict[str, float]:
        """Labels darker / lighter / brighter than the reference label, of a similar hue, by closeness (worked out
        once per label and direction: 2 ms of colour distances)."""
        key = (reference, direction)
        if key not in self._relative:
            self._relative[key] = self._relative_credits(reference, direction)
        return dict(self._relative[key])

    def _relative_credits(self, reference: str, direction: str) -> dict[str, float]:
        ref = self.labels.get(reference)
        if ref is None or ref.lab is None:
            return {}
        credits: dict[str, float] = {}
        for value, label in self.labels.items():
            if label.lab is None or value == reference:
                continue
            if direction == "darker":
                step = ref.lab[0] - label.lab[0]
            elif direction == "lighter":
                step = label.lab[0] - ref.lab[0]
            else:
                step = chroma(label.lab) - chroma(ref.lab)
            hue_gap = delta_e((50.0, *label.lab[1:]), (50.0, *ref.lab[1:]))
            same_family = bool(label.families & ref.families)
            if step >= RELATIVE_STEP and (same_family or hue_gap < 20.0):
                credits[value] = round(max(0.3, 1.0 - hue_gap / 40.0 - max(0.0, step - 30.0) / 60.0), 3)
        return credits
