"""The template shopper and its caption parser, on the real catalog and hand-made items."""

from __future__ import annotations

import random
import re
import statistics
import time

import pytest

from assistant.core.catalog import Item
from assistant.core.feedback import AttributeParser, attribute_kind, tokenize
from simulator.pairs import PairSampler
from simulator.template_user import (
    IDENTICAL_REPLIES,
    JOINERS,
    OPENERS,
    REQUEST_OPENERS,
    TEMPLATES,
    TITLE_ONLY_REPLIES,
    TemplateUser,
)

PAIRS = 4000


def item(item_id: str, title: str = "", **attributes: str) -> Item:
    return Item(item_id, None, title or f"item {item_id}", attributes.get("articleType", "item"), attributes)


@pytest.fixture(scope="module")
def parser(real_catalog) -> AttributeParser:
    return AttributeParser(real_catalog.vocabulary())


@pytest.fixture(scope="module")
def pairs(real_catalog) -> list[tuple[Item, Item]]:
    """Similar pairs (same category, 1-2 attributes apart) and random ones, as training and dialogs meet them."""
    sampler, rng = PairSampler(real_catalog), random.Random(7)
    return [sampler.similar_pair(rng) if n % 2 else sampler.random_pair(rng) for n in range(PAIRS)]


def facet_groups(names) -> set[str]:
    """Attribute names as the facets a person names (articleType, subCategory, masterCategory are one)."""
    return {attribute_kind(name) if attribute_kind(name) != "generic" else name for name in names}


# ---- the parser ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_parser() -> AttributeParser:
    """Real attribute names and values next to the demo catalog's."""
    return AttributeParser({
        "gender": ["Men", "Women", "Unisex", "Boys"], "baseColour": ["Red", "Blue", "Navy Blue", "Skin", "Multi"],
        "articleType": ["Tshirts", "Shirts", "Sports Shoes", "Casual Shoes", "Watches", "Shorts", "Jeans",
                        "Perfume and Body Mist"],
        "subCategory": ["Watches", "Shoes", "Skin"], "usage": ["Sports", "Casual", "Home"], "masterCategory": ["Home"],
        "pattern": ["solid", "stripes", "dots", "checks", "floral"], "sleeve": ["short", "long", "sleeveless"],
        "length": ["mini", "knee", "maxi"], "neckline": ["round", "v-neck", "collar"],
    })


@pytest.mark.parametrize(("text", "asserted", "negated"), [
    ("is navy blue instead of blue", {"baseColour": "Navy Blue"}, {"baseColour": {"Blue"}}),
    ("Navy Blue, NOT red", {"baseColour": "Navy Blue"}, {"baseColour": {"Red"}}),
    ("i want a t-shirt instead of a shirt", {"articleType": "Tshirts"}, {"articleType": {"Shirts"}}),
    ("tees for women", {"articleType": "Tshirts", "gender": "Women"}, {}),
    ("a women's one, not men's", {"gender": "Women"}, {"gender": {"Men"}}),
    ("sports shoes, not casual shoes", {"articleType": "Sports Shoes"}, {"articleType": {"Casual Shoes"}}),
    ("something sporty", {"usage": "Sports"}, {}),
    ("no stripes", {}, {"pattern": {"stripes"}}),
    ("not striped, plain", {"pattern": "solid"}, {"pattern": {"stripes"}}),
    ("without the checks or dots but floral", {"pattern": "floral"}, {"pattern": {"checks", "dots"}}),
    ("i don't want it red, i want multicoloured", {"baseColour": "Multi"}, {"baseColour": {"Red"}}),
    ("a darker shade than this red", {}, {"baseColour": {"Red"}}),
    ("with short sleeves and a v-neck", {"sleeve": "short", "neckline": "v-neck"}, {}),
    ("shorts please", {"articleType": "Shorts"}, {}),
    ("knee-length instead of mini", {"length": "knee"}, {"length": {"mini"}}),
    ("perfume and body mist", {"articleType": "Perfume and Body Mist"}, {}),
    ("in skin colour", {"baseColour": "Skin"}, {}),
    ("with home usage", {"usage": "Home"}, {}),
    ("watches", {"articleType": "Watches", "subCategory": "Watches"}, {}),  # shared value: both
    ("less casual, more like jeans", {"articleType": "Jeans"}, {"usage": {"Casual"}}),
])
def test_parser_reads_values_and_negations(mixed_parser, text, asserted, negated) -> None:
    parsed = mixed_parser.parse(text)
    assert parsed.asserted == asserted
    assert parsed.negated == negated


