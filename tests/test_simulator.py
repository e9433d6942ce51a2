"""The user simulator: a tiny captioner learns faithful captions, decodes through generate(), saves, resumes, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import ShardLog

from assistant.core.catalog import Catalog, Item
from assistant.core.loaders import load_catalog
from assistant.core.training import Distributed, read_checkpoint
from assistant.vision.features import ItemFeatures
from assistant.vision.preprocessing import pixel_tensor
from simulator.captioner import AttributeVocab, SimulatorConfig, SimulatorModel
from simulator.metrics import evaluate_simulator
from simulator.tokenizer import CaptionTokenizer
from simulator.train import RESUME_FILE, train_simulator
from simulator.user import SimulatorUser, load_simulator_user

REPO = Path(__file__).resolve().parent.parent
# Sized to learn faithful captions on 400 demo items in about 20 s on one core: one decoder layer at a higher
# learning rate reaches the two-layer model's held-out precision (0.99 at seed 0; 0.96 and 0.98 at seeds 1, 2)
# in half the time.
TINY = SimulatorConfig(n_embd=96, n_layer=1, n_head=4, encoder_layers=0, title_tokens=8, triplets=6000,
                       val_pairs=200, batch_size=64, learning_rate=5e-3, warmup_steps=30, max_steps=400,
                       eval_every=100, patience=10, threads=1)
# Smaller still, for the checkpoint, resume and DDP mechanics (what they learn does not matter).
MICRO = SimulatorConfig(n_embd=32, n_layer=1, n_head=2, encoder_layers=1, title_tokens=4, triplets=400,
                        val_pairs=64, batch_size=16, learning_rate=3e-3, warmup_steps=5, max_steps=120,
                        eval_every=10, patience=100, threads=1)


def thumbnail_features(catalog: Catalog) -> ItemFeatures:
    """A cheap real image representation: 10x8 thumbnails, centred and L2-normalised."""
    pixels, _ = pixel_tensor(catalog, (10, 8), progress=False)
    vectors = pixels.float().flatten(1) / 255.0
    vectors = F.normalize(vectors - vectors.mean(0), dim=1).numpy()
    return ItemFeatures(catalog.ids, vectors, vectors, vectors)


def save_features(features: ItemFeatures, path: Path) -> Path:
    np.savez(path, ids=np.array(features.ids), x=features.item)
    return path


def child_env() -> dict[str, str]:
    """The environment for a child process: this session's (private cache included), one thread."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


LOAD_FEATURES = ("import numpy as np; from assistant.vision.features import ItemFeatures; d = np.load(sys.argv[2]); "
                 "f = ItemFeatures(list(d['ids']), d['x'], d['x'], d['x'])")


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog("demo:400")


@pytest.fixture(scope="module")
def demo_features(demo: Catalog) -> ItemFeatures:
    return thumbnail_features(demo)


