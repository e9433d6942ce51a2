"""Request benchmark: the shipped requests against the real catalog, the scoring by hand, errors, the CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from assistant.cli import main
from assistant.core.catalog import FPI_ATTRIBUTES, FPI_COLUMNS, Catalog, Item
from assistant.core.constraints import FeedbackReader
from assistant.core.dialog import DialogState, Turn
from assistant.core.feedback import AttributeParser
from retriever.baselines import KeywordRanker
from retriever.requests import FPI_REQUESTS, HALVES, KINDS, evaluate_requests, half_of, load_requests

SHOPPER_PHRASES = ("some kicks to wear with jeans", "a scarlet dress", "a top, anything but red", "not blue",
                   "an outfit for a job interview", "a watch for my father-in-law", "shoes, no heels")


def styles_rows(fpi_root: Path) -> list[dict[str, str]]:
    """Every row of styles.csv as written (the loader's rejoin of unquoted commas in titles included)."""
    with open(fpi_root / "styles.csv", encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [row[:9] + [",".join(row[9:])] if len(row) > len(FPI_COLUMNS) else row for row in reader]
    return [dict(zip(FPI_COLUMNS, (v.strip() for v in row), strict=True)) for row in rows if len(row) == 10]


def test_the_shipped_requests_cover_every_kind_in_both_halves() -> None:
    requests = load_requests(FPI_REQUESTS)
    assert len(requests) >= 150
    assert len({r.text.lower() for r in requests}) == len(requests)
    kinds = Counter(r.kind for r in requests)
    assert set(kinds) == set(KINDS) and min(kinds.values()) >= 30
    halves = Counter((r.kind, r.half) for r in requests)
    assert all(halves[(kind, half)] >= 10 for kind in KINDS for half in HALVES)
    assert all(r.half == half_of(r.id) for r in requests)
    article_types = {value for r in requests for value in r.must.get("articleType", ())}
    assert len(article_types) >= 50  # many kinds of item, not a few
    held_out = load_requests(FPI_REQUESTS, half="held-out")
    assert {r.id for r in held_out} == {r.id for r in requests if r.half == "held-out"}


def test_every_request_is_possible_on_the_held_out_split_and_no_exact_match_is_absent(fpi_root: Path,
                                                                                       real_catalog: Catalog) -> None:
    requests = load_requests(FPI_REQUESTS)
    rows = styles_rows(fpi_root)
    values = {name: {row[name] for row in rows} for name in FPI_ATTRIBUTES}
    for request in requests:
        for labels in (request.must, request.must_not, request.absent):
            for name, accepted in labels.items():
                assert set(accepted) <= values[name], f"{request.id}: {name} {set(accepted) - values[name]}"
    test = real_catalog.split("test")
    for request in requests:
        fitting = sum(request.fits(item.attributes) for item in test)
        assert fitting >= 12, f"{request.id} {request.text!r}: only {fitting} fitting items in the test split"
        if request.kind == "no_exact_match":
            present = [row["id"] for row in rows if all(row[n] in v for n, v in request.absent.items())]
            assert not present, f"{request.id} {request.text!r}: styles.csv has {present[:5]}"


def catalog_of(*labels: dict[str, str]) -> Catalog:
    return Catalog([Item(str(i), None, f"item {i}", a.get("articleType", "x"), a) for i, a in enumerate(labels)])


def write_requests(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps({"half": half_of(r["id"]), **r}) + "\n" for r in records), encoding="utf-8")
    return path


def test_precision_negation_and_kind_kept_by_hand(tmp_path: Path) -> None:
    shirt_red = {"articleType": "Shirts", "baseColour": "Red", "gender": "Men"}
    shirt_blue = {"articleType": "Shirts", "baseColour": "Blue", "gender": "Men"}
    shirt_navy = {"articleType": "Shirts", "baseColour": "Navy Blue", "gender": "Women"}
    shoe_teal = {"articleType": "Shoes", "baseColour": "Teal", "gender": "Men"}
    truth = catalog_of(shirt_red, shirt_blue, shirt_navy, shoe_teal)
    path = write_requests(
        tmp_path / "r.jsonl",
        {"id": "a", "kind": "negation", "text": "a shirt, not blue", "must": {"articleType": "Shirts"},
         "must_not": {"baseColour": ["Blue", "Navy Blue"]}},
        {"id": "b", "kind": "no_exact_match", "text": "a teal shirt for men",
         "must": {"articleType": "Shirts", "gender": "Men"},
         "absent": {"articleType": "Shirts", "baseColour": "Teal"}})
    requests = load_requests(path)
    pages = {"a": ["0", "1", "2", "3"], "b": ["3", "2", "0"]}  # item ids, best first
    by_text = {r.text: pages[r.id] for r in requests}
    result = evaluate_requests({"fixed": lambda text: [truth[i] for i in by_text[text]]}, truth, requests,
                               page_size=4)
    rows = {row["id"]: row["systems"]["fixed"] for row in result["per_request"]}
    assert rows["a"] == {"precision": 0.25, "ruled_out": 2, "kind_kept": 0.75, "shown": 4}
    assert rows["b"] == {"precision": 0.25, "ruled_out": 0, "kind_kept": 0.5, "shown": 3}  # a short page loses
    assert {row["id"]: row["possible"] for row in result["per_request"]} == {"a": 1, "b": 2}
    summary = result["halves"]["all"] if "all" in result["halves"] else next(iter(result["halves"].values()))
    fixed = summary["systems"]["fixed"]
    assert fixed["precision@4"] == 0.25 and fixed["negation_no_ruled_out"] == 0.0
    assert fixed["no_exact_match_kind_kept"] == 0.5 and fixed["by_kind"]["synonym"] is None
    assert summary["requests_below_page"] == 2


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "r.jsonl:1: not JSON"),
    ('{"id": "x", "kind": "synonym", "must": {"articleType": "Tops"}}', "missing `text`"),
    ('{"id": "x", "kind": "mood", "text": "t", "must": {"a": "b"}}', "kind 'mood' is not one of"),
    ('{"id": "x", "kind": "negation", "text": "t", "must": {"a": "b"}}', "needs `must_not`"),
    ('{"id": "x", "kind": "synonym", "text": "t", "must": {"a": []}}', "`must.a` must be a value or a non-empty"),
    (f'{{"id": "x", "half": "{"dev" if half_of("x") == "held-out" else "held-out"}", "kind": "synonym", '
     '"text": "t", "must": {"a": "b"}}', "breaks the fixed rule"),
])
def test_bad_requests_files_say_which_line_and_why(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_requests(path)


def test_a_request_naming_an_attribute_the_catalog_lacks_is_an_error(tmp_path: Path) -> None:
    truth = catalog_of({"articleType": "Shirts"})
    requests = load_requests(write_requests(tmp_path / "r.jsonl", {"id": "a", "kind": "synonym", "text": "t",
                                                                   "must": {"articleTyp": "Shirts"}}))
    with pytest.raises(ValueError, match="no attribute articleTyp"):
        evaluate_requests({"none": lambda text: []}, truth, requests)


def test_the_keyword_baseline_reads_with_todays_exact_word_parser(real_catalog: Catalog) -> None:
    keyword = KeywordRanker(real_catalog)
    assert type(keyword.reader) is FeedbackReader and type(keyword.reader.parser) is AttributeParser
    exact = AttributeParser(real_catalog.vocabulary())
    for phrase in SHOPPER_PHRASES:
        assert keyword.reader.parse(phrase) == exact.parse(phrase), phrase
    terms = keyword.query_terms(DialogState([Turn(None, "a scarlet dress")]))
    assert "scarlet" in terms and "red" not in terms  # a search box matches the words it is given


def test_the_model_is_scored_on_the_apps_first_page(demo_assistant, tmp_path: Path) -> None:
    requests = load_requests(write_requests(
        tmp_path / "r.jsonl",
        {"id": "r1", "kind": "colour_name", "text": "a red dress", "must": {"garment": "dress", "colour": "red"}},
        {"id": "r2", "kind": "negation", "text": "a skirt, not black", "must": {"garment": "skirt"},
         "must_not": {"colour": "black"}}))
    pages = demo_assistant.first_pages()
    assert {"model", "keyword", "random"} <= set(pages)
    for request in requests:
        assert [i.id for i in pages["model"](request.text)] == [i.id for i in
                                                                demo_assistant.dialog().start(text=request.text)]
    result = demo_assistant.evaluate_requests(requests)
    rows = {row["id"]: row for row in result["per_request"]}
    possible = rows["r1"]["possible"]
    assert 0 < possible < 12  # a short supply: the page can hold only that many fitting items
    for name in ("model", "keyword"):  # both read "red" and "dress"
        assert rows["r1"]["systems"][name]["precision"] == round(possible / 12, 4)
    assert rows["r2"]["possible"] >= 12 and rows["r2"]["systems"]["model"]["precision"] == 1.0  # black ruled out
    assert rows["r1"]["systems"]["random"]["precision"] < 0.5


def test_evaluate_requests_command(demo_model_dir: Path, tmp_path: Path, capsys) -> None:
    path = write_requests(tmp_path / "r.jsonl",
                          *[{"id": f"r{i}", "kind": "person", "text": f"a {g} for women", "must": {"garment": g,
                                                                                                  "gender": "women"}}
                            for i, g in enumerate(["dress", "skirt", "shirt", "sweater"])])
    out = tmp_path / "result.json"
    assert main(["evaluate-requests", "--model", str(demo_model_dir), "--catalog", "demo:300", "--requests",
                 str(path), "--json", str(out), "--thin-labels", "colour"]) == 0
    result = json.loads(out.read_text())
    assert result["thin_labels"] == ["colour"] and result["requests_file"] == "r.jsonl"
    assert {"model", "keyword"} <= set(next(iter(result["halves"].values()))["systems"])
    assert "p@12" in capsys.readouterr().out
    assert main(["evaluate-requests", "--model", str(demo_model_dir), "--catalog", "demo:300"]) == 2
    assert "no shipped requests for a generic-jsonl catalog" in capsys.readouterr().err
