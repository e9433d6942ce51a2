"""The semantic feedback reader: a shopper's own words -> wanted values (with credit) and ruled-out values.

Misspelt shop words are corrected first ("sneekers"). Mentions are then found, longest first, by the catalog's
exact value words (AttributeParser), the reviewed lexicon
(kinds, occasions, seasons, people), colour names in CIELAB (assistant.core.colours) and, for the words left,
MiniLM phrase vectors against descriptions of every attribute value (a phrase in an occasion's slot, "for a gala",
against the occasions with a lower bar); assistant.core.negation decides which mentions are ruled out.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein
from transformers import AutoModel, AutoTokenizer

from assistant.core.catalog import vocabulary_of
from assistant.core.colours import ColourSense, colour_names
from assistant.core.feedback import PUNCTUATION, STOP_WORDS, AttributeParser, attribute_kind, name_words, tokenize
from assistant.core.lexicon import KIND_GLOSS, KIND_PEOPLE, PEOPLE, PHRASES, audience, audience_credit
from assistant.core.meaning import Matcher, cosine_matcher, shipped_matcher
from assistant.core.negation import POST_CUES, PRE_CUES, negated_mentions
from assistant.core.text_encoder import MINILM_NAME, local_text_source

MAX_PHRASE_TOKENS = 4
MAX_NGRAM = 3  # residual n-grams embedded by MiniLM
SEMANTIC_THRESHOLD = 0.62  # cosine a residual n-gram needs to a value's description (calibrated on the dev bank)
SEMANTIC_MARGIN = 0.03  # over the attribute's second-best value
SEMANTIC_KINDS = frozenset({"category", "usage", "season", "pattern", "fit", "length", "neckline", "sleeve",
                            "material", "gender"})
RELATIVE_WORDS = {"darker": "darker", "deeper": "darker", "lighter": "lighter", "paler": "lighter",
                  "brighter": "brighter", "bolder": "brighter", "vivid": "brighter"}
# Words that name no facet value however close their vectors come to one ("an outfit", "something to wear").
GENERIC_WORDS = frozenset("""outfit outfits clothes clothing wear wearing item items look looks piece pieces stuff
thing things garment garments apparel style styles option options product products buy gift gifts shop
shade tone hue colour color coloured colored""".split())  # "a darker shade" is no pair of shades
CUE_WORDS = frozenset(word for cue in PRE_CUES + POST_CUES for word in cue)
# A phrase in an occasion's slot ("for a picnic", "to a gala", "at the races") is read against the occasion values
# alone, with a lower bar than a phrase anywhere (calibrated on a bank of our own occasion phrases and non-occasion
# "for ..." phrases: tests/test_reader.py).
OCCASION_CUES = frozenset({"for", "to", "at", "during"})
LOOKING = frozenset("look looking looked glance see seeing".split())
COMPARED_CREDIT = 0.5  # the colour after "than" itself: half credit (a darker shade may keep its label)
THAN_FILLERS = frozenset("this that the these those my your its his her their one".split())
SLOT_FILLERS = frozenset("a an the my our his her their your some this that these those next upcoming".split())
OCCASION_KINDS = frozenset({"usage"})
# what else such a slot names ("for tropical weather", "for my gran"): they compete there, so that a season or a
# person is not read as the occasion nearest it, but only an occasion is read with the lower bar
SLOT_KINDS = OCCASION_KINDS | {"season", "gender"}
OCCASION_THRESHOLD = 0.6
OCCASION_MARGIN = 0.3
READING_CACHE = 4096
PHRASE_CACHE = 20_000
SPELLING_MIN_LETTERS = 5  # shorter words are too close to too many others to be corrected safely
SPELLING_LONG_WORD = 8  # a word this long may be two edits (a typo's letter swapped, doubled, dropped) off; else one


@functools.cache
def english_words() -> frozenset[str]:
    """Whole words of MiniLM's WordPiece vocabulary (30k, lowercase): words a shopper may use as they are."""
    vocabulary = AutoTokenizer.from_pretrained(local_text_source(MINILM_NAME)).get_vocab()
    return frozenset(word for word in vocabulary if word.isalpha())


