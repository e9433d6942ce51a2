"""The paraphrase shopper: the template shopper's facets each turn, worded from a wide phrase bank (a train part, and a
held-aside part that training never sees and the semantic reader does not know)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from matplotlib import colors as mpl_colors

from assistant.core.catalog import Catalog, Item
from assistant.core.colours import (
    FAMILIES,
    FASHION_COLOURS,
    colour_lab,
    colour_names,
    delta_e,
    describe_label,
    nearest_family,
)
from assistant.core.dialog import seeded_rng
from assistant.core.feedback import (
    PUNCTUATION,
    SPELLING_FAMILIES,
    STOP_WORDS,
    VALUE_ALIASES,
    attribute_kind,
    category_rank,
    singular,
    tokenize,
)
from assistant.core.lexicon import AUDIENCE_WORDS, PEOPLE, PHRASES
from assistant.core.reader import RELATIVE_WORDS, SemanticReader
from simulator.phrase_bank import COMPARATIVES, FORMALITY, FRAMES, NOT_NEGATED, ODD_COLOUR_WORDS, VALUE_KEYS, WORDS
from simulator.template_user import (
    ADJECTIVE_ORDER,
    TITLE_WORD_SHARE,
    Difference,
    TemplateUser,
    _article,
    _fields_needed,
    _labels,
    _words,
    category_nouns,
    comparative,
)

BANKS = ("train", "heldout")
HELD_ASIDE_SHARE = 0.3  # of every entry's phrases (and every frame family) kept out of training
COMPARATIVE_SHARE = 0.3  # how often an ordered facet is worded as a comparison
NEGATION_SHARE = 0.15  # how often a difference is worded only as "not what was shown"
OPENER_SHARE, CLOSER_SHARE, EARLIER_SHARE = 0.3, 0.2, 0.3  # fillers, and references to earlier turns (turn 2 on)
WORDING_TRIES = 4  # fresh wordings tried for a phrase the honesty check refuses, before the template's
COLOUR_NAMES_PER_LABEL = 36  # colour-table names kept per label, nearest first
COLOUR_NAME_REACH = 15.0  # CIEDE2000 from its label within which a colour-table name may stand for it

# How each facet kind's value is worded in a frame when the bank has no word for the shown value: the template's
# field (its `_fields`): plural nouns, "long sleeves", "knee-length", "crew neck", "for casual wear".
TEMPLATE_FIELD = {"category": "pl", "sleeve": "sl", "length": "len", "neckline": "n", "usage": "for"}
NEGATION_FAMILIES = {"colour": ("negation",), "fit": ("negation",), "length": ("negation",),
                     "pattern": ("negation", "negation_pattern"), "category": ("negation_noun",),
                     "sleeve": ("negation_noun",), "neckline": ("negation_neckline",), "gender": ("negation_for",),
                     "usage": ("negation_for",), "season": ("negation_for",)}
BEFORE_NOUN = frozenset({"colour", "pattern", "fit", "length"})  # in a request: "crimson slouchy tees"
AFTER_NOUN = {"gender": "for {}", "usage": "for {}", "season": "for {}", "sleeve": "with {}", "neckline": "with a {}"}
BASIC_COLOUR_WORDS = frozenset(FAMILIES) | {"gray"}
ARTICLE = re.compile(r"\b(a|an) ([a-z0-9][\w-]*)")


def phrase_key(text: str) -> tuple[str, ...]:
    """A phrase's words with every word singular: the form value keys and the held-aside checks compare."""
    return tuple(singular(token) for token in tokenize(text) if token not in PUNCTUATION)


def value_key(value: str) -> str:
    """The bank's key for an attribute value ("Tshirts" -> "t shirt", "Flip Flops" -> "flip flop")."""
    key = " ".join(phrase_key(_words(value)))
    return VALUE_KEYS.get(key, key)


def contains_any(words: tuple[str, ...], sequences: Iterable[tuple[str, ...]]) -> bool:
    """Whether any of the word sequences occurs, whole and in order, inside `words`."""
    return any(sequence and any(words[i:i + len(sequence)] == sequence for i in range(len(words) - len(sequence) + 1))
               for sequence in sequences)


