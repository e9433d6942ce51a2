"""Caption parsing: which attribute values a shopper's words assert and which they negate."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TOKEN_PATTERN = re.compile(r"[a-z0-9]+|[,.;:!?/()]")
PUNCTUATION = frozenset(",.;:!?/()")
MAX_VALUE_TOKENS = 6

# nltk's stopword corpus is a separate download (not available offline), so the short list lives here.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any anything are as at be because been before being below
between both but by can could did do does doing down during each either even every few for from further had has
have having he her here hers herself him himself his how i id if ill im in into is it its itself ive just like
little look looking lot make me more most much my myself need neither new nor now of off on once one ones only or
other our ours ourselves out over own please prefer quite rather really same she should show so some something
such than that thats the their theirs them themselves then there these they this those through to too under
until up very want was way we were what when where which while who whom why will with would wish you your yours
yourself yourselves version pack pair piece set sets kind
""".split())

NEGATION_CUES = frozenset({"not", "no", "never", "without", "than", "less", "except", "dont", "doesnt", "isnt",
                           "arent", "shouldnt", "wont", "cant", "nothing", "neither", "non", "nor"})
SCOPE_BREAKERS = frozenset({"but", "and", "though", "however", "yet", "i", "so", "also", "while"})
SCOPE_CONTINUERS = frozenset({"or", "nor", "either"})
NEGATION_WINDOW = 6  # filler tokens a cue may reach across before its first value

# Attribute names grouped by the facet they describe, so phrasing and matching work for any catalog's labels.
KIND_OF_NAME = {
    "articletype": "category", "category": "category", "garmentcategory": "category", "garment": "category",
    "garmenttype": "category", "type": "category", "producttype": "category", "itemtype": "category",
    "clothingtype": "category", "subcategory": "category", "mastercategory": "category",
    "basecolour": "colour", "basecolor": "colour", "colour": "colour", "color": "colour",
    "maincolour": "colour", "maincolor": "colour",
    "gender": "gender", "sex": "gender",
    "pattern": "pattern", "print": "pattern",
    "usage": "usage", "occasion": "usage",
    "sleeve": "sleeve", "sleeves": "sleeve", "sleevelength": "sleeve",
    "length": "length", "dresslength": "length", "skirtlength": "length", "hemlength": "length",
    "neckline": "neckline", "neck": "neckline", "collar": "neckline",
    "fit": "fit", "silhouette": "fit",
    "season": "season",
    "material": "material", "fabric": "material",
    "tags": "tags", "tag": "tags", "labels": "tags", "keywords": "tags",
}
# Facets whose values are nouns, so singular and plural both name them (unlike "short" or "red").
NOUN_KINDS = frozenset({"category", "gender", "pattern", "material", "generic"})
# Coarser category labels rank higher: the finest differing one is the one a person names.
CATEGORY_RANK = {"subcategory": 1, "mastercategory": 2}

# Words that, after a value, pin it to its facet ("skin colour", "short sleeves", "home usage").
QUALIFIERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "colour": (("colour",), ("color",), ("coloured",), ("colored",), ("shade",), ("tone",)),
    "sleeve": (("sleeve",), ("sleeves",), ("sleeved",)),
    "length": (("length",),),
    "neckline": (("neck",), ("neckline",), ("collar",)),
    "fit": (("fit",), ("fitting",)),
    "pattern": (("pattern",), ("print",)),
    "usage": (("wear",), ("use",)),
    "season": (("wear",),),
}