def _after_than(tokens: list[str], start: int) -> bool:
    """Whether the phrase at `start` follows "than" (and a determiner): what something is compared with."""
    before = start - 1
    while before >= 0 and tokens[before] in THAN_FILLERS:
        before -= 1
    return before >= 0 and tokens[before] == "than"


def residual_grams(tokens: list[str], taken: set[int]) -> list[tuple[int, int]]:
    """(start, end) of the n-grams (up to MAX_NGRAM tokens, starting and ending on a content word) that no exact,
    lexicon or colour reading took: what MiniLM reads."""
    content = [i for i, t in enumerate(tokens) if i not in taken and t not in STOP_WORDS and t not in CUE_WORDS
               and t not in PUNCTUATION and t.isalpha() and len(t) > 2 and t not in RELATIVE_WORDS
               and t not in GENERIC_WORDS]
    content_set = set(content)
    return [(i, i + n) for i in content for n in range(1, MAX_NGRAM + 1)
            if i + n - 1 in content_set and all(j not in taken and tokens[j] not in PUNCTUATION
                                                for j in range(i, i + n))]


def occasion_slot(tokens: list[str], start: int) -> bool:
    """Whether the words from `start` fill an occasion's slot: after "for", "at" or "during" and any determiners
    ("for picnics", "at the races"), or after "to" and a determiner ("to a gala"; "to carry" is a verb's slot)."""
    j = start - 1
    while j >= 0 and tokens[j] in SLOT_FILLERS:
        j -= 1
    if j < 0 or tokens[j] not in OCCASION_CUES or (tokens[j] == "to" and j == start - 1):
        return False
    return not (tokens[j] == "at" and j > 0 and tokens[j - 1] in LOOKING)  # "look at kurtas" names no occasion


class PhraseEncoder:
    """all-MiniLM-L6-v2 mean-pooled, L2-normalised phrase vectors: new phrases in one batched call, a bounded LRU."""

    def __init__(self, cache_size: int = PHRASE_CACHE) -> None:
        source = local_text_source(MINILM_NAME)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval()
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    @torch.inference_mode()
    def _encode(self, phrases: list[str]) -> np.ndarray:
        batch = self.tokenizer(phrases, padding=True, truncation=True, max_length=32, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), 384) vectors."""
        with self.lock:
            missing = list(dict.fromkeys(p for p in phrases if p not in self.cache))
            for start in range(0, len(missing), 256):
                chunk = missing[start:start + 256]
                for phrase, vector in zip(chunk, self._encode(chunk), strict=True):
                    self.cache[phrase] = vector
            out = np.stack([self.cache[p] for p in phrases]) if phrases else np.zeros((0, 384), np.float32)
            for phrase in phrases:
                self.cache.move_to_end(phrase)
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return out


@functools.cache
def phrase_encoder() -> PhraseEncoder:
    """The process's one MiniLM phrase encoder (loaded on first use)."""
    return PhraseEncoder()


@dataclass
class Mention:
    """A span of the message naming values: attribute -> value -> credit, and what a negation rules out."""

    start: int
    end: int
    words: str
    wanted: dict[str, dict[str, float]]
    ruled: dict[str, set[str]]
    how: str  # exact | lexicon | person | colour | semantic


@dataclass(frozen=True)
class Meaning:
    """A text whose MiniLM vector a residual n-gram may match, and the values it stands for (attribute -> credit)."""

    text: str
    wanted: dict[str, dict[str, float]]

    @property
    def signature(self) -> frozenset[tuple[str, str]]:
        return frozenset((n, v) for n, credits in self.wanted.items() for v, c in credits.items() if c >= 1.0)