def test_parser_keeps_other_content_words_and_summarises(mixed_parser) -> None:
    parsed = mixed_parser.parse("something by nike in red, not blue")
    assert parsed.words == ["nike"]
    assert parsed.summary() == "base colour red; not blue; also: nike"
    assert mixed_parser.parse("is it this one?").summary() == "nothing recognised"


def test_parser_reads_thousands_of_captions_a_second(real_catalog, parser, pairs) -> None:
    user = TemplateUser(real_catalog)
    captions = [user.respond(a, b, 0) for a, b in pairs[:2000]]
    start = time.perf_counter()
    parsed = [parser.parse(c) for c in captions]
    rate = len(captions) / (time.perf_counter() - start)
    print(f"parser: {rate:.0f} captions/s")
    assert sum(bool(p.asserted or p.negated) for p in parsed) > 0.9 * len(parsed)


# ---- the template shopper on the real catalog ---------------------------------------------------------------

WORD_OR_COMMA = re.compile(r"[a-z0-9]+(?:'[a-z]*)?|,")
WORD_ALIASES = {"sporty": "sports", "multicoloured": "multi"}  # the two adjectives the shopper makes of labels
CONTRAST_CUES = (("not",), ("no",), ("without",), ("instead", "of"), ("rather", "than"), ("than",), ("less",))


