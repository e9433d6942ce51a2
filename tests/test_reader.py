"""The semantic feedback reader: phrase banks (dev and held-aside), colour sense, negation scope, dialogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.core.colours import ColourSense, colour_lab, nearest_family
from assistant.core.dialog import DialogState, Turn
from assistant.core.messages import format_understood
from assistant.core.reader import COMPARED_CREDIT, SemanticReader, phrase_bank_scores

DATA = Path(__file__).parent / "data"
FPI = json.loads((DATA / "fpi_vocabulary.json").read_text())["vocabulary"]
BANKS = json.loads((DATA / "reader_phrases.json").read_text())
OCCASIONS = json.loads((DATA / "occasion_phrases.json").read_text())
DEMO = {"garment": ["dress", "jacket", "shirt", "shorts", "skirt", "sweater", "t-shirt", "trousers"],
        "colour": ["black", "blue", "brown", "green", "grey", "navy", "orange", "pink", "purple", "red", "white",
                   "yellow"],
        "pattern": ["checks", "dots", "floral", "solid", "stripes"], "sleeve": ["long", "short", "sleeveless"],
        "length": ["cropped", "full", "knee", "maxi", "mini"], "fit": ["loose", "regular", "slim"],
        "gender": ["men", "unisex", "women"]}


@pytest.fixture(scope="module")
def fpi() -> SemanticReader:
    return SemanticReader(FPI)


def test_held_aside_phrases_meet_the_floors(fpi: SemanticReader) -> None:
    # measured when the held-aside bank was first run (never tuned on): precision 0.884, recall 0.987
    scores = phrase_bank_scores(fpi, BANKS["held_aside"])
    assert scores["phrases"] == 40
    assert scores["recall"] >= 0.95 and scores["precision"] >= 0.85


def occasions_read(reader: SemanticReader, bank: dict[str, list[str]]) -> float:
    """The share of the bank's phrases read as wanting their occasion (usage value) at full credit."""
    hits = [reader.read(text).wanted.get("usage", {}).get(usage, 0.0) >= 0.99 for usage, texts in bank.items()
            for text in texts]
    return sum(hits) / len(hits)


def test_a_phrase_in_an_occasions_slot_reads_as_an_occasion(fpi: SemanticReader) -> None:
    # measured: held-aside 31/41 (without the slot reading 14/41), dev 34/56 (16/56); 1 of 30 non-occasions
    # ("a bra for everyday comfort": the lexicon's "everyday") reads as one, with or without the slot
    assert occasions_read(fpi, OCCASIONS["held_aside"]) >= 0.65
    assert occasions_read(fpi, OCCASIONS["dev"]) >= 0.55
    assert sum(bool(fpi.read(text).wanted.get("usage")) for text in OCCASIONS["not_occasions"]) <= 2
    assert not fpi.read("a bag to carry my books").wanted.get("usage")  # "to" before a verb is no occasion's slot
    assert not fpi.read("a scarf for tropical weather").wanted.get("usage")  # a season in the slot is no occasion
    assert fpi.read("a gift for my gran").wanted == {"gender": {"Women": 1.0, "Unisex": 0.8}}
    assert not fpi.read("can we look at crewneck sweats").wanted.get("usage")


def test_dev_phrases(fpi: SemanticReader) -> None:
    scores = phrase_bank_scores(fpi, BANKS["dev"])
    assert scores["recall"] >= 0.97 and scores["precision"] >= 0.9


def test_the_exact_word_parser_reads_label_words_only(fpi: SemanticReader) -> None:
    # the keyword baseline's parser, unchanged: no synonyms, no colour sense
    assert fpi.parser.parse("maroon sneakers").asserted == {"baseColour": "Maroon"}
    assert fpi.parser.parse("a scarlet dress").asserted == {"articleType": "Dresses", "subCategory": "Dress"}


def test_colour_words_map_to_the_nearest_labels_in_cielab() -> None:
    sense = ColourSense(FPI["baseColour"])
    assert max(sense.wanted("scarlet"), key=sense.wanted("scarlet").get) == "Red"
    assert set(list(sense.wanted("lilac"))[:2]) == {"Mauve", "Lavender"}
    assert max(sense.wanted("wine"), key=sense.wanted("wine").get) in {"Maroon", "Burgundy"}
    assert max(sense.wanted("emerald"), key=sense.wanted("emerald").get) == "Green"
    assert sense.wanted("dark green").keys() <= {v for v in FPI["baseColour"] if "green" in sense.labels[v].families}
    assert {"Blue", "Navy Blue", "Turquoise Blue"} <= sense.ruled_out("blue")
    assert "Black" not in sense.ruled_out("blue")
    assert sense.wanted("blue")["Blue"] == 1.0 and 0 < sense.wanted("blue")["Navy Blue"] < 1.0
    assert colour_lab("denim") is None and colour_lab("sky blue") is not None


