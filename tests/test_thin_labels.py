"""Thin-label mode: blanked labels and colour-free titles in the ranked catalog, the shopper on the full one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.cli import main
from assistant.core.catalog import Catalog, Item, thin_labels
from assistant.core.loaders import load_catalog
from retriever.baselines import KeywordRanker
from retriever.evaluate import evaluate
from simulator.template_user import TemplateUser


def test_thin_labels_blanks_labels_and_colour_words_but_keeps_rows() -> None:
    catalog = Catalog([
        Item("1", None, "Reebok Silver-Black Laptop Backpack", "Backpacks",
             {"baseColour": "Silver", "season": "Fall", "articleType": "Backpacks"}),
        Item("2", None, "Nike Men Navy Blue / Black Tee", "Tshirts",
             {"baseColour": "Navy Blue", "season": "Summer", "articleType": "Tshirts"}),
        Item("3", None, "Lakme Cream Eye Cream", "Eye Cream", {"baseColour": "Cream", "articleType": "Eye Cream"}),
        Item("4", None, "Black", "Tshirts", {"baseColour": "Black", "articleType": "Tshirts"}),
    ])
    thin = thin_labels(catalog, ["baseColour", "season"])
    assert thin.ids == catalog.ids and len(thin) == 4
    assert [item.title for item in thin] == ["Reebok Laptop Backpack", "Nike Men Tee",
                                             "Lakme Cream Eye Cream",  # a kept label's word stays
                                             "Tshirts"]  # nothing left: the category stands in
    assert [item.attributes for item in thin] == [{"articleType": "Backpacks"}, {"articleType": "Tshirts"},
                                                  {"articleType": "Eye Cream"}, {"articleType": "Tshirts"}]
    assert catalog["2"].attributes["baseColour"] == "Navy Blue"  # the original is untouched
    only_season = thin_labels(catalog, ["season"])
    assert [item.title for item in only_season] == [item.title for item in catalog]  # no colour label thinned
    with pytest.raises(ValueError, match="has no attribute colour to thin"):
        thin_labels(catalog, ["colour"])


def test_the_thinned_demo_catalog_has_no_colour_left_to_search() -> None:
    full = load_catalog("demo:200")
    thin = thin_labels(full, ["colour"])
    colours = {value for item in full for value in [item.attributes["colour"]]}
    assert "colour" not in thin.vocabulary()
    assert not any(colour in item.title.lower().split() for item in thin for colour in colours)
    keyword_full, keyword_thin = KeywordRanker(full), KeywordRanker(thin)
    assert "red" in keyword_full.index.vocab_dict and "red" not in keyword_thin.index.vocab_dict


class RecordingUser:
    """The template shopper, keeping every target it was asked about."""

    def __init__(self, catalog: Catalog) -> None:
        self.template = TemplateUser(catalog, seed=0)
        self.targets: list[Item] = []

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        self.targets.append(target)
        return self.template.respond(shown, target, turn)


def test_the_shopper_answers_from_the_full_catalog_while_systems_rank_the_thin_one() -> None:
    full = load_catalog("demo:200")
    thin = thin_labels(full, ["colour"])
    user = RecordingUser(full)
    result = evaluate({"keyword": KeywordRanker(thin)}, thin, user, turns=2, targets=20, seed=3, truth=full)
    assert result["targets"] == 20 and user.targets
    assert all("colour" in target.attributes for target in user.targets)
    with pytest.raises(ValueError, match="in its order"):
        evaluate({"keyword": KeywordRanker(thin)}, thin, user, turns=1, targets=5, truth=full.subset(full.ids[::-1]))


def test_evaluate_thin_labels_command(demo_model_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "thin.json", tmp_path / "thin.png"
    assert main(["evaluate", "--model", str(demo_model_dir), "--catalog", "demo:300", "--targets", "30",
                 "--turns", "2", "--thin-labels", "colour,pattern", "--json", str(out), "--plot", str(png)]) == 0
    result = json.loads(out.read_text())
    assert result["thin_labels"] == ["colour", "pattern"] and result["catalog_size"] == 300
    assert {"model", "keyword", "random"} <= set(result["systems"])
    assert png.read_bytes().startswith(b"\x89PNG")
    assert main(["evaluate", "--model", str(demo_model_dir), "--catalog", "demo:300", "--thin-labels", "hue"]) == 2