def judged_words(text: str) -> tuple[str, ...]:
    """Lower-case words without possessives or plural endings ("men's" -> men, "t-shirts" -> tshirt), and commas."""
    stems = []
    for word in WORD_OR_COMMA.findall(text.lower().replace("-", "")):
        word = WORD_ALIASES.get(word.split("'")[0], word.split("'")[0])
        for ending, stem in (("ies", "y"), ("sses", "ss"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ves", "f")):
            if word.endswith(ending):
                word = word[: -len(ending)] + stem
                break
        else:
            if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
                word = word[:-1]
        stems.append(word)
    return tuple(stems)


def item_labels(item: Item) -> set[tuple[str, ...]]:
    """The item's attribute values and multi-labels as judged words."""
    return {judged_words(label) for value in item.attributes.values()
            for label in {value, *value.split(",")} if label.strip()}


class LabelJudge:
    """Reads a caption against catalog labels, without the AttributeParser that filters the shopper's replies.

    A mention is the longest run of words spelling some catalog label; it is contrasted when a cue ("not",
    "instead of", "than", ...) precedes it in its clause (clauses end at a comma or "and").
    """

    def __init__(self, catalog) -> None:
        self.labels = set().union(*(item_labels(item) for item in catalog))
        self.longest = max(map(len, self.labels))

    def mentions(self, caption: str) -> list[tuple[tuple[str, ...], bool]]:
        """(label words, contrasted) for each label the caption names, in order."""
        words, found, position, contrasted = judged_words(caption), [], 0, False
        while position < len(words):
            span = next((n for n in range(min(self.longest, len(words) - position), 0, -1)
                         if words[position:position + n] in self.labels), 0)
            if span:
                found.append((words[position:position + span], contrasted))
                position += span
                continue
            if words[position] in (",", "and"):
                contrasted = False
            elif any(words[position:position + len(cue)] == cue for cue in CONTRAST_CUES):
                contrasted = True
            position += 1
        return found

    def untrue(self, caption: str, target: Item) -> list[str]:
        """What the caption says wrongly of the target: labels it asserts that neither the target's labels nor its
        title words hold, and labels of the target it contrasts away."""
        labels, title = item_labels(target), {(word,) for word in judged_words(target.title)}
        return [" ".join(words) for words, contrasted in self.mentions(caption)
                if (words in labels if contrasted else words not in labels | title)]


@pytest.fixture(scope="module")
def judge(real_catalog) -> LabelJudge:
    return LabelJudge(real_catalog)


def test_captions_never_assert_what_the_target_lacks(real_catalog, judge, pairs) -> None:
    user = TemplateUser(real_catalog, seed=3)
    captions = [user.respond(shown, target, turn % 5) for turn, (shown, target) in enumerate(pairs)]
    read = asserted = 0
    for (shown, target), caption in zip(pairs, captions, strict=True):
        assert judge.untrue(caption, target) == [], (caption, shown.attributes, target.attributes)
        mentions = judge.mentions(caption)
        read += bool(mentions)
        asserted += sum(not contrasted for _, contrasted in mentions)
    # the judge reads nearly every caption, and it can fail: the same captions are untrue of the shown items
    said_of_shown = sum(bool(judge.untrue(caption, shown)) for (shown, _), caption in zip(pairs, captions, strict=True))
    print(f"label judge: {read} of {len(pairs)} captions name a label, {asserted} labels asserted, all true of the "
          f"target; {said_of_shown} captions are untrue of the shown item")
    assert read > 0.95 * len(pairs) and asserted > len(pairs)
    assert said_of_shown > 0.5 * len(pairs)


def test_captions_name_what_differs(real_catalog, parser, pairs) -> None:
    user = TemplateUser(real_catalog, seed=3)
    changed = stated = budget = stated_in_budget = 0
    for turn, (shown, target) in enumerate(pairs):
        parsed = parser.parse(user.respond(shown, target, turn % 5))
        differing = [n for n, v in target.attributes.items() if shown.attributes.get(n) != v]
        pair_stated = sum(parsed.asserted.get(n) == target.attributes[n] for n in differing)
        changed, stated = changed + len(differing), stated + pair_stated
        budget += min(len(differing), user.max_facets)
        stated_in_budget += min(pair_stated, user.max_facets)
    recall, budget_recall = stated / changed, stated_in_budget / budget
    print(f"template user: recall {recall:.3f}, recall against the facet budget {budget_recall:.3f} "
          f"over {len(pairs)} pairs")
    assert recall > 0.5
    assert budget_recall > 0.8


TEMPLATE_WORDS = {w for text in [*[t for ts in TEMPLATES.values() for t in ts], *OPENERS, *JOINERS,
                                  *IDENTICAL_REPLIES, *TITLE_ONLY_REPLIES] for w in tokenize(text)}


def title_words_in(caption: str, shown: Item, target: Item, parser: AttributeParser) -> set[str]:
    """Words of the caption that come from the target's title (not the shown's, not attribute or template words)."""
    return (set(tokenize(caption)) & set(tokenize(target.title))) - set(tokenize(shown.title)) \
        - parser.vocabulary_tokens - TEMPLATE_WORDS


def test_at_most_max_facets_and_one_title_word(real_catalog, parser, pairs) -> None:
    for max_facets in (1, 2, 3):
        user = TemplateUser(real_catalog, seed=1, max_facets=max_facets)
        counts = []
        title_word_turns = 0
        lengths = []
        for turn, (shown, target) in enumerate(pairs[:1500]):
            caption = user.respond(shown, target, turn)
            parsed = parser.parse(caption)
            facets = facet_groups([*parsed.asserted, *parsed.negated])
            assert len(facets) <= max_facets, caption
            counts.append(len(facets))
            title_words = title_words_in(caption, shown, target, parser)
            assert len(title_words) <= 1, (caption, target.title)
            title_word_turns += bool(title_words)
            assert caption == caption.lower() and len(caption.split()) <= 10 + 6 * max_facets, caption
            lengths.append(len(caption.split()))
        print(f"max_facets {max_facets}: {statistics.mean(counts):.2f} facets, {statistics.mean(lengths):.1f} words, "
              f"a title word in {title_word_turns / 1500:.0%} of turns")
        assert max(counts) == max_facets
        assert 0.2 < title_word_turns / 1500 < 0.7


def test_title_word_budget(real_catalog, parser, pairs) -> None:
    for budget in (0, 2):
        user = TemplateUser(real_catalog, seed=1, title_words=budget)
        counts = [len(title_words_in(user.respond(a, b, n), a, b, parser)) for n, (a, b) in enumerate(pairs[:800])]
        assert max(counts) == budget


def test_identical_items_say_so(real_catalog) -> None:
    user = TemplateUser(real_catalog)
    shown = real_catalog.items[10]
    twin = Item("twin", None, shown.title, shown.category, dict(shown.attributes))
    for turn in range(5):
        assert user.respond(shown, shown, turn) in IDENTICAL_REPLIES
        assert user.respond(shown, twin, turn) in IDENTICAL_REPLIES
    other_title = Item("other", None, "Acme Men Blue Shirt", shown.category, dict(shown.attributes))
    assert user.respond(shown, other_title, 0) not in IDENTICAL_REPLIES


def test_replies_are_deterministic_and_independent_of_call_order(real_catalog, pairs) -> None:
    chosen = pairs[:300]
    user, twin, other = (TemplateUser(real_catalog, seed=seed) for seed in (5, 5, 6))
    forward = [user.respond(a, b, n) for n, (a, b) in enumerate(chosen)]
    backward = [twin.respond(a, b, n) for n, (a, b) in reversed(list(enumerate(chosen)))][::-1]
    assert forward == backward
    assert forward == [user.respond(a, b, n) for n, (a, b) in enumerate(chosen)]
    other_seed = [other.respond(a, b, n) for n, (a, b) in enumerate(chosen)]
    assert sum(x != y for x, y in zip(forward, other_seed, strict=True)) > 100


def test_describe_opens_with_a_faithful_request(real_catalog, parser, judge) -> None:
    user = TemplateUser(real_catalog, seed=2)
    rng = random.Random(0)
    facet_counts = []
    openers = set()
    for target in rng.sample(real_catalog.items, 800):
        request = user.describe(target)
        assert judge.untrue(request, target) == [], (request, target.attributes)
        parsed = parser.parse(request)
        assert parsed.asserted.get("articleType") == target.attributes["articleType"], request
        facet_counts.append(len(facet_groups(parsed.asserted)))
        assert request == request.lower()
        openers.add(next((o for o in REQUEST_OPENERS if o and request.startswith(o)), ""))
    assert openers == set(REQUEST_OPENERS)
    assert min(facet_counts) >= 1 and max(facet_counts) <= 3
    assert statistics.mean(facet_counts) > 2.0
    assert user.describe(real_catalog.items[0]) == TemplateUser(real_catalog, seed=2).describe(real_catalog.items[0])


# ---- wording on hand-made items ------------------------------------------------------------------------------

def test_one_difference_is_worded_many_ways_and_always_right() -> None:
    shown = item("1", "Acme Women Red Kurta", gender="Women", articleType="Kurtas", baseColour="Red")
    target = item("2", "Acme Women Green Kurta", gender="Women", articleType="Kurtas", baseColour="Green")
    user = TemplateUser()
    parser = AttributeParser({"gender": ["Women"], "articleType": ["Kurtas"], "baseColour": ["Red", "Green"]})
    captions = {user.respond(shown, target, turn) for turn in range(40)}
    captions |= {TemplateUser(seed=s).respond(shown, target, 0) for s in range(40)}
    assert len(captions) >= 10
    for caption in captions:
        assert parser.parse(caption).asserted == {"baseColour": "Green"}, caption
    assert any(parser.parse(c).negated == {"baseColour": {"Red"}} for c in captions)


@pytest.mark.parametrize(("attribute", "before", "after", "says", "never"), [
    ("colour", "white", "black", "darker", "lighter"),
    ("colour", "navy", "yellow", "lighter", "darker"),
    ("sleeve", "short", "long", "longer", "shorter"),
    ("length", "knee", "mini", "shorter", "longer"),
    ("fit", "slim", "loose", "looser", "tighter"),
])
def test_ordered_facets_get_true_comparatives(attribute, before, after, says, never) -> None:
    base = {"garment": "dress", "colour": "red", "sleeve": "short", "length": "knee", "fit": "regular"}
    shown = Item("a", None, "dress a", "dress", {**base, attribute: before})
    target = Item("b", None, "dress b", "dress", {**base, attribute: after})
    captions = [TemplateUser(seed=seed).respond(shown, target, 0) for seed in range(60)]
    assert any(says in c.split() for c in captions)
    assert not any(never in c.split() for c in captions)


def test_negations_name_the_shown_pattern_and_parse_as_negations() -> None:
    vocabulary = {"garment": ["shirt"], "pattern": ["solid", "stripes", "checks"], "colour": ["blue"]}
    parser = AttributeParser(vocabulary)
    shown = Item("a", None, "shirt a", "shirt", {"garment": "shirt", "pattern": "stripes", "colour": "blue"})
    target = Item("b", None, "shirt b", "shirt", {"garment": "shirt", "pattern": "solid", "colour": "blue"})
    captions = {TemplateUser(seed=seed).respond(shown, target, 0) for seed in range(60)}
    negating = [c for c in captions if parser.parse(c).negated == {"pattern": {"stripes"}}]
    assert any("no stripes" in c or "without the stripes" in c for c in negating)
    assert all(parser.parse(c).asserted in ({}, {"pattern": "solid"}) for c in captions)


def test_multi_word_values_and_unknown_attribute_names() -> None:
    shown = item("1", "Acme Men Blue Casual Shoes", gender="Men", articleType="Casual Shoes", baseColour="Blue",
                 heelHeight="flat")
    target = item("2", "Acme Men Navy Blue Sports Shoes", gender="Men", articleType="Sports Shoes",
                  baseColour="Navy Blue", heelHeight="high")
    vocabulary = {"gender": ["Men"], "articleType": ["Casual Shoes", "Sports Shoes"],
                  "baseColour": ["Blue", "Navy Blue"], "heelHeight": ["flat", "high"]}
    parser = AttributeParser(vocabulary)
    stated: set[str] = set()
    for seed in range(80):
        user = TemplateUser(seed=seed, max_facets=3)
        parsed = parser.parse(user.respond(shown, target, 0))
        assert all(target.attributes[n] == v for n, v in parsed.asserted.items())
        stated |= set(parsed.asserted)
    assert stated == {"articleType", "baseColour", "heelHeight"}
    generic = TemplateUser(max_facets=1)
    only_heel = item("3", shown.title, **{**shown.attributes, "heelHeight": "high"})
    assert all(parser.parse(generic.respond(shown, only_heel, t)).asserted == {"heelHeight": "high"}
               for t in range(10))


def test_title_word_only_when_labels_agree(real_catalog) -> None:
    user = TemplateUser(real_catalog, seed=0)
    shown = item("1", "Nike Men Black Running Shoes", gender="Men", baseColour="Black")
    target = item("2", "Puma Men Black Running Shoes", gender="Men", baseColour="Black")
    captions = {user.respond(shown, target, turn) for turn in range(10)}
    assert all("puma" in c.split() for c in captions)
    code_only = item("3", "Nike Men Black Running Shoes XZ123", gender="Men", baseColour="Black")
    assert user.respond(shown, code_only, 0) in TITLE_ONLY_REPLIES


def test_multi_label_tags_name_one_new_label() -> None:
    shown = Item("a", None, "dress a", "dress", {"category": "dress", "tags": "floral, red, short"})
    target = Item("b", None, "dress b", "dress", {"category": "dress", "tags": "blue, long, short"})
    parser = AttributeParser({"category": ["dress"], "tags": [shown.attributes["tags"], target.attributes["tags"]]})
    stated = set()
    for seed in range(30):
        parsed = parser.parse(TemplateUser(seed=seed).respond(shown, target, 0))
        assert set(parsed.asserted) == {"tags"} and parsed.asserted["tags"] in {"blue", "long"}
        assert parsed.negated.get("tags", set()) <= {"floral", "red"}
        stated.add(parsed.asserted["tags"])
    assert stated == {"blue", "long"}
    assert parser.parse(TemplateUser().describe(target)).asserted.get("tags") in {"blue", "long", "short"}


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_facets"):
        TemplateUser(max_facets=0)
    with pytest.raises(ValueError, match="title_words"):
        TemplateUser(title_words=-1)
