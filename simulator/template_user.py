"""The template shopper: words, in a person's phrases, how a target differs from the shown item."""

from __future__ import annotations

import functools
import math
import random
import string
from collections import Counter
from dataclasses import dataclass

from assistant.core.catalog import Catalog, Item
from assistant.core.dialog import seeded_rng
from assistant.core.feedback import (
    PLURAL_ONLY,
    STOP_WORDS,
    AttributeParser,
    ParsedFeedback,
    attribute_kind,
    category_rank,
    name_words,
    plural,
    singular,
    tokenize,
)

# How likely a person is to mention each facet when it differs (weights for sampling without replacement).
FACET_WEIGHTS = {"category": 6.0, "colour": 5.0, "gender": 4.0, "pattern": 4.0, "tags": 4.0, "usage": 3.0,
                 "sleeve": 3.0, "length": 3.0, "neckline": 2.5, "fit": 2.5, "material": 2.0, "season": 1.5,
                 "generic": 1.0}
TITLE_WORD_SHARE = 0.5  # how often a reply that names facets also names a title word
COMPARATIVE_SHARE = 0.3  # how often an ordered facet is worded as a comparison ("darker", "longer")

IDENTICAL_REPLIES = ("that's exactly it", "yes, that's the one", "this is it", "perfect, that's the one i want",
                     "that's it, exactly what i was looking for")
TITLE_ONLY_REPLIES = ("very close, but a slightly different one", "almost, just a different style",
                      "close, but it's another model")
OPENERS = ("almost, but ", "close, but ", "hmm, ", "nice, but ", "i like it but ")
JOINERS = (" and ", ", ", ", and ", " and also ")
# English adjective order in a request: "a casual slim knee-length red striped silk dress".
ADJECTIVE_ORDER = {"usage": 0, "fit": 1, "length": 2, "colour": 3, "pattern": 4, "material": 5}
REQUEST_OPENERS = ("", "i'm looking for ", "show me ", "i want ", "do you have ", "i need ")

# Approximate lightness (0 dark .. 100 light) of colour names, for "darker" / "lighter".
LIGHTNESS = {
    "white": 100, "off white": 95, "cream": 92, "beige": 85, "nude": 80, "peach": 80, "yellow": 80,
    "skin": 78, "lavender": 78, "silver": 75, "pink": 72, "fluorescent green": 72, "lime green": 70,
    "khaki": 68, "rose": 65, "gold": 65, "turquoise blue": 60, "grey melange": 60, "orange": 60,
    "mustard": 60, "mushroom brown": 60, "tan": 58, "mauve": 58, "grey": 55, "steel": 55, "metallic": 55,
    "sea green": 55, "taupe": 55, "copper": 50, "red": 45, "magenta": 45, "green": 45, "blue": 45,
    "bronze": 45, "teal": 40, "rust": 40, "olive": 35, "purple": 35, "brown": 30, "coffee brown": 25,
    "maroon": 22, "burgundy": 22, "charcoal": 20, "navy blue": 18, "navy": 18, "black": 5,
}
SHADE_SHIFT = {"light": 25, "pale": 25, "pastel": 25, "dark": -25, "deep": -25}
LIGHTNESS_GAP = 30  # smallest lightness difference worth calling darker / lighter

# Orders for comparatives, keyed by a value's words without the facet noun.
SLEEVE_ORDER = {"sleeveless": 0, "cap": 1, "short": 2, "half": 3, "elbow": 3, "three quarter": 4, "3 4": 4,
                "long": 5, "full": 5}
LENGTH_ORDER = {"micro": 0, "mini": 0, "cropped": 1, "short": 1, "above knee": 2, "knee": 3, "below knee": 3.5,
                "midi": 4, "calf": 4.5, "ankle": 5, "long": 6, "maxi": 6, "full": 6, "floor": 7}