# Ways of writing the same value word: any single-word member of a family also finds the others.
SPELLING_FAMILIES = (
    ("tshirt", "t shirt", "tee"), ("tshirts", "t shirts", "tees"),
    ("men", "mens", "man", "male", "gents"), ("women", "womens", "woman", "female", "ladies", "lady"),
    ("boys", "boy"), ("girls", "girl"),
    ("grey", "gray"), ("colour", "color"),
    ("multi", "multicoloured", "multicolored", "multicolour", "multicolor", "multi coloured", "multi colored"),
    ("sports", "sport", "sporty"), ("fall", "autumn"),
    ("striped", "stripes", "stripe", "stripy"),
    ("checked", "checks", "check", "checkered", "chequered", "plaid"),
    ("dotted", "dots", "dot", "polka dots", "polka dot"),
    ("floral", "florals", "flowers", "flowery"),
    ("solid", "plain"), ("printed", "print", "prints"),
    ("trousers", "pants"), ("collar", "collared"),
    ("heel", "high heel"), ("heels", "high heels"),
    ("sleeveless", "no sleeves"),
)
ALTERNATIVES: dict[str, tuple[tuple[str, ...], ...]] = {
    member: tuple(tuple(other.split()) for other in family if other != member)
    for family in SPELLING_FAMILIES for member in family if " " not in member
}
# Shorter names for multi-word values.
VALUE_ALIASES: dict[str, tuple[str, ...]] = {
    "navy blue": ("navy",), "turquoise blue": ("turquoise",), "coffee brown": ("coffee",),
    "lime green": ("lime",), "fluorescent green": ("neon green", "fluorescent"), "mushroom brown": ("mushroom",),
    "grey melange": ("melange",), "off white": ("offwhite",), "polka dot": ("polka dots", "dots", "dotted"),
}
# Nouns with no singular a shopper would use (so "short" never means "Shorts").
PLURAL_ONLY = frozenset({"jeans", "shorts", "trousers", "pants", "tights", "leggings", "jeggings", "capris",
                         "briefs", "boxers", "sunglasses", "glasses", "stockings", "suspenders", "flats",
                         "clothes", "goggles", "scissors", "pyjamas", "pajamas", "dungarees", "overalls"})
IRREGULAR_SINGULAR = {"scarves": "scarf", "knives": "knife", "leaves": "leaf", "men": "men", "women": "women"}


def tokenize(text: str) -> list[str]:
    """Lowercase word and punctuation tokens; apostrophes vanish (women's -> womens, don't -> dont)."""
    return TOKEN_PATTERN.findall(text.lower().replace("'", "").replace("\u2019", ""))


@functools.cache
def attribute_kind(name: str) -> str:
    """The facet an attribute name describes (category, colour, gender, pattern, ...) or `generic`."""
    return KIND_OF_NAME.get(re.sub(r"[^a-z]", "", name.lower()), "generic")


@functools.cache
def category_rank(name: str) -> int:
    """0 for the finest category label (articleType, category), higher for coarser ones."""
    return CATEGORY_RANK.get(re.sub(r"[^a-z]", "", name.lower()), 0)


@functools.cache
def name_words(name: str) -> str:
    """An attribute name as plain words: baseColour -> base colour, garment_category -> garment category."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " ").replace("-", " ")
    return " ".join(spaced.lower().split())


def singular(word: str) -> str:
    """The singular of a lowercase noun (plural-only nouns stay as they are)."""
    if word in PLURAL_ONLY:
        return word
    if word in IRREGULAR_SINGULAR:
        return IRREGULAR_SINGULAR[word]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us")) and len(word) > 3:
        return word[:-1]
    return word


def plural(word: str) -> str:
    """The plural of a lowercase noun (words already ending in a plural s stay)."""
    if word.endswith("s") and not word.endswith("ss"):
        return word
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def _number_forms(tokens: tuple[str, ...]) -> set[tuple[str, ...]]:
    last = tokens[-1]
    if last in PLURAL_ONLY or not last.isalpha():
        return {tokens}
    one = singular(last)
    return {tokens, tokens[:-1] + (one,), tokens[:-1] + (plural(one),)}


@dataclass
class ParsedFeedback:
    """What a caption says: values it asserts (attribute -> value), values it rules out, its other words."""

    asserted: dict[str, str] = field(default_factory=dict)
    negated: dict[str, set[str]] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people: `colour green, for women; not red; also: nike`."""
        parts = [", ".join(f"{name_words(n)} {v.lower()}" for n, v in self.asserted.items())]
        if self.negated:
            parts.append("not " + ", ".join(f"{v.lower()}" for vs in self.negated.values() for v in sorted(vs)))
        if self.words:
            parts.append("also: " + " ".join(self.words))
        return "; ".join(p for p in parts if p) or "nothing recognised"