@functools.cache
def reader_vocabulary() -> frozenset[tuple[str, ...]]:
    """Word sequences the semantic reader knows by heart: its lexicon's phrases and the catalog words they map to,
    the people and audience words, the exact-word parser's respellings and aliases, its relative colour words and the
    reviewed fashion colour names. No held-aside phrase contains one. (The reader still knows every colour-table
    name through the colour library, so a held-aside colour name is one the reader can place in CIELAB.)"""
    phrases: set[str] = set(PEOPLE) | set(AUDIENCE_WORDS) | set(RELATIVE_WORDS) | set(FASHION_COLOURS)
    for entries in PHRASES.values():
        for phrase, catalog_words in entries.items():
            phrases.add(phrase)
            phrases.update(catalog_words)
    for family in SPELLING_FAMILIES:
        phrases.update(family)
    for value, aliases in VALUE_ALIASES.items():
        phrases.update((value, *aliases))
    return frozenset(key for key in map(phrase_key, phrases) if key)


def _stable_hash(phrase: str) -> int:
    return int.from_bytes(hashlib.blake2b(phrase.encode("utf-8"), digest_size=8).digest(), "big")


def split_entry(phrases: Sequence[str], known: frozenset[tuple[str, ...]] = frozenset()) -> dict[str, tuple[str, ...]]:
    """One entry's phrases as {"train": ..., "heldout": ...}: HELD_ASIDE_SHARE of them (by a stable hash, so the
    split never changes between runs) are held aside, never a phrase containing one of the `known` sequences."""
    eligible = sorted((p for p in phrases if not contains_any(phrase_key(p), known)), key=_stable_hash)
    held = set(eligible[: round(HELD_ASIDE_SHARE * len(phrases))])
    return {"train": tuple(p for p in phrases if p not in held), "heldout": tuple(p for p in phrases if p in held)}


@dataclass(frozen=True)
class PhraseBank:
    """One part of the phrase bank: value words by facet kind and value key, comparatives, and frame families."""

    part: str
    words: dict[str, dict[str, tuple[str, ...]]]
    comparatives: dict[str, dict[str, tuple[str, ...]]]
    frames: dict[str, tuple[str, ...]]

    def phrases(self) -> set[str]:
        """Every word, comparative and frame of this part."""
        listed = [p for entries in (*self.words.values(), *self.comparatives.values()) for ps in entries.values()
                  for p in ps]
        return set(listed) | {frame for frames in self.frames.values() for frame in frames}


@functools.cache
def held_aside() -> frozenset[str]:
    """Every held-aside word, comparative and frame: what the split of any entry (or frame family) holds aside; a
    phrase listed in two entries is held aside in both, so the two parts never share one."""
    known = reader_vocabulary()
    entries = [ps for table in (*WORDS.values(), *COMPARATIVES.values()) for ps in table.values()]
    return frozenset(p for ps in entries for p in split_entry(ps, known)["heldout"]) | \
        frozenset(f for frames in FRAMES.values() for f in split_entry(frames)["heldout"])


@functools.cache
def phrase_bank(part: str) -> PhraseBank:
    """The train or held-aside ("heldout") part of simulator/phrase_bank.py."""
    if part not in BANKS:
        raise ValueError(f"bank must be one of {BANKS}, not {part!r}")
    held = held_aside()

    def mine(phrases: Sequence[str]) -> tuple[str, ...]:
        return tuple(p for p in phrases if (p in held) == (part == "heldout"))

    return PhraseBank(part, {kind: {key: mine(ps) for key, ps in table.items()} for kind, table in WORDS.items()},
                      {kind: {way: mine(ps) for way, ps in table.items()} for kind, table in COMPARATIVES.items()},
                      {family: mine(frames) for family, frames in FRAMES.items()})


