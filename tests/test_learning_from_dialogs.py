"""`train --dialogs` and `train --from MODEL_DIR`: logged human pairs reach simulator and retriever training."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from assistant.api import Assistant
from assistant.cli import main
from assistant.core.catalog import CaptionPair, Catalog, split_of
from assistant.core.dialog import DialogState, Turn, target_ranks
from assistant.core.loaders import load_catalog
from assistant.model_dir import MANIFEST_FILE
from assistant.pipeline import fine_tune, train
from retriever.model import DialogRetriever
from retriever.train import human_dialogs

# Made-up colour words, as a shop's own customers might have (no shopper, lexicon or encoder knows them), and
# frames unlike the template and paraphrase shoppers'.
SLANG = {"black": "voxish", "white": "glimmo", "blue": "trenzy", "grey": "dulko", "navy": "marrowy", "red": "zorbic",
         "green": "flimmer", "purple": "quazzle", "brown": "snurdy", "pink": "blippy", "yellow": "wazzle",
         "orange": "krumpo"}
FRAMES = ("{} vibes pls", "gimme it {}", "wanna {} version", "{} 4 me", "lol but {}")


def slang_pairs(catalog: Catalog, split: str, count: int, seed: int) -> list[CaptionPair]:
    """Pairs whose target is in `split`: a reference of another colour, and the target's colour in slang."""
    rng = random.Random(seed)
    targets = [item for item in catalog if split_of(item.id) == split]
    references = [item for item in catalog if split_of(item.id) == "train"]
    pairs = []
    for _ in range(count):
        target = rng.choice(targets)
        reference = rng.choice([r for r in references if r.attributes["colour"] != target.attributes["colour"]])
        caption = rng.choice(FRAMES).format(SLANG[target.attributes["colour"]])
        pairs.append(CaptionPair(reference.id, target.id, caption))
    return pairs