def test_darker_and_lighter_move_along_lightness() -> None:
    sense = ColourSense(FPI["baseColour"])
    darker = sense.relative("Blue", "darker")
    assert "Navy Blue" in darker and "Turquoise Blue" not in darker
    assert "Turquoise Blue" in sense.relative("Blue", "lighter") or "Steel" in sense.relative("Blue", "lighter")
    reader = SemanticReader(FPI, rows=[{"baseColour": "Blue", "articleType": "Shirts"}])
    understanding = reader.understand(DialogState([Turn(None, "a blue shirt"), Turn(0, "a bit darker")]))
    assert "Navy Blue" in understanding.wanted["baseColour"] and "Blue" not in understanding.wanted["baseColour"]


@pytest.mark.parametrize(("text", "direction", "start"), [
    ("a darker shade than this purple", "darker", "Purple"),
    ("lighter than the grey one please", "lighter", "Grey"),
    ("something a bit brighter than that pink", "brighter", "Pink"),
])
def test_a_colour_after_than_is_where_a_relative_move_starts(fpi: SemanticReader, text: str, direction: str,
                                                             start: str) -> None:
    """The colour compared with is where the move starts (itself at half credit), and a 'shade' of colour is no pair
    of shades (sunglasses)."""
    reading = fpi.read(text)
    assert reading.relative == [direction] and reading.compared == {"baseColour": start}
    assert "baseColour" not in reading.wanted and "articleType" not in reading.wanted
    reader = SemanticReader(FPI, rows=[{"baseColour": "Red", "articleType": "Tshirts"}])
    wanted = reader.understand(DialogState([Turn(None, "a t-shirt"), Turn(0, text)])).wanted["baseColour"]
    moved = ColourSense(FPI["baseColour"]).relative(start, direction)
    assert wanted[start] == COMPARED_CREDIT and set(wanted) == {*moved, start}  # a shade of it still half fits
    assert fpi.read("more red than this").wanted["baseColour"]["Red"] == 1.0  # the colour before 'than' is wanted
    assert fpi.read("cool shades for the beach").wanted["articleType"] == {"Sunglasses": 1.0}


@pytest.mark.parametrize(("text", "ruled", "kept"), [
    ("not red or pink", {"Red", "Pink"}, set()),
    ("no red, pink or orange, a blue top", {"Red", "Pink", "Orange"}, {"Blue"}),
    ("anything but black", {"Black"}, set()),
    ("other than white", {"White"}, set()),
    ("instead of grey, green", {"Grey"}, {"Green"}),
    ("yellow is not for me", {"Yellow"}, set()),
    ("I don't want red but pink is fine", {"Red"}, {"Pink"}),
    ("no more brown", {"Brown"}, set()),
    ("avoid purple and orange", {"Purple", "Orange"}, set()),
    ("a shirt that isn't blue, in white", {"Blue"}, {"White"}),
    ("never olive; maybe teal", {"Olive"}, {"Teal"}),
])
def test_negation_scope(fpi: SemanticReader, text: str, ruled: set[str], kept: set[str]) -> None:
    reading = fpi.read(text)
    assert ruled <= reading.ruled_out.get("baseColour", set())
    assert kept <= {v for v, c in reading.wanted.get("baseColour", {}).items() if c >= 1.0}
    assert not kept & reading.ruled_out.get("baseColour", set())


def test_any_catalog_names_and_values() -> None:
    reader = SemanticReader(DEMO, semantic=False)
    reading = reader.read("a cardigan for my girlfriend, not navy, no stripes, fitted")
    assert reading.wanted["garment"] == {"sweater": 1.0}
    assert reading.wanted["gender"]["women"] == 1.0
    assert reading.wanted["fit"] == {"slim": 1.0}
    assert reading.ruled_out == {"colour": {"navy"}, "pattern": {"stripes"}}
    assert max(reader.read("a scarlet polo").wanted["colour"], key=reader.read("a scarlet polo").wanted["colour"].get) \
        == "red"


def test_later_turns_override_and_the_understood_line_shows_what_is_ruled_out(fpi: SemanticReader) -> None:
    state = DialogState([Turn(None, "a red dress"), Turn(None, "not red, something in green"),
                         Turn(None, "for my niece")])
    understanding = fpi.understand(state)
    assert understanding.best()["baseColour"] == "Green" and understanding.best()["gender"] == "Girls"
    assert "Red" in understanding.ruled_out["baseColour"]
    line = format_understood({**understanding.best(), "not": "Red, Rust"})
    assert "baseColour: Green" in line and "not red, rust" in line
    back = fpi.understand(DialogState([Turn(None, "not red"), Turn(None, "actually red is fine")]))
    assert back.best()["baseColour"] == "Red" and "Red" not in back.ruled_out.get("baseColour", set())