FIT_ORDER = {"skinny": 0, "bodycon": 0, "slim": 1, "fitted": 1, "tailored": 1, "regular": 2, "straight": 2,
             "relaxed": 3, "loose": 4, "wide": 4, "oversized": 5, "baggy": 5}
SLEEVE_WORDS = frozenset({"sleeve", "sleeves", "sleeved"})
BARE_LENGTHS = frozenset({"mini", "maxi", "midi", "cropped", "micro"})

COLOUR_WORDING = {"multi": "multicoloured", "skin": "skin-coloured"}
PATTERN_ADJECTIVE = {"stripes": "striped", "stripe": "striped", "dots": "polka-dot", "checks": "checked",
                     "check": "checked", "solid": "plain", "florals": "floral", "prints": "printed"}
PATTERN_NOUN = {"striped": "stripes", "stripes": "stripes", "checked": "checks", "checks": "checks",
                "check": "checks", "dots": "dots", "dotted": "dots", "polka dot": "polka dots",
                "floral": "flowers", "printed": "prints", "graphic": "graphics"}
PLAIN_PATTERNS = frozenset({"solid", "plain"})
GENDER_POSSESSIVE = {"men": "men's", "women": "women's", "boys": "boys'", "girls": "girls'"}
USAGE_ADJECTIVE = {"casual": "casual", "formal": "formal", "ethnic": "ethnic", "smart casual": "smart casual",
                   "sports": "sporty", "semi formal": "semi formal"}
USAGE_FOR = {"sports": "for sports", "party": "for a party", "travel": "for travel", "home": "for home"}
# Nouns bought in pairs or sets: named in the plural, never with "a".
PAIRED = frozenset({"shoe", "sandal", "heel", "flat", "flop", "sock", "earring", "glove", "bootie", "boot",
                    "cufflink", "sneaker", "slipper", "loafer", "wristband", "lace"})

TEMPLATES: dict[str, tuple[str, ...]] = {
    "category_singular": ("i want {t_a} instead of {s_a}", "it should be {t_a}, not {s_a}", "make it {t_a}",
                          "{t_a} rather than {s_a}", "more like {t_a}", "is {t_a} instead of {s_a}"),
    "category_plural": ("{t_pl}, not {s_pl}", "show me {t_pl} instead", "i'm looking for {t_pl}",
                        "{t_pl} instead of {s_pl}", "i need {t_pl}"),
    "colour": ("is {t} instead of {s}", "i want it in {t}", "make it {t}", "{t}, not {s}",
               "in {t} rather than {s}", "it should be {t}", "a {t} one, not {s}", "{t} please",
               "do you have it in {t}", "the same in {t}", "i'd like {t} instead of {s}"),
    "colour_comparative": ("in a {cmp} colour", "something {cmp}", "a {cmp} shade than this {s}",
                           "{cmp}, ideally {t}", "a {cmp} colour, like {t}", "{t}, something {cmp}"),
    "gender": ("for {t} instead of {s}", "it should be for {t}", "a {t_pos} one", "{t_pos}, not {s_pos}",
               "i need the {t_pos} version", "made for {t}", "for {t}, not {s}"),
    "gender_unisex": ("make it unisex", "a unisex one", "something unisex", "unisex, not just for {s}"),
    "pattern": ("{t} instead of {s}", "make it {t}", "{t}, not {s}", "with a {t} pattern", "not {s}, {t}",
                "i'd prefer it {t}", "no {s_noun}, {t} instead", "no {s_noun}"),
    "pattern_plain": ("{t}, no {s_noun}", "{t} instead of {s}", "without the {s_noun}", "no {s_noun}, just {t}"),
    "usage_adjective": ("something more {t_adj}", "{t_adj}, not {s_adj}", "it should be {t_for}",
                        "{t_adj} rather than {s_adj}", "less {s_adj}, more {t_adj}", "i need something {t_for}"),
    "usage": ("it should be {t_for}", "something {t_for}", "i need it {t_for}", "{t_for}, not {s_for}"),
    "season": ("for {t}", "something for {t}", "a {t} one", "for {t} instead of {s}", "for {t}, not {s}"),
    "sleeve": ("with {t_sl}", "{t_sl} instead of {s_sl}", "i want {t_sl}", "{t_sl}, not {s_sl}",
               "it should have {t_sl}"),
    "sleeve_sleeveless": ("make it {t}", "{t}, not {s_sl}", "i want it {t}", "{t} instead of {s_sl}"),
    "sleeve_comparative": ("with {cmp} sleeves", "{cmp} sleeves", "make the sleeves {cmp}"),
    "length": ("{t_len}", "make it {t_len}", "{t_len} instead of {s_len}", "i want it {t_len}",
               "{t_len}, not {s_len}"),
    "length_comparative": ("{cmp}", "make it {cmp}", "a bit {cmp}", "{cmp}, {t_len}"),
    "neckline": ("with a {t_n}", "a {t_n} instead of a {s_n}", "{t_n}, not {s_n}", "i'd like a {t_n}"),
    "fit": ("a {t_f}", "{t_f} instead of {s_f}", "make it {t_f}", "{t_f}, not {s_f}"),
    "fit_comparative": ("a {cmp} fit", "something {cmp}", "{cmp}, {t_f}"),
    "material": ("in {t}", "made of {t}", "{t} instead of {s}", "{t}, not {s}"),
    "tags": ("{t}", "more {t}", "something {t}", "{t}, not {s}", "{t} rather than {s}"),
    "generic": ("with {t} {n}", "{t} {n}, not {s}", "the {n} should be {t}", "{t} {n} instead of {s} {n}"),
    "title_brand": ("from {w}", "by {w}", "{w_a} one", "something by {w}"),
    "title": ("something {w}", "more {w}", "like the {w} one", "{w_a} one"),
}