@dataclass
class Reading:
    """What one message says: wanted values with credit, ruled-out values, relative colour moves, other words."""

    wanted: dict[str, dict[str, float]] = field(default_factory=dict)
    ruled_out: dict[str, set[str]] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)  # attribute -> the shopper's words for it
    relative: list[str] = field(default_factory=list)  # darker | lighter | brighter
    compared: dict[str, str] = field(default_factory=dict)  # attribute -> the value after "than" ("than this red")
    words: list[str] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)


@dataclass
class Understanding:
    """A dialog's feedback so far: per attribute the wanted values (credit) and the ruled-out values."""

    wanted: dict[str, dict[str, float]] = field(default_factory=dict)
    ruled_out: dict[str, set[str]] = field(default_factory=dict)
    said: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.wanted or self.ruled_out)

    def best(self) -> dict[str, str]:
        """The most credited wanted value per attribute (ties: all of them, joined by ' or ')."""
        out = {}
        for name, credits in self.wanted.items():
            top = max(credits.values())
            out[name] = " or ".join(v for v, c in credits.items() if c >= top - 1e-6)
        return out


class SemanticReader:
    """Reads a shopper's words against one catalog's attributes (any names and values), see the module docstring.

    `rows` (one attribute dict per catalog row, labels with predictions filled in) lets relative colour words
    ("darker") read the shown item's colour; `semantic=False` leaves MiniLM out (exact words, lexicon, colours).
    """

    def __init__(self, vocabulary: Mapping[str, Iterable[str]], rows: Sequence[Mapping[str, str]] | None = None,
                 semantic: bool = True, encoder: PhraseEncoder | None = None, matcher: Matcher | None = None,
                 reading_cache: int = READING_CACHE) -> None:
        self.values = {name: [v for v in dict.fromkeys(values) if v] for name, values in vocabulary.items()}
        self.kinds = {name: attribute_kind(name) for name in self.values}
        self.parser = AttributeParser(self.values)
        self.rows = rows
        self.semantic = semantic
        self._encoder = encoder
        self.colours = {name: ColourSense(values) for name, values in self.values.items()
                        if self.kinds[name] == "colour"}
        self.audiences = {name: {v: audience(v) for v in values if audience(v) is not None}
                          for name, values in self.values.items() if self.kinds[name] == "gender"}
        self._kind_parsers = {kind: AttributeParser({n: v for n, v in self.values.items() if self.kinds[n] == kind})
                              for kind in set(self.kinds.values())}
        self.phrases: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}
        for kind, table in PHRASES.items():
            if kind in self._kind_parsers:
                for phrase, alternatives in table.items():
                    self.phrases[tuple(tokenize(phrase))] = (kind, alternatives)
        self.people = {tuple(tokenize(p)): person for p, person in PEOPLE.items()} if any(self.audiences.values()) \
            else {}
        self.kind_people = {tuple(tokenize(p)): person for p, person in KIND_PEOPLE.items()} if self.people else {}
        # the words a misspelling may be corrected to: the catalog's values, the lexicon's, colour names
        self.spellings = sorted({word for phrase in [*(v for vs in self.values.values() for v in vs),
                                                     *(p for t in PHRASES.values() for p in t), *PEOPLE,
                                                     *colour_names()]
                                 for word in tokenize(phrase) if word.isalpha() and len(word) >= SPELLING_MIN_LETTERS})
        self._known = frozenset(self.spellings) | STOP_WORDS | CUE_WORDS | GENERIC_WORDS | set(RELATIVE_WORDS)
        self._readings: OrderedDict[str, Reading] = OrderedDict()
        self.reading_cache = reading_cache  # messages' readings kept (a server's memory stays bounded)
        self._descriptions: tuple[list[tuple[str, str]], np.ndarray] | None = None
        self.matcher = matcher or shipped_matcher() or cosine_matcher(SEMANTIC_THRESHOLD)
        self._meanings: tuple[list[Meaning], np.ndarray] | None = None
        self._bank_lock = threading.RLock()  # the banks are built once, by the first request of many at once

    @classmethod
    def from_catalog(cls, catalog, rows: Sequence[Mapping[str, str]] | None = None, **options) -> SemanticReader:
        return cls(vocabulary_of(rows, catalog.attribute_names()) if rows is not None else catalog.vocabulary(),
                   rows, **options)

    # --- mentions -------------------------------------------------------------------------------------------
    @functools.lru_cache(maxsize=1024)  # noqa: B019 (a reader lives as long as its catalog)
    def concept_values(self, kind: str, alternatives: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """The catalog's values of a facet kind named by a lexicon entry's words (exact words, else MiniLM)."""
        parser = self._kind_parsers.get(kind)
        found: dict[str, dict[str, float]] = {}
        for alternative in alternatives:
            for name, value in parser.parse(alternative).asserted.items() if parser else ():
                found.setdefault(name, {}).setdefault(value, 1.0)
        if not found and self.semantic:
            best = self._nearest(" or ".join(alternatives), {kind}, threshold=SEMANTIC_THRESHOLD - 0.07)
            if best is not None:
                found = {best[0]: {best[1]: 1.0}}
        return found

    def _person_values(self, person: tuple[str, str]) -> dict[str, dict[str, float]]:
        out = {}
        for name, audiences in self.audiences.items():
            credits = {v: audience_credit(person, a) for v, a in audiences.items()}
            credits = {v: c for v, c in credits.items() if c > 0}
            if credits:
                out[name] = credits
        return out

    def _exact(self, tokens: list[str], start: int) -> Mention | None:
        length, readings = self.parser.match(tokens, start)
        if not length:
            return None
        words = " ".join(tokens[start:start + length])
        wanted: dict[str, dict[str, float]] = {}
        ruled: dict[str, set[str]] = {}
        for name, value in readings:
            if name in self.colours:
                wanted[name] = self.colours[name].wanted(value) or {value: 1.0}
                ruled[name] = set(self.colours[name].ruled_out(value)) or {value}
            else:
                wanted.setdefault(name, {})[value] = 1.0
                ruled.setdefault(name, set()).add(value)
        return Mention(start, start + length, words, wanted, ruled, "exact")

    def _lexicon(self, tokens: list[str], start: int) -> Mention | None:
        for length in range(min(MAX_PHRASE_TOKENS, len(tokens) - start), 0, -1):
            key = tuple(tokens[start:start + length])
            if key in self.people:
                wanted = self._person_values(self.people[key])
                how = "person"
            elif key in self.phrases:
                wanted = self.concept_values(*self.phrases[key])
                how = "lexicon"
            else:
                continue
            if wanted:
                ruled = {n: {v for v, c in credits.items() if c >= 1.0} for n, credits in wanted.items()}
                if key in self.kind_people:  # "a blouse": a woman's or a girl's ("not a
                    wanted = {**self._person_values(self.kind_people[key]), **wanted}  # blouse" rules out no one)
                return Mention(start, start + length, " ".join(key), wanted, ruled, how)
        return None

    def _colour(self, tokens: list[str], start: int) -> Mention | None:
        for length in range(min(3, len(tokens) - start), 0, -1):
            words = " ".join(tokens[start:start + length])
            if any(t in STOP_WORDS or t in PUNCTUATION for t in tokens[start:start + length]):
                continue
            wanted = {name: sense.wanted(words) for name, sense in self.colours.items()}
            wanted = {name: credits for name, credits in wanted.items() if credits}
            if wanted:
                ruled = {name: set(self.colours[name].ruled_out(words)) for name in wanted}
                return Mention(start, start + length, words, wanted, ruled, "colour")
        return None

    def _description_bank(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        with self._bank_lock:
            return self._build_description_bank()

    def _build_description_bank(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        if self._descriptions is None:
            keys = [(name, value) for name, values in self.values.items() if self.kinds[name] in SEMANTIC_KINDS
                    for value in values if len(value) <= 40]
            texts = [f"{value.lower()}, {KIND_GLOSS.get(self.kinds[name], 'a product attribute')} "
                     f"({name_words(name)})" for name, value in keys]
            self._descriptions = keys, self.encoder.encode(texts) if texts else np.zeros((0, 384), np.float32)
        return self._descriptions

    def meaning_bank(self) -> tuple[list[Meaning], np.ndarray]:
        """What a residual n-gram may mean, with MiniLM vectors: every value's description (its words, the facet's
        gloss, the attribute's name), its bare words, and every lexicon phrase and person word with the values the
        lexicon reads from it (kNN by meaning over the reviewed lexicon: "stepdad" comes near "dad")."""
        with self._bank_lock:
            return self._build_meaning_bank()

    def _build_meaning_bank(self) -> tuple[list[Meaning], np.ndarray]:
        if self._meanings is None:
            meanings: list[Meaning] = []
            keys, _ = self._description_bank()
            for name, value in keys:
                for text in (f"{value.lower()}, {KIND_GLOSS.get(self.kinds[name], 'a product attribute')} "
                             f"({name_words(name)})", value.lower()):
                    meanings.append(Meaning(text, {name: {value: 1.0}}))
            for key, (kind, alternatives) in self.phrases.items():
                if kind in SEMANTIC_KINDS and (wanted := self.concept_values(kind, alternatives)):
                    meanings.append(Meaning(" ".join(key), wanted))
            for key, person in self.people.items():
                if wanted := self._person_values(person):
                    meanings.append(Meaning(" ".join(key), wanted))
            vectors = self.encoder.encode([m.text for m in meanings]) if meanings else np.zeros((0, 384), np.float32)
            self._meanings = meanings, vectors
        return self._meanings

    @functools.lru_cache(maxsize=8)  # noqa: B019 (the meaning bank, once built, never changes)
    def _kind_columns(self, kinds: frozenset[str]) -> np.ndarray:
        """The meaning bank's rows that name only facets of `kinds`."""
        meanings, _ = self.meaning_bank()
        return np.array([i for i, m in enumerate(meanings) if all(self.kinds[name] in kinds for name in m.wanted)],
                        dtype=np.int64)

    def best_meanings(self, probabilities: np.ndarray, kinds: frozenset[str] | None = None
                      ) -> list[tuple[Meaning, float, float] | None]:
        """Per row of match probabilities (phrases x the meaning bank): its most probable meaning (of facets of
        `kinds` only, when given), that probability, and its logit margin over the best meaning that names other
        values of the same attributes (None when no meaning qualifies)."""
        meanings, _ = self.meaning_bank()
        if kinds is not None:
            columns = self._kind_columns(kinds)
            meanings, probabilities = [meanings[i] for i in columns], probabilities[:, columns]
        if not meanings:
            return [None] * len(probabilities)
        logits = np.log(np.clip(probabilities, 1e-9, None)) - np.log(np.clip(1 - probabilities, 1e-9, None))
        out: list[tuple[Meaning, float, float] | None] = []
        for row, logit in zip(probabilities, logits, strict=True):
            order = np.argsort(-row)
            best = meanings[order[0]]
            rival = next((j for j in order[1:] if meanings[j].signature != best.signature
                          and meanings[j].wanted.keys() & best.wanted.keys()), None)
            margin = float(logit[order[0]] - logit[rival]) if rival is not None else float("inf")
            out.append((best, float(row[order[0]]), margin))
        return out

    @property
    def encoder(self) -> PhraseEncoder:
        if self._encoder is None:
            self._encoder = phrase_encoder()
        return self._encoder

    def _scores(self, phrases: list[str], kinds: set[str] | None = None
                ) -> list[tuple[str, str, float, float] | None]:
        """Per phrase: the best (attribute, value, cosine, margin over that attribute's second best)."""
        keys, bank = self._description_bank()
        if not phrases or not keys:
            return [None] * len(phrases)
        similarity = self.encoder.encode(phrases) @ bank.T
        out: list[tuple[str, str, float, float] | None] = []
        for row in similarity:
            order = np.argsort(-row)
            best = next((j for j in order if kinds is None or self.kinds[keys[j][0]] in kinds), None)
            if best is None:
                out.append(None)
                continue
            name = keys[best][0]
            second = next((row[j] for j in order if j != best and keys[j][0] == name), -1.0)
            out.append((name, keys[best][1], float(row[best]), float(row[best] - second)))
        return out

    def _nearest(self, phrase: str, kinds: set[str], threshold: float) -> tuple[str, str] | None:
        scored = self._scores([phrase], kinds)[0]
        if scored is None or scored[2] < threshold or scored[3] < SEMANTIC_MARGIN:
            return None
        return scored[0], scored[1]

    def _semantic(self, tokens: list[str], taken: set[int]) -> list[Mention]:
        """Mentions MiniLM finds among the words no other reading took (n-grams of up to MAX_NGRAM tokens)."""
        grams = residual_grams(tokens, taken) if self.semantic else []
        if not grams:
            return []
        meanings, bank = self.meaning_bank()
        if not meanings:
            return []
        probabilities = self.matcher.probabilities(self.encoder.encode([" ".join(tokens[a:b]) for a, b in grams]),
                                                   bank)
        scored = self.best_meanings(probabilities)
        accepted = sorted(((s[1], a, b, s[0]) for (a, b), s in zip(grams, scored, strict=True)
                           if s is not None and s[1] >= self.matcher.threshold and s[2] >= self.matcher.margin),
                          key=lambda x: x[0], reverse=True)
        slots = [k for k, (a, _) in enumerate(grams) if occasion_slot(tokens, a)]
        if slots and any(kind in OCCASION_KINDS for kind in self.kinds.values()):
            occasions = self.best_meanings(probabilities[slots], kinds=SLOT_KINDS)
            accepted += sorted(((s[1], *grams[k], s[0]) for k, s in zip(slots, occasions, strict=True)
                                if s is not None and s[1] >= OCCASION_THRESHOLD and s[2] >= OCCASION_MARGIN
                                and all(self.kinds[name] in OCCASION_KINDS for name in s[0].wanted)),
                               key=lambda x: x[0], reverse=True)
        used: set[int] = set()
        mentions = []
        for _, a, b, meaning in accepted:
            if used.isdisjoint(range(a, b)):
                used.update(range(a, b))
                ruled = {n: {v for v, c in credits.items() if c >= 1.0} for n, credits in meaning.wanted.items()}
                mentions.append(Mention(a, b, " ".join(tokens[a:b]), meaning.wanted, ruled, "semantic"))
        return mentions

    def mentions(self, tokens: list[str]) -> list[Mention]:
        """Every mention in the tokens, longest first at each position (ties: exact words, then the lexicon)."""
        found = self._word_mentions(tokens)
        taken = {j for m in found for j in range(m.start, m.end)}
        found.extend(self._semantic(tokens, taken))
        return sorted(found, key=lambda m: m.start)

    def _word_mentions(self, tokens: list[str]) -> list[Mention]:
        """The mentions found by words (exact values, the lexicon, colour names), before MiniLM reads the rest."""
        found: list[Mention] = []
        i = 0
        while i < len(tokens):
            if tokens[i] in PUNCTUATION:
                i += 1
                continue
            candidates = [m for m in (self._exact(tokens, i), self._lexicon(tokens, i),
                                      self._colour(tokens, i) if self.colours else None) if m is not None]
            if not candidates:
                i += 1
                continue
            longest = max(m.end for m in candidates)
            best = [m for m in candidates if m.end == longest]
            person = next((m for m in best if m.how == "person"), None)
            chosen = person if person is not None and all(self.kinds[n] == "gender" for n in best[0].wanted) \
                else best[0]
            found.append(chosen)
            i = chosen.end
        return found

    # --- messages and dialogs ------------------------------------------------------------------------------
    def spelled(self, tokens: list[str]) -> list[str]:
        """The tokens with misspelt shop words corrected ("sneekers" -> "sneakers"): a word that is neither an
        English word (MiniLM's vocabulary) nor one of the reader's own becomes its plural when that is one of the
        reader's words, else the one reader's word within one edit (two for long words; a swap of neighbours is
        one); when several are as near ("tshirt": shirt or tshirts) it is left as typed. Without MiniLM
        (`semantic=False`) no word is corrected: with no dictionary, "leather" would become "weather"."""
        if not self.semantic:
            return tokens
        english = english_words()
        return [self._spelling(token) if len(token) >= SPELLING_MIN_LETTERS and token.isalpha()
                and token not in self._known and token not in english else token for token in tokens]

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (a reader lives as long as its catalog)
    def _spelling(self, token: str) -> str:
        plural = next((token + end for end in ("s", "es") if token + end in self._known), None)
        if plural is not None:
            return plural
        edits = 2 if len(token) >= SPELLING_LONG_WORD else 1
        near = process.extract(token, self.spellings, scorer=DamerauLevenshtein.distance, score_cutoff=edits,
                               limit=None)
        nearest = [word for word, distance, _ in near if distance == near[0][1]]  # extract sorts nearest first
        return nearest[0] if len(nearest) == 1 else token

    def read_all(self, texts: Iterable[str]) -> None:
        """Read many messages at once (training rollouts): the MiniLM phrases of those not read yet are encoded in
        batched calls first, a few times faster than one message at a time."""
        new = [text for text in dict.fromkeys(texts) if text not in self._readings]
        if self.semantic and new:
            phrases = []
            for text in new:
                tokens = self.spelled(tokenize(text))
                taken = {j for m in self._word_mentions(tokens) for j in range(m.start, m.end)}
                phrases += [" ".join(tokens[a:b]) for a, b in residual_grams(tokens, taken)]
            self.encoder.encode(phrases[:PHRASE_CACHE])
        for text in new:
            self.read(text)

    def read(self, text: str) -> Reading:
        """What one message says (cached per string, bounded)."""
        if text in self._readings:
            self._readings.move_to_end(text)
            return self._readings[text]
        tokens = self.spelled(tokenize(text))
        mentions = self.mentions(tokens)
        negated = negated_mentions(tokens, [(m.start, m.end) for m in mentions])
        reading = Reading(mentions=mentions)
        # who a garment's kind implies ("a blouse") gives way to whom the shopper names ("for my niece")
        named = {name for m in mentions if m.how != "lexicon" for name in m.wanted if self.kinds[name] == "gender"}
        for index, mention in enumerate(mentions):
            if index in negated:
                for name, values in mention.ruled.items():
                    reading.ruled_out.setdefault(name, set()).update(values)
                continue
            compared = _after_than(tokens, mention.start)
            for name, credits in mention.wanted.items():
                if mention.how == "lexicon" and name in named:
                    continue
                if compared and name in self.colours:  # "darker than this purple": purple is where it starts
                    reading.compared[name] = max(credits, key=credits.__getitem__)
                    continue
                merged = reading.wanted.setdefault(name, {})
                for value, credit in credits.items():
                    merged[value] = max(merged.get(value, 0.0), credit)
                reading.said[name] = mention.words if name not in reading.said else \
                    f"{reading.said[name]} or {mention.words}"
        for name, values in reading.ruled_out.items():  # "red, not pink" keeps red; a ruled-out shade drops
            if name in reading.wanted:
                reading.wanted[name] = {v: c for v, c in reading.wanted[name].items() if v not in values}
                if not reading.wanted[name]:
                    del reading.wanted[name]
        taken = {j for m in mentions for j in range(m.start, m.end)}
        reading.relative = [RELATIVE_WORDS[t] for i, t in enumerate(tokens) if t in RELATIVE_WORDS and i not in taken]
        reading.words = list(dict.fromkeys(
            t for i, t in enumerate(tokens) if i not in taken and t not in PUNCTUATION and t not in STOP_WORDS
            and t not in CUE_WORDS and t not in RELATIVE_WORDS and len(t) > 1))
        self._readings[text] = reading
        while len(self._readings) > self.reading_cache:
            self._readings.popitem(last=False)
        return reading

    def _shown_value(self, shown, name: str) -> str | None:
        if shown is None:
            return None
        if isinstance(shown, int):
            return self.rows[shown].get(name) if self.rows is not None and 0 <= shown < len(self.rows) else None
        return getattr(shown, "attributes", {}).get(name)

    def understand(self, state) -> Understanding:
        """The dialog so far: later turns replace an attribute's wanted values; ruled-out values accumulate
        (and a value asked for again is no longer ruled out); "darker"/"lighter" move from the shown colour."""
        return deque(self.understandings(state), maxlen=1).pop() if state.turns else Understanding()

    def understandings(self, state) -> Iterator[Understanding]:
        """The understanding after each turn of the dialog, in order (each a new object)."""
        result = Understanding()
        for turn in state.turns:
            reading = self.read(turn.feedback)
            wanted = dict(reading.wanted)
            said = dict(reading.said)
            for direction in reading.relative:
                for name, sense in self.colours.items():
                    reference = reading.compared.get(name) or self._shown_value(turn.shown, name) or next(
                        iter(result.best().get(name, "").split(" or ")), None)
                    if not reference or name in wanted:
                        continue
                    credits = sense.relative(reference, direction)
                    if name in reading.compared:  # a darker purple may be labelled purple
                        credits[reference] = max(credits.get(reference, 0.0), COMPARED_CREDIT)
                    if credits:
                        wanted[name] = credits
                        said[name] = f"{direction} than {reference.lower()}"
            for name, values in reading.ruled_out.items():
                result.ruled_out.setdefault(name, set()).update(values)
                if name in result.wanted:
                    result.wanted[name] = {v: c for v, c in result.wanted[name].items() if v not in values}
                    if not result.wanted[name]:
                        del result.wanted[name]
                        result.said.pop(name, None)
            for name, credits in wanted.items():
                result.wanted[name] = dict(credits)
                result.said[name] = said.get(name, "")
                if name in result.ruled_out:
                    result.ruled_out[name] -= {v for v, c in credits.items() if c >= 1.0}
                    if not result.ruled_out[name]:
                        del result.ruled_out[name]
            yield result
            result = Understanding({n: dict(c) for n, c in result.wanted.items()},
                                   {n: set(v) for n, v in result.ruled_out.items()}, dict(result.said))

    def constraints(self, state) -> tuple[dict[str, dict[str, float]], dict[str, set[str]]]:
        """(wanted value -> credit per attribute, ruled-out values per attribute) over the whole dialog."""
        understanding = self.understand(state)
        return understanding.wanted, understanding.ruled_out



def phrase_bank_scores(reader: SemanticReader, bank: Sequence[Sequence]) -> dict[str, float]:
    """Precision and recall of a reader on phrases [text, wanted {attribute: "A|B"}, ruled out {attribute: "A|B"}].

    A wanted facet is found when one of its acceptable values gets full credit; a ruled-out facet when one of its
    values is ruled out. Precision counts every attribute the reader wanted or ruled out (coarser category
    attributes of a found kind excepted) against the expected ones.
    """
    found = expected = claimed = right = 0
    for text, wanted, ruled in bank:
        reading = reader.read(text)
        for name, accepted in wanted.items():
            expected += 1
            found += any(reading.wanted.get(name, {}).get(v, 0.0) >= 1.0 for v in accepted.split("|"))
        for name, accepted in ruled.items():
            expected += 1
            found += any(v in reading.ruled_out.get(name, set()) for v in accepted.split("|"))
        coarse = {n for n in reader.kinds if reader.kinds[n] == "category" and n not in wanted} \
            if any(reader.kinds.get(n) == "category" for n in wanted) else set()
        for name, credits in reading.wanted.items():
            if name in coarse:
                continue
            claimed += 1
            right += name in wanted and any(credits.get(v, 0.0) >= 1.0 for v in wanted[name].split("|"))
        for name, values in reading.ruled_out.items():
            claimed += 1
            right += name in ruled and bool(values & set(ruled[name].split("|")))
    return {"precision": right / max(claimed, 1), "recall": found / max(expected, 1), "phrases": len(bank)}