class AttributeParser:
    """Finds attribute values in free text, longest match first, with simple negation scope.

    Built from a catalog's vocabulary (attribute name -> its values; a comma-separated multi-label value
    counts as its labels). A value is found through its own
    words in any letter case, singular or plural, common respellings (t-shirt/tee, stripes/striped,
    womens/women), and a qualified form that pins it to its attribute ("skin colour", "short sleeves",
    "home usage"). A form shared by two attributes is asserted for both. A cue (not, no, without,
    instead of, than, less, don't, ...) negates the values that follow it in its clause.
    """

    def __init__(self, vocabulary: Mapping[str, Iterable[str]]) -> None:
        # form -> list of (attribute, value, is_primary); primary forms are the value's own words
        self._forms: dict[tuple[str, ...], list[tuple[str, str, bool]]] = {}
        self._lengths_by_first: dict[str, list[int]] = {}
        self._known: set[tuple[str, str]] = set()
        self.vocabulary_tokens: set[str] = set()
        for name, values in vocabulary.items():
            for value in values:
                self.add(name, value)

    @classmethod
    def from_catalog(cls, catalog) -> AttributeParser:
        return cls(catalog.vocabulary())

    def knows(self, name: str, value: str) -> bool:
        return (name, value) in self._known

    def add(self, name: str, value: str) -> None:
        """Teach the parser one more attribute value (no effect if it already knows it)."""
        if (name, value) in self._known:
            return
        self._known.add((name, value))
        if "," in value:  # a multi-label value ("floral, red, short"): each label is a value of its own
            for label in value.split(","):
                if label.strip():
                    self.add(name, label.strip())
            return
        tokens = tuple(t for t in tokenize(value) if t not in PUNCTUATION)
        if not tokens or len(tokens) > MAX_VALUE_TOKENS:
            return
        if tokens[:2] in (("t", "shirt"), ("t", "shirts")):
            tokens = ("t" + tokens[1],) + tokens[2:]
        kind = attribute_kind(name)
        suffixes = QUALIFIERS.get(kind, ()) + (tuple(name_words(name).split()),)
        variants: dict[tuple[str, ...], bool] = {tokens: True}
        if kind in NOUN_KINDS:  # singular and plural; only a category's own number forms outrank other readings
            for form in _number_forms(tokens):
                variants.setdefault(form, kind == "category")
        for form in list(variants):
            choices = [[(t,), *ALTERNATIVES.get(t, ())] for t in form]
            for combination in itertools.product(*choices):
                variants.setdefault(tuple(itertools.chain.from_iterable(combination)), False)
        for alias in VALUE_ALIASES.get(" ".join(tokens), ()):
            variants.setdefault(tuple(alias.split()), False)
        for form, is_primary in list(variants.items()):
            for suffix in suffixes:
                if form[-len(suffix):] != suffix:
                    variants.setdefault(form + suffix, is_primary)
        for form, is_primary in variants.items():
            entries = self._forms.setdefault(form, [])
            if (name, value, is_primary) not in entries:
                entries.append((name, value, is_primary))
            lengths = self._lengths_by_first.setdefault(form[0], [])
            if len(form) not in lengths:
                lengths.append(len(form))
                lengths.sort(reverse=True)
            self.vocabulary_tokens.update(form)

    def match(self, tokens: list[str], start: int) -> tuple[int, list[tuple[str, str]]]:
        """Length and (attribute, value) readings of the longest value form starting at `start`."""
        for length in self._lengths_by_first.get(tokens[start], ()):
            entries = self._forms.get(tuple(tokens[start:start + length]))
            if entries:
                if any(primary for _, _, primary in entries):
                    return length, [(n, v) for n, v, primary in entries if primary]
                return length, [(n, v) for n, v, _ in entries]
        return 0, []

    def parse(self, text: str) -> ParsedFeedback:
        """The values `text` asserts (first one per attribute) and negates, and its remaining content words."""
        tokens = tokenize(text)
        result = ParsedFeedback()
        words: dict[str, None] = {}
        negating = False
        after_value = False  # inside a negation, right after a negated value
        budget = 0
        i = 0
        while i < len(tokens):
            token = tokens[i]
            length, readings = self.match(tokens, i) if token in self._lengths_by_first else (0, [])
            if length:
                for name, value in readings:
                    if negating:
                        result.negated.setdefault(name, set()).add(value)
                    else:
                        result.asserted.setdefault(name, value)
                after_value = negating
                i += length
                continue
            if token in PUNCTUATION or token in SCOPE_BREAKERS:
                negating = after_value = False
            elif token in NEGATION_CUES or (token == "instead" and tokens[i + 1:i + 2] == ["of"]):
                negating, after_value, budget = True, False, NEGATION_WINDOW
            elif negating:
                if after_value and token not in SCOPE_CONTINUERS:
                    negating = after_value = False
                else:
                    budget -= 1
                    negating = budget > 0
            if token not in PUNCTUATION and token not in STOP_WORDS and token not in NEGATION_CUES \
                    and token != "instead" and len(token) > 1:
                words[token] = None
            i += 1
        result.words = list(words)
        return result