def _words(value: str) -> str:
    """A value as lowercase display words (Tshirts -> t-shirts)."""
    words = value.lower().replace("_", " ").split()
    return " ".join({"tshirts": "t-shirts", "tshirt": "t-shirt"}.get(w, w) for w in words)


def _labels(value: str) -> set[str]:
    """The labels of a comma-separated multi-label value (a plain value is its own single label)."""
    return {label.strip() for label in value.split(",") if label.strip()}


def _article(phrase: str) -> str:
    vowel_sound = phrase[:1] in "aeiou" and not phrase.startswith(("uni", "use", "eu", "one"))
    return ("an " if vowel_sound else "a ") + phrase


def category_nouns(value: str, rank: int) -> tuple[str | None, str]:
    """(singular with article or None, plural) for a category value: ("a kurta", "kurtas"), (None, "jeans")."""
    words = _words(value).split()
    last = words[-1]
    if rank > 0 or "and" in words or last.endswith("wear"):
        return None, " ".join(words)
    one = singular(last)
    many = " ".join(words[:-1] + [plural(one)])
    if last in PLURAL_ONLY or one.split("-")[-1] in PAIRED:
        return None, many
    return _article(" ".join(words[:-1] + [one])), many


def _order_key(value: str) -> str:
    return " ".join(w for w in tokenize(value) if w not in SLEEVE_WORDS and w not in ("length", "fit"))


def _lightness(value: str) -> float | None:
    words = _words(value)
    if words in LIGHTNESS:
        return LIGHTNESS[words]
    first, _, rest = words.partition(" ")
    if first in SHADE_SHIFT and rest in LIGHTNESS:
        return max(0, min(100, LIGHTNESS[rest] + SHADE_SHIFT[first]))
    return None


def comparative(kind: str, target: str, shown: str) -> str | None:
    """darker/lighter, longer/shorter, tighter/looser when the facet is ordered and the step is clear."""
    if kind == "colour":
        t, s = _lightness(target), _lightness(shown)
        if t is None or s is None or abs(t - s) < LIGHTNESS_GAP:
            return None
        return "darker" if t < s else "lighter"
    order = {"sleeve": SLEEVE_ORDER, "length": LENGTH_ORDER, "fit": FIT_ORDER}.get(kind)
    if order is None:
        return None
    t, s = order.get(_order_key(target)), order.get(_order_key(shown))
    if t is None or s is None or t == s:
        return None
    if kind == "fit":
        return "tighter" if t < s else "looser"
    return "longer" if t > s else "shorter"