def write_export(path: Path, pairs: list[CaptionPair]) -> Path:
    """A file as `export-dialogs` writes it: pair lines, then a dialog line (which the trainers skip)."""
    lines = [json.dumps({"kind": "pair", "reference": p.reference, "target": p.target, "caption": p.caption,
                         "session": f"s{i}"}) for i, p in enumerate(pairs)]
    lines.append(json.dumps({"kind": "dialog", "session": "s0", "turns": [], "final_pick": None}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def median_rank(assistant: Assistant, pairs: list[CaptionPair]) -> float:
    """Median rank (1 = first) of each pair's target after one turn: the reference shown, the caption said."""
    states, targets = human_dialogs(assistant.catalog, pairs)
    scores = assistant.ranker.scores(states)
    ranks = target_ranks(scores, targets, [state.shown_rows() for state in states])
    return float(np.median(ranks))


def test_human_dialogs_are_one_turn_states_of_known_items() -> None:
    catalog = load_catalog("demo:40")
    a, b = catalog.items[0].id, catalog.items[1].id
    states, targets = human_dialogs(catalog, [CaptionPair(a, b, "in red"), CaptionPair("nope", b, "x"),
                                              CaptionPair(a, a, "same")])
    assert [s.turns for s in states] == [[Turn(0, "in red")]] and targets.tolist() == [1]
    assert isinstance(states[0], DialogState)


def test_fine_tune_on_logged_slang_ranks_unseen_targets_higher(demo_model_dir: Path, tmp_path: Path) -> None:
    catalog = load_catalog("demo:300")
    train_file = write_export(tmp_path / "week.jsonl", slang_pairs(catalog, "train", 400, seed=1))
    held_out = slang_pairs(catalog, "test", 120, seed=2)  # targets the fine-tune never saw, same slang
    config = yaml.safe_load((demo_model_dir / "config.yaml").read_text())
    config["retriever"].update(finetune_epochs=6, finetune_learning_rate=2e-3, human_repeats=2)
    config["simulator"].update(finetune_steps=30)
    (tmp_path / "shop.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "fine-tuned"

    before = median_rank(Assistant.load(demo_model_dir, catalog, progress=False), held_out)
    assert main(["train", "--from", str(demo_model_dir), "--out", str(out), "--dialogs", str(train_file),
                 "--config", str(tmp_path / "shop.yaml")]) == 0
    after = median_rank(Assistant.load(out, catalog, progress=False), held_out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["fine_tuned_from"]["human_pairs"] == 400
    assert manifest["stages"]["retriever"]["human_pairs"] == 400 and manifest["stages"]["retriever"]["fine_tune"]
    assert "metrics" not in manifest["stages"] and set(manifest["stages"]) >= {"backbone", "simulator"}
    # Before, the slang says nothing and the target sits mid-catalog; after, it is near the top of 300 items.
    assert before > 60 and after < before / 2, (before, after)
    # The source model directory is untouched.
    assert json.loads((demo_model_dir / MANIFEST_FILE).read_text()).get("fine_tuned_from") is None


def test_fine_tune_refuses_what_it_cannot_do(demo_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backbone cannot be re-run"):
        fine_tune(demo_model_dir, tmp_path / "a", stages=["backbone"])
    with pytest.raises(ValueError, match="not a model directory"):
        fine_tune(tmp_path, tmp_path / "b")
    config = yaml.safe_load((demo_model_dir / "config.yaml").read_text())
    config["attributes"]["epochs"] = 99
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="attributes section"):
        fine_tune(demo_model_dir, tmp_path / "c", config=tmp_path / "changed.yaml")
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(FileExistsError):
        fine_tune(demo_model_dir, taken)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "pair", "reference": "d00001"\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: not JSON"):
        fine_tune(demo_model_dir, tmp_path / "d", dialogs=[bad])
    assert not (tmp_path / "d").exists()
    assert main(["train", "--out", str(tmp_path / "e"), "--stages", "retriever"]) != 0


def test_full_training_reads_the_dialogs(tmp_path: Path) -> None:
    catalog = load_catalog("demo:300")
    pairs = slang_pairs(catalog, "train", 50, seed=3) + slang_pairs(catalog, "test", 10, seed=4)
    dialogs = write_export(tmp_path / "log.jsonl", pairs)
    out = tmp_path / "model"
    manifest = train(catalog, Path(__file__).parent / "tiny.yaml", out, progress=False,
                     stages=("backbone", "features", "simulator"), dialogs=[dialogs])
    assert manifest["run_key"]["human_pairs"] and manifest["stages"]["simulator"]["human_pairs"] == 50
    simulator = json.loads((out / "simulator.json").read_text())
    assert simulator["training_run"]["triplets"] == 1500 + 50 * 4  # human pairs count human_repeats times
    shutil.rmtree(out)


def test_fresh_retrains_a_stage_from_scratch_with_a_changed_section(demo_model_dir: Path, tmp_path: Path) -> None:
    """What the ablation benchmark does: the retriever trained again without attribute tokens, the rest kept."""
    config = yaml.safe_load((demo_model_dir / "config.yaml").read_text())
    config["retriever"]["use_attributes"] = False
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "no-attributes"
    manifest = fine_tune(demo_model_dir, out, stages=["retriever"], config=tmp_path / "ablation.yaml", fresh=True,
                         progress=False)
    assert manifest["stages"]["retriever"]["fine_tune"] is False and manifest["fine_tuned_from"]["fresh"]
    assert not DialogRetriever.load(out / "retriever.safetensors").config.use_attributes
    assert DialogRetriever.load(demo_model_dir / "retriever.safetensors").config.use_attributes
    assert (out / "backbone.safetensors").read_bytes() == (demo_model_dir / "backbone.safetensors").read_bytes()
    assert main(["train", "--out", str(tmp_path / "f"), "--fresh"]) != 0  # --fresh needs --from