@functools.cache
def colour_words(labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Label -> the colour names that stand for it: XKCD colour-survey names (how people name colours; the CSS
    table's names are in it too, less its run-together ones such as "darkorange") and the reviewed fashion names,
    those whose nearest label in CIEDE2000 it is, within COLOUR_NAME_REACH and in one of its colour families (no
    grey-blue "slate" for Blue), nearest first, at most COLOUR_NAMES_PER_LABEL."""
    listed = {" ".join(re.findall("[a-z]+", name.removeprefix("xkcd:"))) for name in mpl_colors.XKCD_COLORS}
    listed |= set(FASHION_COLOURS)  # as colour_names() spells them
    described = {label: describe_label(label) for label in labels}
    labs = {label: colour.lab for label, colour in described.items() if colour.lab is not None}
    own_words = {" ".join(phrase_key(label)) for label in labels}
    found: dict[str, list[tuple[float, str]]] = {label: [] for label in labs}
    for name in colour_names():
        words = set(name.split())  # a stop word ("macaroni and cheese") splits a name for the reader
        if name in own_words or name not in listed or words & ODD_COLOUR_WORDS or words & STOP_WORDS:
            continue
        lab = colour_lab(name)
        if lab is None or not labs:
            continue
        distance, label = min((delta_e(lab, label_lab), label) for label, label_lab in labs.items())
        families = described[label].families
        if distance <= COLOUR_NAME_REACH and (not families or nearest_family(lab) in families):
            found[label].append((distance, name))
    return {label: tuple(name for _, name in sorted(names)[:COLOUR_NAMES_PER_LABEL]) for label, names in found.items()}


def held_aside_colour(name: str) -> bool:
    """Whether a colour name belongs to the held-aside part: HELD_ASIDE_SHARE of the names that hold no basic colour
    word ("scarlet", not "cherry red") and that the reader's lexicon lacks, by a stable hash of the name alone, so
    that the part does not depend on a catalog's labels."""
    return not set(name.split()) & BASIC_COLOUR_WORDS and not contains_any(phrase_key(name), reader_vocabulary()) \
        and _stable_hash(name) < HELD_ASIDE_SHARE * 2 ** 64


def fix_articles(text: str) -> str:
    """"a" or "an" as the next word sounds ("a orange one" -> "an orange one")."""
    return ARTICLE.sub(lambda match: _article(match.group(2)), text)


class ParaphraseUser(TemplateUser):
    """A simulated shopper that names the same facets as the template shopper (its choice of differences, facets
    and title words, drawn from the same seeded stream) in words from one part of the phrase bank: synonyms and
    kinds, occasions, people, colour-table names near the label, comparatives, negations of the shown value,
    references to earlier turns and varied frames. A value the part has no words for is worded as the template
    shopper words it.

    Every reply is checked with the semantic reader's exact-word, lexicon and colour readings (no MiniLM): it
    never asks for a value the target lacks, nor rules out one it has; a refused phrase is worded afresh, then
    as the template would. With `bank="heldout"` and a catalog, held-aside phrases containing one of the
    catalog's own value words are left out too (the reader would read those words exactly). Replies depend only
    on (seed, shown id, target id, turn).
    """

    def __init__(self, catalog: Catalog | None = None, seed: int = 0, max_facets: int = 2, title_words: int = 1,
                 bank: str = "train") -> None:
        self.bank = phrase_bank(bank)
        super().__init__(catalog, seed=seed, max_facets=max_facets, title_words=title_words)
        self._vocabulary: dict[str, list[str]] = {name: list(values) for name, values in
                                                  (catalog.vocabulary() if catalog is not None else {}).items()}
        self._value_words: frozenset[tuple[str, ...]] | None = None
        self._checker: SemanticReader | None = None
        self._wordings: dict[tuple[str, str], tuple[str, ...]] = {}

    # ---- the public surface -------------------------------------------------------------------------------

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        """How `target` differs from `shown`: the template shopper's facets, in the bank's words."""
        wording = seeded_rng(self.seed, "paraphrase", self.bank.part, shown.id, target.id, turn)
        if shown.id == target.id or (shown.attributes == target.attributes and shown.title == target.title):
            return wording.choice(self.bank.frames["identical"])
        rng, chosen = self._template_draws(shown, target, turn)
        parts: list[tuple[str, Difference | str]] = [(self._phrase(d, rng), d) for d in chosen]
        words = self._title_words(target, set(tokenize(shown.title)), rng) \
            if not parts or rng.random() < TITLE_WORD_SHARE else []
        for word in words:
            position = rng.randrange(len(parts) + 1)
            parts.insert(position, (self._title_phrase(word, target, rng), word))
        if not parts:
            return wording.choice(self.bank.frames["title_only"])
        def drafts() -> Iterator[list[str]]:
            """Most sentences pass the honesty check whole; only a refused one is checked phrase by phrase."""
            yield [self._wording(about, target, wording) or fallback for fallback, about in parts]
            checked = (self._honest_phrase(fallback, about, target, wording) for fallback, about in parts)
            yield [phrase for phrase in checked if phrase is not None]

        for phrases in drafts():
            for separate in (False, True):  # a clause break keeps a negation's scope off the next phrase
                text = self._sentence(phrases, turn, wording, separate) if phrases else ""
                if text and self._honest(text, target):
                    return text
        return super().respond(shown, target, turn)

    def facets(self, shown: Item, target: Item, turn: int) -> list[Difference]:
        """The differences this turn's reply names: the ones the template shopper names for the same turn."""
        return self._template_draws(shown, target, turn)[1]

    def describe(self, target: Item, variant: int = 0) -> str:
        """An opening request naming the target's kind and 1-2 more facets in the bank's words, e.g. "got any
        crimson tees for my husband?"."""
        rng = seeded_rng(self.seed, "paraphrase describe", self.bank.part, target.id, variant)
        self._learn(target)
        differences = self._differences(dataclasses.replace(target, id="", title="", attributes={}), target, rng)
        category = next((d for d in differences if d.kind == "category"), None)
        others = [d for d in differences if d.kind in BEFORE_NOUN or d.kind in AFTER_NOUN]
        extra = self._weighted_sample(others, rng, rng.choice((1, 2, 2)))
        while True:
            text = rng.choice(self.bank.frames["request"]).format(thing=self._request_phrase(category, extra, rng))
            if self._honest(text, target):
                return fix_articles(text)
            if not extra:
                return super().describe(target, variant)
            extra.pop()

    def wordings(self, name: str, value: str) -> tuple[str, ...]:
        """This user's words for one attribute value (empty when its bank part has none): colour-table names near a
        colour label, the bank entry's words otherwise; held-aside ones without the catalog's own value words."""
        if (name, value) not in self._wordings:
            kind = attribute_kind(name)
            if kind == "colour":
                labels = tuple(sorted(self._vocabulary.get(name, [value])))
                phrases = tuple(n for n in colour_words(labels).get(value, ())
                                if held_aside_colour(n) == (self.bank.part == "heldout"))
            else:
                phrases = self.bank.words.get(kind, {}).get(value_key(value), ())
            self._wordings[(name, value)] = tuple(p for p in phrases if self.bank.part == "train"
                                                  or not contains_any(phrase_key(p), self.value_words))
        return self._wordings[(name, value)]

    # ---- wording ------------------------------------------------------------------------------------------

    def _template_draws(self, shown: Item, target: Item, turn: int) -> tuple[random.Random, list[Difference]]:
        """The template shopper's seeded stream for this turn and the facets it draws from it (the stream goes on
        to draw the template's wording and title words, in its order)."""
        rng = seeded_rng(self.seed, shown.id, target.id, turn)
        self._learn(shown, target)
        return rng, self._choose_facets(self._differences(shown, target, rng), rng)

    def _learn(self, *items: Item) -> None:
        super()._learn(*items)
        for item in items:
            for name, value in item.attributes.items():
                values = self._vocabulary.setdefault(name, [])
                if value not in values:
                    values.append(value)
                    self._checker, self._value_words, self._wordings = None, None, {}

    @property
    def value_words(self) -> frozenset[tuple[str, ...]]:
        """The words of every value this user knows (the words each value's description in the reader starts with)."""
        if self._value_words is None:
            self._value_words = frozenset(phrase_key(v) for vs in self._vocabulary.values() for v in vs)
        return self._value_words

    @property
    def checker(self) -> SemanticReader:
        """The reader without MiniLM over every value this user knows: the honesty check's reading."""
        if self._checker is None:
            self._checker = SemanticReader(self._vocabulary, semantic=False)
        return self._checker

    def _honest(self, text: str, target: Item) -> bool:
        """No value asked for that the target lacks (with full credit), none of the target's values ruled out."""
        reading = self.checker.read(text)

        def labels(name: str) -> set[str]:
            value = target.attributes.get(name)
            return set() if value is None else {value, *_labels(value)}

        if any(not any(credits.get(label, 0.0) >= 1.0 for label in labels(name))
               for name, credits in reading.wanted.items()):
            return False
        return not any(labels(name) & values for name, values in reading.ruled_out.items())

    def _honest_phrase(self, fallback: str, about: Difference | str, target: Item, rng: random.Random) -> str | None:
        """A bank wording of one difference (or title word) that passes the honesty check, else the template's
        wording if it passes, else None."""
        for _ in range(WORDING_TRIES):
            phrase = self._wording(about, target, rng)
            if phrase is None:
                break
            if self._honest(phrase, target):
                return phrase
        return fallback if self._honest(fallback, target) else None

    def _wording(self, about: Difference | str, target: Item, rng: random.Random) -> str | None:
        """A bank wording of a difference or a title word (unchecked), None when the bank has none."""
        if isinstance(about, Difference):
            return self._bank_phrase(about, rng)
        return self._title_words_phrase(about, target, rng)

    def _direction(self, difference: Difference) -> str | None:
        """darker / lighter, longer / shorter, tighter / looser (the template's), or more formal / more casual."""
        if difference.shown is None:
            return None
        if difference.kind == "usage":
            target, shown = FORMALITY.get(value_key(difference.target)), FORMALITY.get(value_key(difference.shown))
            if target is None or shown is None or target == shown:
                return None
            return "more formal" if target > shown else "more casual"
        return comparative(difference.kind, difference.target, difference.shown)

    def _fallback_word(self, difference: Difference, fields: dict[str, str], prefix: str) -> str:
        """The template's wording of the target (prefix "t") or shown (prefix "s") value in a bank frame."""
        key = TEMPLATE_FIELD.get(difference.kind)
        word = fields.get(f"{prefix}_{key}", fields[prefix]) if key else fields[prefix]
        return word.removeprefix("for ") if difference.kind == "usage" else word

    def _bank_phrase(self, difference: Difference, rng: random.Random) -> str | None:
        """One difference in a frame of the bank, or None when the bank part has no words for the target value
        (and this draw words it neither as a comparison nor as a negation)."""
        kind = difference.kind
        targets = self.wordings(difference.name, difference.target)
        fields = self._values(difference)  # the template's fields (s_noun, t_pos, n ...) fill frames too
        negatable = difference.shown is not None and value_key(difference.shown) not in NOT_NEGATED.get(kind, ())
        if difference.shown is not None:
            shown = self.wordings(difference.name, difference.shown) if negatable else ()
            fields["s"] = rng.choice(shown) if shown else self._fallback_word(difference, fields, "s")
        if targets:
            fields["t"] = rng.choice(targets)
        direction = self._direction(difference)
        comparisons = self.bank.comparatives.get(kind, {}).get(direction or "", ())
        draw = rng.random()
        if comparisons and draw < COMPARATIVE_SHARE:
            fields["cmp"] = rng.choice(comparisons)
            families = ["colour_comparative", "comparative"] if kind == "colour" and targets else ["comparative"]
        elif negatable and kind in NEGATION_FAMILIES and draw < COMPARATIVE_SHARE + NEGATION_SHARE:
            families = list(NEGATION_FAMILIES[kind])
        elif targets and kind in self.bank.frames:
            families = [kind]
        else:
            return None
        frames = [frame for family in families for frame in self.bank.frames.get(family, ())
                  if _fields_needed(frame) <= fields.keys()]
        return fix_articles(rng.choice(frames).format(**fields)) if frames else None

    def _title_words_phrase(self, word: str, target: Item, rng: random.Random) -> str | None:
        family = "title_brand" if tokenize(target.title)[:1] == [word] else "title"
        frames = self.bank.frames[family]
        return fix_articles(rng.choice(frames).format(w=word)) if frames else None

    def _sentence(self, phrases: list[str], turn: int, rng: random.Random, separate: bool = False) -> str:
        """The phrases joined (as sentences of their own when `separate`), with an opener, a closer and a reference
        to earlier turns now and then."""
        heads = [phrase.rstrip("?") for phrase in phrases[:-1]]
        if separate:
            text = ". ".join(heads + phrases[-1:])
        else:
            text = phrases[0] if not heads else ", ".join(heads) + rng.choice(self.bank.frames["joiner"]) + phrases[-1]
        if rng.random() < OPENER_SHARE:
            text = rng.choice(self.bank.frames["opener"]) + text
        if rng.random() < CLOSER_SHARE and not text.endswith("?"):
            text += rng.choice(self.bank.frames["closer"])
        if turn > 1 and rng.random() < EARLIER_SHARE:
            text = rng.choice(self.bank.frames["earlier"]).format(reply=text)
        return text

    def _request_phrase(self, category: Difference | None, extra: list[Difference], rng: random.Random) -> str:
        """A noun phrase for a request: "crimson slouchy tees for my husband", "something tartan with bare arms"."""
        before: list[tuple[int, str]] = []
        after: list[str] = []
        for difference in extra:
            fields = self._values(difference)
            words = self.wordings(difference.name, difference.target)
            if difference.kind in BEFORE_NOUN:
                single = [w for w in words if " " not in w]
                word = rng.choice(single) if single else self._fallback_word(difference, fields, "t")
                before.append((ADJECTIVE_ORDER.get(difference.kind, 9), word))
            else:
                word = rng.choice(words) if words else self._fallback_word(difference, fields, "t")
                after.append(AFTER_NOUN[difference.kind].format(word))
        if category is not None:
            nouns = self.wordings(category.name, category.target)
            noun = rng.choice(nouns) if nouns else category_nouns(category.target, category_rank(category.name))[1]
        else:
            noun = "something"
        adjectives = [word for _, word in sorted(before)]
        phrase = " ".join([noun, *adjectives] if noun == "something" else [*adjectives, noun])
        preposition = None  # "for my husband and for the gym"
        for clause in after:
            phrase += (" and " if clause.split()[0] == preposition else " ") + clause
            preposition = clause.split()[0]
        return phrase