@dataclass(frozen=True)
class Difference:
    """One attribute on which the target differs from the shown item (`shown` is None when it has none)."""

    kind: str
    name: str
    target: str
    shown: str | None


def _fields(kind: str, name: str, value: str) -> dict[str, str]:
    """The ways one value is worded inside templates, keyed by field name (without the t_/s_ prefix)."""
    words = _words(value)
    if kind == "colour":
        words = COLOUR_WORDING.get(words, words)
    fields = {"": words}
    if kind == "category":
        one, many = category_nouns(value, category_rank(name))
        fields["pl"] = many
        if one:
            fields["a"] = one
    elif kind == "gender":
        fields["pos"] = GENDER_POSSESSIVE.get(words, words)
    elif kind == "pattern":
        fields[""] = PATTERN_ADJECTIVE.get(words, words)
        fields["noun"] = PATTERN_NOUN.get(words, f"{words} pattern")
    elif kind == "usage":
        if words in USAGE_ADJECTIVE:
            fields["adj"] = USAGE_ADJECTIVE[words]
        fields["for"] = USAGE_FOR.get(words, f"for {words} wear")
    elif kind == "sleeve":
        fields["sl"] = words if words == "sleeveless" or SLEEVE_WORDS & set(words.split()) else f"{words} sleeves"
    elif kind == "length":
        fields["len"] = words if "length" in words or words in BARE_LENGTHS else f"{words}-length"
    elif kind == "neckline":
        fields["n"] = words if {"neck", "collar", "neckline"} & set(tokenize(words)) else f"{words} neck"
    elif kind == "fit":
        fields["f"] = words if "fit" in words else f"{words} fit"
    return fields


def _base_family(kind: str, target_fields: dict[str, str]) -> str:
    """Which template family words a difference, from the facet and the target value's wordings."""
    if kind == "category":
        return "category_singular" if "t_a" in target_fields else "category_plural"
    special = {"gender": ("unisex", "gender_unisex"), "sleeve": ("sleeveless", "sleeve_sleeveless")}
    if kind in special and target_fields["t"] == special[kind][0]:
        return special[kind][1]
    if kind == "pattern" and target_fields["t"] in PLAIN_PATTERNS:
        return "pattern_plain"
    if kind == "usage":
        return "usage_adjective" if "t_adj" in target_fields else "usage"
    return kind if kind in TEMPLATES else "generic"


@functools.cache
def _fields_needed(template: str) -> frozenset[str]:
    """The {fields} a template fills in."""
    return frozenset(name for _, name, _, _ in string.Formatter().parse(template) if name)


