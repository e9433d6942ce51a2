"""The dialog retriever: history layout, turn causality, files, learning from simulated dialogs, DDP and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import ShardLog
from safetensors.torch import save_file

from assistant.core.catalog import Catalog
from assistant.core.dialog import DialogState, ShownImage, Turn, run_dialogs
from assistant.core.loaders import load_catalog
from assistant.core.training import Distributed
from assistant.vision.backbone import BackboneConfig, create_backbone
from assistant.vision.features import ItemFeatures, compute_features, features_for
from retriever.evaluate import evaluate, model_ranker, standard_systems
from retriever.model import (
    ATTRIBUTE,
    IMAGE,
    MAX_TITLE_PIECES,
    NO_ITEM,
    PAD,
    RULED,
    TEXT,
    WANTED,
    DialogRetriever,
    RetrieverConfig,
    RetrieverRanker,
)
from retriever.text import FeedbackTextEncoder
from retriever.train import (
    RETRIEVER_FILE,
    TRAIN_LOG_FILE,
    drop_readings,
    mixed_item_inputs,
    mixed_user,
    thin_item_inputs,
    train_retriever,
)
from simulator.paraphrase_user import ParaphraseUser
from simulator.template_user import TemplateUser

TINY = {"width": 32, "layers": 1, "heads": 2, "feedforward": 64, "dropout": 0.0, "text_mode": "static",
        "turns": 3, "dialogs_per_epoch": 64, "batch_size": 32, "random_negatives": 64, "hard_negatives": 4,
        "random_shown_epochs": 0, "warmup_steps": 2, "progress": False}


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog("demo:300")


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneConfig())


@pytest.fixture(scope="module")
def features(demo: Catalog, backbone) -> ItemFeatures:
    return compute_features(backbone, demo, progress=False)


@pytest.fixture(scope="module")
def retriever(demo: Catalog, features: ItemFeatures) -> DialogRetriever:
    torch.manual_seed(0)
    return DialogRetriever.create(demo, features.dim, RetrieverConfig(width=32, layers=2, heads=2, feedforward=64,
                                                                      text_mode="contextual"))


def test_history_layout_per_turn(retriever: DialogRetriever, demo: Catalog, features: ItemFeatures) -> None:
    items = retriever.item_inputs(demo, features)
    photo = ShownImage(features.image[5], {"colour": "red"})
    state = DialogState([Turn(None, "a red dress"), Turn(4, "in blue"), Turn(photo, "")])
    batch = retriever.history_batch([state], items)
    kinds = batch.kind[0].tolist()
    names = len(retriever.vocabulary.names)
    pieces = [len(p) for p in retriever.text.pieces(["a red dress", "in blue"])]
    assert kinds[:2 + pieces[0]] == [0, NO_ITEM] + [TEXT] * pieces[0]
    second = kinds[2 + pieces[0]:]
    assert second[:2 + names + pieces[1]] == [0, IMAGE] + [ATTRIBUTE] * names + [TEXT] * pieces[1]
    assert second[2 + names + pieces[1]:] == [0, IMAGE] + [ATTRIBUTE] * names  # a photo with no words
    assert batch.turns.tolist() == [3]
    at = kinds.index(IMAGE)
    assert torch.equal(batch.images[batch.image_index[0, at]], items.image[4])
    plain = retriever.history_batch([state], items, use_attributes=False)
    assert ATTRIBUTE not in plain.kind[0].tolist()


def test_a_turn_query_does_not_see_later_turns(retriever: DialogRetriever, demo: Catalog,
                                               features: ItemFeatures) -> None:
    items = retriever.item_inputs(demo, features)
    one = DialogState([Turn(3, "a longer one in black")])
    two = DialogState([Turn(3, "a longer one in black"), Turn(9, "with stripes")])
    batch = retriever.history_batch([two, one], items)
    retriever.network.eval()
    with torch.no_grad():
        queries = retriever.network.encode_history(batch)
    assert torch.allclose(queries[0, 0], queries[1, 0], atol=1e-5)
    assert not torch.allclose(queries[0, 1], queries[0, 0], atol=1e-3)
    assert np.allclose(retriever.query_vectors([one], items)[0], queries[0, 0].numpy(), atol=1e-5)


def test_contextual_text_reads_negation() -> None:
    encoder = FeedbackTextEncoder("contextual")
    red, not_red = encoder.encode(["red", "not red"])
    assert red.pieces.tolist() == not_red.pieces[-1:].tolist()
    assert not np.allclose(red.context[0], not_red.context[-1], atol=0.05)
    assert encoder.encode(["red"])[0] is red  # cached


def test_save_and_load_give_the_same_vectors(retriever: DialogRetriever, demo: Catalog, features: ItemFeatures,
                                             tmp_path: Path) -> None:
    items = retriever.item_inputs(demo, features)
    path = retriever.save(tmp_path / RETRIEVER_FILE)
    loaded = DialogRetriever.load(path)
    state = DialogState([Turn(7, "make it green")])
    assert np.allclose(loaded.item_vectors(items), retriever.item_vectors(items), atol=1e-6)
    assert np.allclose(loaded.query_vectors([state], items), retriever.query_vectors([state], items), atol=1e-6)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable retriever file"):
        DialogRetriever.load(path)
    with pytest.raises(ValueError, match="no trained retriever"):
        DialogRetriever.load(tmp_path / "missing.safetensors")


def test_a_retriever_file_written_before_the_one_config_still_loads(
        retriever: DialogRetriever, demo: Catalog, features: ItemFeatures, tmp_path: Path) -> None:
    config = retriever.config
    # the layout before RetrieverConfig and RetrieverShape were merged: the shape, and the config in "extra"
    shape = {"feature_dim": features.dim, "attribute_names": retriever.vocabulary.names,
             "attribute_values": retriever.vocabulary.values, "max_text_pieces": 24, "max_title_pieces": 16,
             **{name: getattr(config, name) for name in ("width", "layers", "heads", "feedforward", "dropout",
                                                         "max_turns", "text_mode", "item_space", "use_attributes")}}
    trained_with = {**dataclasses.asdict(config), "width": 999}  # the shape wins over the config beside it
    tensors = {name: value.contiguous() for name, value in retriever.network.state_dict().items()}
    save_file(tensors, str(tmp_path / RETRIEVER_FILE), metadata={
        "format": "fashion-assistant-retriever/1", "shape": json.dumps(shape),
        "extra": json.dumps({"config": trained_with, "epochs": []})})
    loaded = DialogRetriever.load(tmp_path / RETRIEVER_FILE)
    assert loaded.config == config and loaded.feature_dim == features.dim
    assert loaded.vocabulary.ids == retriever.vocabulary.ids
    items = retriever.item_inputs(demo, features)
    state = DialogState([Turn(7, "make it green"), Turn(9, "longer sleeves")])
    assert np.array_equal(loaded.item_vectors(items), retriever.item_vectors(items))
    assert np.array_equal(loaded.query_vectors([state], items), retriever.query_vectors([state], items))


@pytest.mark.timeout(600)  # trains a retriever on 800 demo items and plays every system's dialogs
def test_trained_retriever_closes_in_over_the_turns(tmp_path: Path, backbone) -> None:
    catalog = load_catalog("demo:800")
    features = compute_features(backbone, catalog, progress=False)
    train, test = catalog.split("train"), catalog.split("test")
    config = RetrieverConfig(width=48, layers=1, heads=2, feedforward=96, text_mode="static", turns=4, epochs=4,
                             dialogs_per_epoch=512, batch_size=32, learning_rate=3e-3, warmup_steps=10,
                             random_negatives=128, hard_negatives=4, progress=False)
    retriever = train_retriever(train, features_for(features, train), TemplateUser(train, seed=1), config,
                                tmp_path)
    log = json.loads((tmp_path / TRAIN_LOG_FILE).read_text())
    assert log[-1]["loss"] < log[0]["loss"] - 1.0
    model = model_ranker(retriever, test, retriever.item_inputs(test, features_for(features, test)))
    systems, notes = standard_systems(model, test, features, backbone)
    assert list(systems) == ["model", "random", "keyword", "attribute_filter", "single_turn", "no_attributes",
                            "retriever_only"]
    result = evaluate(systems, test, TemplateUser(test, seed=2), turns=4, targets=len(test), seed=0, notes=notes)
    assert "masked at inference" in result["notes"]["no_attributes"]
    model = result["systems"]["retriever_only"]  # what the retriever learnt, without the feedback constraints
    assert model["recall@10"][-1] > model["recall@10"][0] + 0.08
    assert model["rank_percentile"][-1] > model["rank_percentile"][0] + 5
    for baseline in ("random", "single_turn"):
        assert model["success@10"][-1] > result["systems"][baseline]["success@10"][-1] + 0.15
        assert model["recall@10"][-1] > result["systems"][baseline]["recall@10"][-1] + 0.2
        assert model["rank_percentile"][-1] > result["systems"][baseline]["rank_percentile"][-1] + 15
    constrained = result["systems"]["model"]  # constraints put items contradicting the feedback last
    assert constrained["rank_percentile"][-1] > model["rank_percentile"][-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_worker(rank: int, world: int, port: int, catalog: Catalog, features: ItemFeatures, config: dict,
                  out: str, shards: ShardLog | None = None) -> None:
    """One training process; with world > 1 it gets the environment torchrun gives each rank."""
    torch.set_num_threads(1)  # a forked process must not enter OpenMP parallel regions (see conftest.forked)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    if shards is not None:
        shards.record(Distributed, Path(out), rank)
    train_retriever(catalog, features, TemplateUser(catalog, seed=1), RetrieverConfig(**config), Path(out))


def _losses(out: Path) -> list[float]:
    return [loss for epoch in json.loads((out / TRAIN_LOG_FILE).read_text()) for loss in epoch["losses"]]


def test_two_processes_follow_the_one_process_loss(tmp_path: Path, demo: Catalog, features: ItemFeatures,
                                                  forked, shard_log: ShardLog) -> None:
    config = {**TINY, "epochs": 2, "threads": 1}
    # forked processes start at once, where torchrun-launched ones would each spend seconds importing torch again
    single = forked(_train_worker, 0, 1, 0, demo, features, config, str(tmp_path / "world1"))
    mp.start_processes(_train_worker, args=(2, _free_port(), demo, features, config, str(tmp_path / "world2"),
                                            shard_log), nprocs=2, start_method="fork")
    single.join(timeout=300)
    assert single.exitcode == 0
    one, two = _losses(tmp_path / "world1"), _losses(tmp_path / "world2")
    assert len(one) == len(two) == 4
    assert np.allclose(one, two, rtol=2e-3), (one, two)
    logs = [json.loads((tmp_path / name / TRAIN_LOG_FILE).read_text()) for name in ("world1", "world2")]
    assert [e["world_size"] for e in logs[0]] == [1, 1] and [e["world_size"] for e in logs[1]] == [2, 2]
    # each epoch's rollouts and both of its batches were split between the two ranks
    assert shard_log.calls(tmp_path / "world2", world=2) == 2 * (1 + 2)


def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path, demo: Catalog, features: ItemFeatures,
                                               forked) -> None:
    config = {**TINY, "epochs": 3, "threads": 1, "dialogs_per_epoch": 96}
    killed = tmp_path / "killed"
    run = forked(_train_worker, 0, 1, 0, demo, features, config, str(killed))
    deadline = time.time() + 240
    while not (killed / TRAIN_LOG_FILE).exists() and run.is_alive() and time.time() < deadline:
        time.sleep(0.02)
    run.kill()  # SIGKILL
    run.join()
    epochs_done = len(json.loads((killed / TRAIN_LOG_FILE).read_text()))
    assert epochs_done < 3 and not (killed / RETRIEVER_FILE).exists()
    resumed = train_retriever(demo, features, TemplateUser(demo, seed=1), RetrieverConfig(**config), killed)
    assert (killed / RETRIEVER_FILE).exists()
    whole = tmp_path / "whole"
    straight = train_retriever(demo, features, TemplateUser(demo, seed=1), RetrieverConfig(**config), whole)
    assert np.allclose(_losses(killed), _losses(whole), rtol=1e-4)
    items = straight.item_inputs(demo, features)
    assert np.allclose(resumed.item_vectors(items), straight.item_vectors(items), atol=1e-4)


def test_rollouts_use_the_retrievers_top_item(demo: Catalog, features: ItemFeatures,
                                              retriever: DialogRetriever) -> None:
    items = retriever.item_inputs(demo, features)
    ranker = RetrieverRanker(retriever, items)
    run = run_dialogs(ranker, demo, [10, 20], TemplateUser(demo, seed=1), turns=3, start_rows=[1, 2],
                      track_ranks=False)
    for state in run.states:
        for before, after in zip(state.turns, state.turns[1:], strict=False):
            expected = ranker.rank([DialogState(state.turns[: state.turns.index(before) + 1])], 1,
                                   [{t.shown for t in state.turns[: state.turns.index(before) + 1]}])[0, 0]
            assert after.shown == expected == before.results[0]


def test_label_dropout_hides_all_but_kind_and_person_in_the_chosen_rows(
        tmp_path: Path, demo: Catalog, features: ItemFeatures, retriever: DialogRetriever) -> None:
    full = retriever.item_inputs(demo, features)
    thin = thin_item_inputs(retriever, demo, features, None)
    names = retriever.vocabulary.names
    for column, name in enumerate(names):
        if name in ("garment", "gender"):
            assert torch.equal(thin.attributes[:, column], full.attributes[:, column])
        else:
            assert (thin.attributes[:, column] == retriever.vocabulary.unknown[name]).all()
    assert not torch.equal(thin.title, full.title)  # "White floral ... dress" loses "white"
    assert retriever.text.pieces([demo.items[0].title.replace("White ", "")], MAX_TITLE_PIECES)[0].tolist() == \
        thin.title[0][thin.title[0] > 0].tolist()
    rows = np.arange(len(demo)) % 3 == 0
    mixed = mixed_item_inputs(full, thin, rows)
    assert torch.equal(mixed.attributes[rows], thin.attributes[rows])
    assert torch.equal(mixed.attributes[~rows], full.attributes[~rows])
    assert torch.equal(mixed.title[~rows], full.title[~rows]) and mixed.image is full.image
    config = RetrieverConfig(**{**TINY, "epochs": 1, "label_dropout": 0.5})
    assert "label_dropout" in config.run_key() and "label_dropout" not in RetrieverConfig(**TINY).run_key()
    train_retriever(demo, features, TemplateUser(demo, seed=1), config, tmp_path)
    assert np.isfinite(_losses(tmp_path)).all()


@pytest.fixture(scope="module")
def reading(demo: Catalog, features: ItemFeatures) -> DialogRetriever:
    """An untrained retriever that reads the feedback through the semantic reader."""
    torch.manual_seed(0)
    return DialogRetriever.create(demo, features.dim, RetrieverConfig(width=32, layers=1, heads=2, feedforward=64,
                                                                      read_feedback=True))


@pytest.fixture(scope="module")
def reading_items(reading: DialogRetriever, demo: Catalog, features: ItemFeatures):
    return reading.item_inputs(demo, features)


@pytest.fixture(scope="module")
def reader(reading: DialogRetriever, demo: Catalog):
    return reading.reader_over([item.attributes for item in demo])


def test_each_turn_reads_the_understanding_so_far(reading: DialogRetriever, reading_items, reader) -> None:
    items = reading_items
    state = DialogState([Turn(None, "a scarlet dress"), Turn(4, "anything but red, i'd like it in green")])
    batch = reading.history_batch([state], items, reader=reader)
    kinds, turns, ids = batch.kind[0].tolist(), batch.turn[0].tolist(), batch.attribute[0].tolist()
    ids_of = {token: value for value, token in reading.vocabulary.ids.items()}
    first = {ids_of[i] for k, t, i in zip(kinds, turns, ids, strict=True) if k == WANTED and t == 0}
    assert ("colour", "red") in first and ("garment", "dress") in first  # scarlet: a shade of red
    second_wanted = {ids_of[i] for k, t, i in zip(kinds, turns, ids, strict=True) if k == WANTED and t == 1}
    second_ruled = {ids_of[i] for k, t, i in zip(kinds, turns, ids, strict=True) if k == RULED and t == 1}
    assert ("colour", "green") in second_wanted and ("garment", "dress") in second_wanted  # the dress carries on
    assert ("colour", "red") in second_ruled and ("colour", "red") not in second_wanted
    assert kinds.index(WANTED) > max(i for i, k in enumerate(kinds) if k == TEXT and turns[i] == 0)
    credits = batch.credit[0][torch.tensor(kinds) == WANTED]
    assert ((credits > 0) & (credits <= 1)).all()
    with pytest.raises(ValueError, match="reads the feedback"):
        reading.history_batch([state], items)


def test_a_later_turn_sees_only_its_own_reading(reading: DialogRetriever, reading_items, reader) -> None:
    state = DialogState([Turn(None, "a red dress"), Turn(4, "in green")])
    batch = reading.history_batch([state], reading_items, reader=reader)
    earlier = (batch.turn == 0) & batch.reading()
    assert earlier.any()
    dropped = dataclasses.replace(batch, kind=batch.kind.masked_fill(earlier, PAD))
    reading.network.eval()
    with torch.no_grad():
        queries, without = reading.network.encode_history(batch), reading.network.encode_history(dropped)
    assert torch.allclose(queries[0, 1], without[0, 1], atol=1e-5)  # turn 2 never sees turn 1's reading
    assert not torch.allclose(queries[0, 0], without[0, 0], atol=1e-3)


def test_reading_dropout_hides_reading_tokens_only(reading: DialogRetriever, reading_items, reader) -> None:
    states = [DialogState([Turn(None, "a red dress, not for men"), Turn(4, "anything but black, in green")])] * 64
    batch = reading.history_batch(states, reading_items, reader=reader)
    read = batch.reading()
    half = drop_readings(batch, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(half.kind[~read], batch.kind[~read])  # words, images, labels untouched
    assert 0.4 < (half.kind[read] == PAD).float().mean() < 0.6
    assert not ((drop_readings(batch, 1.0, torch.Generator()).kind == WANTED).any())
    assert torch.equal(drop_readings(batch, 0.0, torch.Generator()).kind, batch.kind)


@pytest.mark.timeout(600)  # trains two retrievers on 800 demo items
def test_reading_the_feedback_makes_the_retriever_alone_better(tmp_path: Path, backbone) -> None:
    catalog = load_catalog("demo:800")
    features = compute_features(backbone, catalog, progress=False)
    train, test = catalog.split("train"), catalog.split("test")
    user = mixed_user(None, TemplateUser(train, seed=1), 0.0, paraphrase=ParaphraseUser(train, seed=1),
                      paraphrase_fraction=0.4)
    alone = {}
    for read in (False, True):
        torch.manual_seed(0)
        config = RetrieverConfig(width=48, layers=1, heads=2, feedforward=96, turns=4, epochs=4,
                                 dialogs_per_epoch=512, batch_size=32, learning_rate=3e-3, warmup_steps=10,
                                 random_negatives=128, hard_negatives=4, progress=False, read_feedback=read)
        retriever = train_retriever(train, features_for(features, train), user, config, tmp_path / str(read))
        model = model_ranker(retriever, test, retriever.item_inputs(test, features_for(features, test)))
        systems = {"alone": standard_systems(model, test, features)[0]["retriever_only"]}
        # words from the paraphrase shopper's held-aside bank, which training never saw
        result = evaluate(systems, test, ParaphraseUser(test, seed=2, bank="heldout"), turns=4, targets=len(test))
        alone[read] = result["systems"]["alone"]
    assert alone[True]["success@10"][-1] > alone[False]["success@10"][-1] + 0.08
    assert alone[True]["rank_percentile"][-1] > alone[False]["rank_percentile"][-1] + 3