@pytest.fixture(scope="module")
def trained(demo: Catalog, demo_features: ItemFeatures, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny simulator trained once on the demo catalog's train split; its directory."""
    out = tmp_path_factory.mktemp("simulator")
    train_simulator(demo, demo_features, TINY, out)
    return out


@pytest.fixture(scope="module")
def model(trained: Path) -> SimulatorModel:
    return SimulatorModel.load(trained)


@pytest.fixture(scope="module")
def test_pairs(demo: Catalog) -> tuple[list[Item], list[Item]]:
    """40 held-out (reference, target) pairs."""
    items = demo.split("test").items
    references = [items[i % len(items)] for i in range(40)]
    targets = [items[(3 * i + 1) % len(items)] for i in range(40)]
    return references, targets


def test_tiny_simulator_states_true_attribute_values_on_held_out_items(
        model: SimulatorModel, demo: Catalog, demo_features: ItemFeatures) -> None:
    held_out = demo.split("test")
    result = evaluate_simulator(model, held_out, demo_features, pairs=300, seed=5)
    assert result["pairs"] == 300 and len(result["examples"]) == 300
    assert result["attribute_precision"] >= 0.9, result
    assert result["attribute_recall_budget"] >= 0.6, result
    assert result["asserted_per_caption"] >= 1.0
    assert result["bleu_4"] > 0.05 and result["captions_per_s"] > 0
    untrained = SimulatorModel.build(model.tokenizer, model.attributes, demo_features.dim, TINY)
    baseline = evaluate_simulator(untrained, held_out, demo_features, pairs=100, seed=5)
    assert baseline["attribute_precision"] < 0.5 and baseline["attribute_recall_budget"] < 0.2
    assert model.training_run["finished"] and model.training_run["best_val_loss"] < 1.5


def test_decodings_come_from_generate_and_behave_as_they_should(
        model: SimulatorModel, demo_features: ItemFeatures, test_pairs: tuple[list[Item], list[Item]]) -> None:
    references, targets = test_pairs
    greedy = model.caption(references, targets, demo_features, "greedy")
    assert greedy == model.caption(references, targets, demo_features, "greedy", seed=99)  # no randomness
    beam = model.caption(references, targets, demo_features, "beam")
    first = model.caption(references, targets, demo_features, "sample", seed=1)
    again = model.caption(references, targets, demo_features, "sample", seed=1)
    other = model.caption(references, targets, demo_features, "sample", seed=2)
    assert first == again  # a seed fixes the draw
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= 5  # other seeds word things differently
    assert all(isinstance(c, str) and c for c in greedy + beam + first)
    likelihood = {name: model.log_likelihood(references, targets, demo_features, captions).mean()
                  for name, captions in (("greedy", greedy), ("beam", beam), ("sample", first))}
    # beam search looks further than greedy, sampling wanders off the most likely wording
    assert likelihood["beam"] >= likelihood["greedy"] - 0.05, likelihood
    assert likelihood["sample"] < likelihood["greedy"], likelihood
    with pytest.raises(ValueError, match="decoding"):
        model.caption(references, targets, demo_features, "top-k")


def test_checkpoint_loads_in_a_fresh_process_with_identical_greedy_captions(
        trained: Path, model: SimulatorModel, demo_features: ItemFeatures,
        test_pairs: tuple[list[Item], list[Item]], tmp_path: Path) -> None:
    references, targets = test_pairs
    pairs = [[r.id, t.id] for r, t in zip(references, targets, strict=True)]
    code = (f"import json, sys; {LOAD_FEATURES}; from assistant.core.loaders import load_catalog; "
            "from simulator.captioner import SimulatorModel; c = load_catalog('demo:400'); "
            "m = SimulatorModel.load(sys.argv[1]); p = json.loads(sys.argv[3]); "
            "print(json.dumps(m.caption([c[r] for r, _ in p], [c[t] for _, t in p], f)))")
    done = subprocess.run([sys.executable, "-c", code, str(trained), str(save_features(demo_features,
                          tmp_path / "features.npz")), json.dumps(pairs)], capture_output=True, text=True,
                          env=child_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == model.caption(references, targets, demo_features)
    assert {p.name for p in trained.iterdir()} >= {"simulator.safetensors", "simulator.spm", "simulator.json"}
    assert not (trained / RESUME_FILE).exists()  # a finished run leaves no optimizer state behind


def test_training_resumes_from_the_checkpoint_of_a_killed_run(
        demo: Catalog, demo_features: ItemFeatures, tmp_path: Path, forked) -> None:
    uninterrupted = train_simulator(demo, demo_features, MICRO, tmp_path / "whole")
    out = tmp_path / "killed"
    # the same run in a forked process (no second import of torch and transformers), SIGKILLed once it has
    # written its first checkpoint
    child = forked(train_simulator, demo, demo_features, MICRO, out)
    deadline = time.monotonic() + 300
    while not (out / RESUME_FILE).exists() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    child.kill()
    child.join()
    checkpoint = read_checkpoint(out / RESUME_FILE)
    assert checkpoint is not None, f"no checkpoint; the training process ended with {child.exitcode}"
    saved = checkpoint.counters
    assert MICRO.eval_every <= saved["step"] < MICRO.max_steps
    resumed = train_simulator(demo, demo_features, MICRO, out)
    history = resumed.training_run["history"]
    assert history[: len(saved["history"])] == saved["history"]  # the killed run's evaluations were kept
    assert resumed.training_run["steps"] == MICRO.max_steps
    whole = uninterrupted.training_run["history"]
    assert [h["step"] for h in history] == [h["step"] for h in whole]
    assert history[-1]["val_loss"] == pytest.approx(whole[-1]["val_loss"], abs=2e-3)
    # a finished run with the same inputs is loaded, not trained again
    assert train_simulator(demo, demo_features, MICRO, out).training_run == resumed.training_run


def _ddp_worker(rank: int, world: int, port: int, catalog: Catalog, features: ItemFeatures,
                config: SimulatorConfig, out: str, shards: ShardLog) -> None:
    torch.set_num_threads(1)  # a forked process must not enter OpenMP parallel regions (see conftest.forked)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    shards.record(Distributed, Path(out), rank)
    train_simulator(catalog, features, config, out, resume=False)


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_ddp_on_two_gloo_processes_matches_a_single_process(
        demo: Catalog, demo_features: ItemFeatures, tmp_path: Path, shard_log: ShardLog) -> None:
    config = dataclasses.replace(MICRO, max_steps=6, eval_every=3, batch_size=32)
    single = train_simulator(demo, demo_features, config, tmp_path / "single", resume=False)
    # forked workers start at once (spawned ones spend ~10 s each re-importing torch and transformers)
    mp.start_processes(_ddp_worker, args=(2, free_port(), demo, demo_features, config, str(tmp_path / "ddp"),
                                          shard_log), nprocs=2, start_method="fork")
    ddp = SimulatorModel.load(tmp_path / "ddp")
    assert single.training_run["world_size"] == 1 and ddp.training_run["world_size"] == 2
    # every training step's batch and each validation were split between the two ranks
    assert shard_log.calls(tmp_path / "ddp", world=2) == config.max_steps + config.max_steps // config.eval_every
    for one, two in zip(single.training_run["history"], ddp.training_run["history"], strict=True):
        assert one["step"] == two["step"]
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-3)
        assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-3)
    for name, weight in single.network.state_dict().items():
        assert torch.allclose(weight, ddp.network.state_dict()[name], atol=1e-4), name