class TemplateUser:
    """A simulated shopper that says, in a person's words, how the target differs from what it was shown.

    Each turn names at most `max_facets` differing attributes (category, colour and gender first, with some
    randomness) and at most `title_words` distinctive words of the target's title (informative ones, by
    document frequency when a catalog is given). Every reply is checked with an AttributeParser: it never
    asserts an attribute value the target lacks (it may negate the shown item's values). Replies depend only
    on (seed, shown id, target id, turn).
    """

    def __init__(self, catalog: Catalog | None = None, seed: int = 0, max_facets: int = 2,
                 title_words: int = 1) -> None:
        if max_facets < 1:
            raise ValueError(f"max_facets must be at least 1, not {max_facets}")
        if title_words < 0:
            raise ValueError(f"title_words must be 0 or more, not {title_words}")
        self.seed = seed
        self.max_facets = max_facets
        self.title_words = title_words
        self.parser = AttributeParser(catalog.vocabulary() if catalog is not None else {})
        self._document_frequency: Counter[str] = Counter()
        self._documents = 0
        if catalog is not None:
            for item in catalog:
                self._document_frequency.update(set(tokenize(item.title)))
            self._documents = len(catalog)

    # ---- the public surface -------------------------------------------------------------------------------

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        """How `target` differs from `shown`, as one short lowercase sentence."""
        rng = seeded_rng(self.seed, shown.id, target.id, turn)
        if shown.id == target.id or (shown.attributes == target.attributes and shown.title == target.title):
            return rng.choice(IDENTICAL_REPLIES)
        self._learn(shown, target)
        differences = self._differences(shown, target, rng)
        chosen = self._choose_facets(differences, rng)
        phrases: list[tuple[str, Difference | None]] = [(self._phrase(d, rng), d) for d in chosen]
        words = self._title_words(target, set(tokenize(shown.title)), rng) \
            if not phrases or rng.random() < TITLE_WORD_SHARE else []
        for word in words:
            phrases.insert(rng.randrange(len(phrases) + 1), (self._title_phrase(word, target, rng), None))
        if not phrases:
            return rng.choice(TITLE_ONLY_REPLIES)
        return self._checked_sentence(phrases, target, rng)

    def describe(self, target: Item, variant: int = 0) -> str:
        """An opening request naming 2-3 of the target's facets, e.g. "a green kurta for women".

        `variant` picks another wording of the same request (as `turn` does for `respond`).
        """
        rng = seeded_rng(self.seed, "describe", target.id, variant)
        self._learn(target)
        facets: dict[str, tuple[str, str]] = {}
        categories: list[tuple[str, str]] = []
        for name, value in target.attributes.items():
            kind = attribute_kind(name)
            if kind == "category":
                categories.append((name, value))
            else:
                facets.setdefault(kind, (name, value))
        # The finest category label whose name alone reads true (labels shared by two attributes can mislead).
        categories.sort(key=lambda entry: category_rank(entry[0]))
        if not categories and target.category:  # a catalog without category labels still has Item.category
            categories.append(("category", target.category))
        category = next((c for c in categories
                         if self._faithful(self.parser.parse(self._request(c, {}, rng)), target)), None)
        if category is not None:  # no "casual casual shoes": skip facets the category's name already says
            named = set(tokenize(category[1]))
            facets = {kind: (name, value) for kind, (name, value) in facets.items()
                      if not named & set(tokenize(" ".join(_fields(kind, name, value).values())))}
        extra = self._weighted_sample(list(facets), rng, rng.choice((1, 2, 2)))
        # a brand ("from levis") is the title word an opening request names; other words read oddly there
        brand = tokenize(target.title)[:1]
        words = [w for w in self._title_words(target, set(), rng) if [w] == brand] \
            if rng.random() < TITLE_WORD_SHARE else []
        opener = rng.choice(REQUEST_OPENERS)
        while True:
            text = opener + self._request(category, {kind: facets[kind] for kind in extra}, rng,
                                          words[0] if words else None)
            if self._faithful(self.parser.parse(text), target):
                return text
            if not extra:
                name, value = category or next(iter(target.attributes.items()), ("", ""))
                return f"{opener}something with {_words(value)} {name_words(name)}".strip()
            extra.pop()

    # ---- differences and facets ---------------------------------------------------------------------------

    def _learn(self, *items: Item) -> None:
        for item in items:
            for name, value in item.attributes.items():
                if not self.parser.knows(name, value):
                    self.parser.add(name, value)

    @staticmethod
    def _differences(shown: Item, target: Item, rng: random.Random) -> list[Difference]:
        """Differing attributes, with the category group reduced to its finest differing label and a
        multi-label attribute to one new label."""
        differences: list[Difference] = []
        category: Difference | None = None
        for name, value in target.attributes.items():
            before = shown.attributes.get(name)
            if before is not None and before.lower() == value.lower():
                continue
            if "," in value:  # multi-label (Fashion IQ tags): one label the target has and the shown lacks
                new = sorted(_labels(value) - _labels(before or ""))
                if not new:
                    continue
                gone = sorted(_labels(before or "") - _labels(value))
                value, before = rng.choice(new), (rng.choice(gone) if gone else None)
            difference = Difference(attribute_kind(name), name, value, before)
            if difference.kind == "category":
                if category is None or category_rank(name) < category_rank(category.name):
                    category = difference
            else:
                differences.append(difference)
        return ([category] if category else []) + differences

    @staticmethod
    def _weighted_sample(entries: list, rng: random.Random, count: int,
                         weights: dict[str, float] | None = None) -> list:
        """Up to `count` entries without replacement, heavier ones likelier (Efraimidis-Spirakis keys).

        Entries are facet kinds or Differences weighted by FACET_WEIGHTS, or words weighted by `weights`.
        """
        def weight(entry) -> float:
            if weights is not None:
                return weights[entry]
            return FACET_WEIGHTS.get(entry.kind if isinstance(entry, Difference) else entry, 1.0)

        keyed = sorted(entries, key=lambda e: rng.random() ** (1.0 / max(weight(e), 1e-6)), reverse=True)
        return keyed[:count]

    def _choose_facets(self, differences: list[Difference], rng: random.Random) -> list[Difference]:
        if not differences:
            return []
        most = min(len(differences), self.max_facets)
        count = most if rng.random() < 0.75 else rng.randint(1, most)
        return self._weighted_sample(differences, rng, count)

    # ---- wording ------------------------------------------------------------------------------------------

    def _values(self, difference: Difference) -> dict[str, str]:
        values = {("t_" + key if key else "t"): text
                  for key, text in _fields(difference.kind, difference.name, difference.target).items()}
        if difference.shown is not None:
            values.update({("s_" + key if key else "s"): text
                           for key, text in _fields(difference.kind, difference.name, difference.shown).items()})
            if "s_a" not in values and "s_pl" in values:
                values["s_a"] = values["s_pl"]
        values["n"] = name_words(difference.name)
        return values

    def _phrase(self, difference: Difference, rng: random.Random) -> str:
        values = self._values(difference)
        cmp = comparative(difference.kind, difference.target, difference.shown) if difference.shown else None
        if cmp and rng.random() < COMPARATIVE_SHARE:
            values["cmp"] = cmp
            families = [f"{difference.kind}_comparative"]
        else:
            families = [_base_family(difference.kind, values)]
            if families == ["category_singular"]:
                families.append("category_plural")
        templates = [t for family in families for t in TEMPLATES[family] if _fields_needed(t) <= values.keys()]
        return rng.choice(templates).format(**values) if templates else self._safe_phrase(difference)

    @staticmethod
    def _safe_phrase(difference: Difference) -> str:
        """A wording pinned to its attribute ("with home usage"), used when a livelier one would be ambiguous."""
        return f"with {_words(difference.target)} {name_words(difference.name)}"

    def _title_words(self, target: Item, seen: set[str], rng: random.Random) -> list[str]:
        """Up to `title_words` informative words of the target's title, not in `seen` and not attribute words.

        Informative means rare in the catalog's titles (weighted by IDF) but not unique to one title, which
        would be a model code or a name nobody could guess from the picture.
        """
        brand = next(iter(tokenize(target.title)), None)
        candidates: dict[str, float] = {}
        for word in tokenize(target.title):
            shortest = 3 if word == brand else 4
            if (len(word) < shortest or not word.isalpha() or word in seen or word in STOP_WORDS
                    or word in self.parser.vocabulary_tokens or word in candidates):
                continue
            if self._documents:
                frequency = self._document_frequency[word]
                if frequency < 2:
                    continue
                candidates[word] = math.log(self._documents / frequency)
            else:
                candidates[word] = 1.0
        return self._weighted_sample(list(candidates), rng, self.title_words, weights=candidates)

    def _title_phrase(self, word: str, target: Item, rng: random.Random) -> str:
        first = tokenize(target.title)[:1]
        family = "title_brand" if first == [word] else "title"
        return rng.choice(TEMPLATES[family]).format(w=word, w_a=_article(word))

    def _request(self, category: tuple[str, str] | None, facets: dict[str, tuple[str, str]],
                 rng: random.Random, title_word: str | None = None) -> str:
        """A noun phrase naming the target: "a green striped kurta for women", "black jeans from levis"."""
        first: list[str] = []  # a possessive leads: "women's"
        before: list[str] = []
        after: list[str] = []
        for kind, (name, value) in sorted(facets.items(), key=lambda entry: ADJECTIVE_ORDER.get(entry[0], 9)):
            fields = _fields(kind, name, value)
            if kind in ("colour", "pattern", "material"):
                before.append(fields[""])
            elif kind == "fit":
                before.append(fields["f"])
            elif kind == "tags":
                before.append(rng.choice(sorted(_labels(value))).lower())
            elif kind == "length":
                before.append(fields["len"])
            elif kind == "usage" and "adj" in fields:
                before.append(fields["adj"])
            elif kind == "gender" and (fields[""] == "unisex" or rng.random() < 0.4):
                first.append(fields["pos"])
            elif kind == "gender":
                after.append(f"for {fields['']}")
            elif kind == "usage":
                after.append(fields["for"])
            elif kind == "season":
                after.append(f"for {fields['']}")
            elif kind == "sleeve":
                after.append(fields["sl"] if fields[""] == "sleeveless" else f"with {fields['sl']}")
            elif kind == "neckline":
                after.append(f"with a {fields['n']}")
            else:
                after.append(f"with {fields['']} {name_words(name)}")
        before = first + before
        if title_word:
            after.insert(0, f"from {title_word}")
        if category is not None:
            one, many = category_nouns(category[1], category_rank(category[0]))
            noun = many if one is None or rng.random() < 0.3 else one.split(" ", 1)[1]
            plural_form = noun == many
        else:
            noun, plural_form = "one", False
        if before or noun != "one":
            phrase = " ".join(before + [noun])
            phrase = phrase if plural_form else _article(phrase)
        else:
            phrase = "something"
        preposition = None  # "from puma for men and for fall"
        for clause in after:
            phrase += (" and " if clause.split()[0] == preposition else " ") + clause
            preposition = clause.split()[0]
        return phrase

    # ---- the honesty check ---------------------------------------------------------------------------------

    @staticmethod
    def _faithful(parsed: ParsedFeedback, target: Item) -> bool:
        """No asserted value the target lacks, and none of the target's own values (or labels) negated."""
        def labels(name: str) -> set[str]:
            value = target.attributes.get(name)
            return set() if value is None else {value, *_labels(value)}

        if any(value not in labels(name) for name, value in parsed.asserted.items()):
            return False
        return not any(labels(name) & values for name, values in parsed.negated.items())

    def _checked_sentence(self, phrases: list[tuple[str, Difference | None]], target: Item,
                          rng: random.Random) -> str:
        """The phrases joined; any phrase the parser would misread is replaced by its pinned form or dropped."""
        opener = rng.choice(OPENERS) if rng.random() < 0.2 else ""
        words = [phrase for phrase, _ in phrases]
        text = opener + (", ".join(words[:-1]) + rng.choice(JOINERS) + words[-1] if len(words) > 1 else words[0])
        if self._faithful(self.parser.parse(text), target):
            return text
        kept = []
        for phrase, difference in phrases:
            if not self._faithful(self.parser.parse(phrase), target):
                phrase = self._safe_phrase(difference) if difference else ""
            if phrase and self._faithful(self.parser.parse(phrase), target):
                kept.append(phrase)
        while kept and not self._faithful(self.parser.parse(", ".join(kept)), target):
            kept.pop()
        return ", ".join(kept) if kept else rng.choice(TITLE_ONLY_REPLIES)