def test_a_kind_made_for_women_implies_who_it_is_for_until_the_shopper_says(fpi: SemanticReader) -> None:
    assert fpi.read("a lehenga").wanted["gender"].keys() >= {"Women", "Girls"}
    assert fpi.read("a lehenga for my niece").wanted["gender"] == {"Girls": 1.0}
    assert "gender" not in fpi.read("no lehengas please").ruled_out
    assert fpi.read("a satchel").wanted == {"articleType": {"Handbags": 1.0}}  # a bag, not a wallet


def test_a_colour_word_credits_every_shade_of_its_own_family() -> None:
    sense = ColourSense(FPI["baseColour"])
    for word in ("mint", "tangerine", "emerald", "wine"):
        credits = sense.wanted(word)
        family = nearest_family(colour_lab(word))
        members = [v for v in sense.family_members(family) if sense.labels[v].lab is not None]
        assert members and all(credits.get(v, 0.0) >= 0.1 for v in members), (word, family)
    mint = sense.wanted("mint")  # other greens before the light neutrals near it
    assert min(mint[v] for v in ("Green", "Lime Green")) > max(mint.get(v, 0.0) for v in ("Cream", "Beige"))


def test_every_colour_label_joins_the_family_the_colour_survey_files_it_under() -> None:
    sense = ColourSense(FPI["baseColour"])
    expected = {"Burgundy": "red", "Maroon": "red", "Olive": "green", "Tan": "brown", "Khaki": "brown",
                "Charcoal": "grey", "Mustard": "yellow", "Navy Blue": "blue"}
    for label, family in expected.items():
        assert sense.labels[label].families == {family}, label
    assert all(label.families for label in sense.labels.values() if label.lab is not None)
    for word, family in (("chestnut", "brown"), ("mocha", "brown"), ("claret", "red"), ("aubergine", "purple"),
                         ("pistachio", "green"), ("periwinkle", "blue")):
        assert nearest_family(colour_lab(word)) == family, word
    assert {"Maroon", "Burgundy", "Red", "Rust"} <= sense.ruled_out("red")  # "not red" takes the dark reds too


def test_each_turns_understanding_and_reading_many_at_once(fpi: SemanticReader) -> None:
    state = DialogState([Turn(None, "a red dress"), Turn(None, "not red, something in green"),
                         Turn(None, "for my niece")])
    each = list(fpi.understandings(state))
    assert len(each) == 3 and each[0].best()["baseColour"] == "Red" and "gender" not in each[1].best()
    assert each[1].best()["baseColour"] == "Green" and "Red" in each[1].ruled_out["baseColour"]
    assert each[-1] == fpi.understand(state) and each[0] is not each[1]
    texts = ["a jumper for chilly evenings", "kicks for my nephew, not white", "something for a sangeet",
             "a lilac top, nothing sleeveless"]
    batched = SemanticReader(FPI, encoder=fpi.encoder)
    batched.read_all(texts + texts)
    one_by_one = SemanticReader(FPI, encoder=fpi.encoder)
    for text in texts:
        assert batched.read(text) == one_by_one.read(text)


@pytest.mark.parametrize(("typed", "value"), [("a pair of jeanss", ("articleType", "Jeans")),
                                              ("trowsers for men", ("articleType", "Trousers")),
                                              ("a sweatshrit", ("articleType", "Sweatshirts")),
                                              ("a burgandy top", ("baseColour", "Burgundy")),
                                              ("wrist watchs", ("articleType", "Watches"))])
def test_misspelt_shop_words_are_read_as_meant(fpi: SemanticReader, typed: str, value: tuple[str, str]) -> None:
    name, wanted = value
    assert fpi.read(typed).wanted.get(name, {}).get(wanted) == 1.0, fpi.read(typed).wanted


def test_english_words_and_short_words_are_never_corrected(fpi: SemanticReader) -> None:
    # English words (MiniLM's vocabulary) stay; "tope" is too short to correct safely; a word more than an edit
    # or two from every shop word stays as typed
    kept = ["comfy", "printed", "leather", "showers", "tope", "lippies"]
    assert fpi.spelled([*kept, "sneekers"]) == [*kept, "sneakers"]
    assert SemanticReader(FPI, semantic=False).spelled(["sunglases"]) == ["sunglases"]  # no dictionary: no guess