def test_simulator_user_answers_one_or_a_batch_with_one_generate_call(
        trained: Path, demo: Catalog, demo_features: ItemFeatures, test_pairs: tuple[list[Item], list[Item]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    references, targets = test_pairs
    user = load_simulator_user(trained, demo, demo_features)
    calls = []
    generate = user.model.network.decoder.generate
    monkeypatch.setattr(user.model.network.decoder, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    batch = user.respond_batch(references, targets, [0] * len(references))
    assert len(calls) == 1 and len(batch) == len(references)
    assert user.respond(references[3], targets[3], turn=2) == batch[3]
    assert user.respond_batch([], [], []) == []
    with pytest.raises(ValueError, match="as many"):
        user.respond_batch(references, targets[:-1], [0] * len(references))
    sampler = SimulatorUser(user.model, demo, demo_features, decoding="sample", seed=4)
    draws = [sampler.respond_batch(references, targets, [0] * 40) for _ in range(2)]
    assert draws[0] != draws[1]  # each call draws afresh
    replay = SimulatorUser(user.model, demo, demo_features, decoding="sample", seed=4)
    assert [replay.respond_batch(references, targets, [0] * 40) for _ in range(2)] == draws


def test_unseen_values_and_attributes_fall_back_to_unknown_tokens(
        model: SimulatorModel, demo_features: ItemFeatures, test_pairs: tuple[list[Item], list[Item]]) -> None:
    vocab = AttributeVocab({"colour": ["red", "blue"], "fit": ["slim"]})
    assert vocab.encode({"colour": "blue", "fit": "slim"}) == [2, 4]
    assert vocab.encode({"colour": "teal"}) == [0, 3]  # unseen value and missing attribute: each one's <unk>
    reference, target = test_pairs[0][0], test_pairs[1][0]
    odd = Item(target.id, target.image_path, "a teal hat", "hat", {"colour": "teal", "brim": "wide"})
    captions = model.caption([reference], [odd], demo_features)
    assert len(captions) == 1 and isinstance(captions[0], str)


def test_a_model_directory_written_before_the_one_config_still_loads(
        trained: Path, model: SimulatorModel, demo_features: ItemFeatures,
        test_pairs: tuple[list[Item], list[Item]], tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in ("simulator.safetensors", "simulator.spm"):
        (old / name).write_bytes((trained / name).read_bytes())
    config = model.config
    # simulator.json as the code before SimulatorConfig and CaptionerShape were merged wrote it
    shape = {"feature_dim": demo_features.dim, "vocab_size": model.tokenizer.vocab_size,
             "attribute_tokens": len(model.attributes), "attribute_slots": len(model.attributes.names),
             "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head,
             "encoder_layers": config.encoder_layers, "max_caption_tokens": config.max_caption_tokens,
             "max_value_pieces": 8, "title_tokens": config.title_tokens, "dropout": config.dropout}
    run = {**model.training_run, "config": dataclasses.asdict(config)}
    (old / "simulator.json").write_text(json.dumps(
        {"shape": shape, "attributes": model.attributes.values, "feature_kind": config.feature,
         "feature_source": model.feature_source, "beams": config.beams, "top_p": config.top_p, "training_run": run}))
    loaded = SimulatorModel.load(old)
    assert loaded.config == config and loaded.network.feature_dim == demo_features.dim
    references, targets = test_pairs
    assert loaded.caption(references, targets, demo_features) == model.caption(references, targets, demo_features)
    loaded.save(old)  # saving writes the one-config layout
    assert "config" in json.loads((old / "simulator.json").read_text())
    assert SimulatorModel.load(old).config == config


def test_bad_model_directories_and_features_get_clear_errors(
        trained: Path, model: SimulatorModel, demo: Catalog, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a simulator model directory"):
        SimulatorModel.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("simulator.spm", "simulator.json"):
        (broken / name).write_bytes((trained / name).read_bytes())
    (broken / "simulator.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="unreadable weights"):
        SimulatorModel.load(broken)
    narrow = np.zeros((len(demo), 7), dtype=np.float32)
    with pytest.raises(ValueError, match="trained on 240-d"):
        model.lookup(ItemFeatures(demo.ids, narrow, narrow, narrow))
    other = ItemFeatures(demo.ids[:5], *(np.zeros((5, 240), dtype=np.float32),) * 3)
    with pytest.raises(KeyError, match="no feature vector"):
        model.caption([demo.items[10]], [demo.items[11]], other)


def test_tokenizer_is_sized_to_a_small_corpus_and_round_trips(tmp_path: Path) -> None:
    captions = ["make it red", "a blue one, not red", "with long sleeves instead of short sleeves"] * 5
    tokenizer = CaptionTokenizer.train(captions, vocab_size=8000)
    assert tokenizer.vocab_size < 200
    assert tokenizer.decode(tokenizer.encode(["a red one with long sleeves"])) == ["a red one with long sleeves"]
    loaded = CaptionTokenizer.load(tokenizer.save(tmp_path / "simulator.spm"))
    assert loaded.encode(captions[:2]) == tokenizer.encode(captions[:2])
    with pytest.raises(ValueError, match="no captions"):
        CaptionTokenizer.train([])
