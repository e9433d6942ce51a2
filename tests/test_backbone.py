"""The backbone: tiny registered models, pretrained weights from a local file, offline failures, saving, training."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from assistant.core.catalog import Catalog, Item
from assistant.core.loaders import load_generic
from assistant.core.text_encoder import TextEncoderError, verified_minilm_folder
from assistant.vision.backbone import (
    BACKBONE_FILE,
    MODEL_CONFIG_DIR,
    Backbone,
    BackboneConfig,
    BackboneError,
    cpu_has_native_bf16,
    create_backbone,
)
from assistant.vision.backbone_training import TRAIN_LOG_FILE, TRAIN_STATE_FILE, train_backbone
from assistant.vision.preprocessing import item_text, letterbox, pixel_cache_path, pixel_tensor
from assistant.vision.probes import shuffled_pairs, text_image_recall

REPO = Path(__file__).resolve().parent.parent
# A small fast variant of the default model for tests: 32x24 pixels, 12 patches.
FAST = {"image_size": [32, 24], "batch_size": 32, "warmup_steps": 10, "lr": 1e-3}


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (60, 80)) -> Image.Image:
    return Image.new("RGB", size, colour)


def recall_at(backbone: Backbone, catalog: Catalog, k: int) -> float:
    return text_image_recall(backbone, catalog, ks=(k,))[f"R@{k}"]


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return create_backbone(BackboneConfig())


def test_tiny_model_encodes_normalised_vectors(tiny: Backbone) -> None:
    images = [solid((200, 20, 20)), solid((20, 20, 200)), solid((200, 20, 20))]
    vectors = tiny.encode_images(images)
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    texts = tiny.encode_texts(["red shirt", "navy blue jeans"])
    assert texts.shape == (2, 256) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert tiny.encode_texts([]).shape == (0, 256)
    assert tiny.image_size == (64, 48) and tiny.dim == 256


def test_letterbox_keeps_aspect_and_pads_with_background() -> None:
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    image.paste((0, 0, 0), (10, 10, 30, 30))
    pixels = letterbox(image, (64, 48))
    assert pixels.shape == (64, 48, 3) and pixels.dtype == np.uint8
    assert (pixels[:8] == 255).all() and (pixels[-8:] == 255).all()  # 48x48 content centred: white bands
    assert pixels[32, 24].tolist() == [0, 0, 0]


def test_tensor_input_must_match_image_size(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match="64, 48"):
        tiny.encode_images(torch.zeros((2, 3, 64, 64), dtype=torch.uint8))


def test_pretrained_from_a_local_open_clip_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(123)
    reference = open_clip.create_model("fashion-vit-tiny").eval()
    checkpoint = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), checkpoint)
    backbone = create_backbone(BackboneConfig(model="fashion-vit-tiny", pretrained=str(checkpoint), cpu_bf16=False))
    pixels = torch.randint(0, 256, (4, 3, 64, 48), dtype=torch.uint8)
    texts = ["white cotton shirt", "black leather belt", "red dress", "blue jeans"]
    with torch.no_grad():
        expected_images = F.normalize(reference.encode_image(backbone.normalise(pixels)), dim=-1).numpy()
        tokens = open_clip.tokenize(texts, context_length=32)
        expected_texts = F.normalize(reference.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(backbone.encode_images(pixels), expected_images, atol=1e-5)
    np.testing.assert_allclose(backbone.encode_texts(texts), expected_texts, atol=1e-5)
    fresh = create_backbone(BackboneConfig(model="fashion-vit-tiny"))
    assert fresh.id != backbone.id
    assert not np.allclose(fresh.encode_texts(texts), expected_texts, atol=1e-3)


@pytest.mark.parametrize("config", [
    BackboneConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k"),
    BackboneConfig(model="ViT-B-32", pretrained="openai"),
    BackboneConfig(pretrained="hf-hub:Marqo/marqo-fashionCLIP"),
    BackboneConfig(model="hf-hub:Marqo/marqo-fashionCLIP"),
])
def test_offline_named_weights_fail_fast_and_say_how(config: BackboneConfig, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty caches
    monkeypatch.setenv("HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(BackboneError) as raised:
        create_backbone(config)
    assert time.perf_counter() - started < 2.0
    message = str(raised.value)
    assert "HF_HUB_OFFLINE" in message
    assert "pretrained: /path/to/weights.pt" in message  # how to pass a downloaded checkpoint
    assert "fashion-vit-tiny" in message  # or the trained-here configs


def test_hf_hub_id_loads_offline_from_the_local_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hub model someone downloaded before (same layout as huggingface_hub's cache) needs no network."""
    torch.manual_seed(7)
    reference = open_clip.create_model("fashion-vit-tiny").eval()
    snapshot = tmp_path / "hub" / "models--shop--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--shop--tiny-clip" / "refs").mkdir()
    (tmp_path / "hub" / "models--shop--tiny-clip" / "refs" / "main").write_text("abc123")
    model_cfg = json.loads((MODEL_CONFIG_DIR / "fashion-vit-tiny.json").read_text())
    (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    weights = {name: tensor.contiguous() for name, tensor in reference.state_dict().items()}
    save_file(weights, str(snapshot / "open_clip_model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone(BackboneConfig(pretrained="hf-hub:shop/tiny-clip", cpu_bf16=False))
    texts = ["grey hoodie", "black heels"]
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(open_clip.tokenize(texts, context_length=32)), dim=-1).numpy()
    np.testing.assert_allclose(backbone.encode_texts(texts), expected, atol=1e-5)
    assert backbone.id.startswith("shop-tiny-clip-")
    np.testing.assert_allclose(Backbone.load(backbone.save(tmp_path / "m")).encode_texts(texts), expected, atol=1e-5)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16: encoding stays fp32")
def test_bf16_encoding_on_cpu_stays_close_to_fp32(real_catalog: Catalog) -> None:
    fp32 = create_backbone(BackboneConfig(cpu_bf16=False))
    bf16 = Backbone(fp32.model, BackboneConfig(), fp32.model_cfg, fp32.device)
    catalog = real_catalog.subset(real_catalog.ids[:64])
    pixels, _ = pixel_tensor(catalog, fp32.image_size, progress=False)
    texts = [item_text(item) for item in catalog]
    assert (fp32.encode_images(pixels) * bf16.encode_images(pixels)).sum(axis=1).min() > 0.995
    assert (fp32.encode_texts(texts) * bf16.encode_texts(texts)).sum(axis=1).min() > 0.995
    assert bf16.id == fp32.id  # a numeric detail, not another embedding space


def test_unknown_model_tag_or_missing_file_say_so() -> None:
    with pytest.raises(BackboneError, match="unknown open_clip model 'no-such-model'"):
        create_backbone(BackboneConfig(model="no-such-model"))
    with pytest.raises(BackboneError, match="unknown pretrained tag 'no-such-tag'"):
        create_backbone(BackboneConfig(model="fashion-vit-tiny", pretrained="no-such-tag"))
    with pytest.raises(BackboneError, match="checkpoint file .*missing.pt not found"):
        create_backbone(BackboneConfig(model="fashion-vit-tiny", pretrained="nowhere/missing.pt"))


def test_save_and_load_round_trip(tiny: Backbone, tmp_path: Path) -> None:
    path = tiny.save(tmp_path / "model")
    assert path == tmp_path / "model" / BACKBONE_FILE
    loaded = Backbone.load(tmp_path / "model")
    assert loaded.id == tiny.id and loaded.dim == tiny.dim and loaded.image_size == tiny.image_size
    images = [solid((10, 150, 10)), solid((250, 250, 250))]
    np.testing.assert_array_equal(loaded.encode_images(images), tiny.encode_images(images))
    np.testing.assert_array_equal(loaded.encode_texts(["green top"]), tiny.encode_texts(["green top"]))


def test_cnn_model_keeps_its_batchnorm_statistics_through_save_and_load(tmp_path: Path) -> None:
    """fashion-regnet-tiny (fpi-cpu's image tower) is a timm CNN: its running statistics are part of the weights."""
    backbone = create_backbone(BackboneConfig(model="fashion-regnet-tiny", cpu_bf16=False))
    assert backbone.image_size == (80, 64) and backbone.dim == 256
    images = [solid((10, 150, 10)), solid((250, 250, 250)), solid((120, 30, 60), size=(64, 64))]
    before = backbone.encode_images(images)
    backbone.model.train()
    with torch.no_grad():  # a training-mode pass moves the BatchNorm statistics, as training does
        backbone.model.encode_image(torch.rand(16, 3, 80, 64) * 3)
    moved = backbone.encode_images(images)
    assert not np.allclose(moved, before, atol=1e-3)
    loaded = Backbone.load(backbone.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.encode_images(images), moved)
    np.testing.assert_allclose(np.linalg.norm(moved, axis=1), 1.0, atol=1e-5)


def test_damaged_backbone_file_is_a_clear_error(tiny: Backbone, tmp_path: Path) -> None:
    path = tiny.save(tmp_path / "backbone.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match="damaged or not a backbone file"):
        Backbone.load(path)
    with pytest.raises(BackboneError, match="no backbone file"):
        Backbone.load(tmp_path / "elsewhere")


def test_fuse_text_blends_and_changes_the_id(tiny: Backbone) -> None:
    fused = Backbone(tiny.model, BackboneConfig(fuse_text=0.5), tiny.model_cfg, tiny.device)
    image = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    text = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(fused.fuse(image, text), [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(tiny.fuse(image, text), image)
    assert fused.id != tiny.id


def test_item_text_is_title_then_new_attribute_values() -> None:
    item = Item("1", None, "Nike Men Blue Jersey", "Tshirts",
                {"gender": "Men", "articleType": "Tshirts", "baseColour": "Blue", "usage": "Sports"})
    assert item_text(item) == "Nike Men Blue Jersey. Tshirts Sports"


def test_minilm_files_are_verified(tmp_path: Path) -> None:
    assert (verified_minilm_folder() / "config.json").is_file()
    (tmp_path / "model.safetensors").write_bytes(b"not the real weights")
    with pytest.raises(TextEncoderError, match="sha256 .* is not that of sentence-transformers/all-MiniLM-L6-v2"):
        verified_minilm_folder(tmp_path)


def test_minilm_text_tower_backbone(tmp_path: Path) -> None:
    backbone = create_backbone(BackboneConfig(model="fashion-vit-tiny-minilm"))
    texts = ["navy blue shirt for men", "dark blue shirt for men", "pink floral dress"]
    vectors = backbone.encode_texts(texts)
    assert vectors.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the pretrained encoder already knows that the two shirts are closer than shirt and dress
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    loaded = Backbone.load(backbone.save(tmp_path))
    np.testing.assert_allclose(loaded.encode_texts(texts), vectors, atol=1e-5)


def test_training_beats_shuffled_pairs(real_catalog: Catalog, tmp_path: Path) -> None:
    train = real_catalog.split("train")
    train = train.subset(train.ids[:400], name="train400")
    held_out = real_catalog.split("test")
    held_out = held_out.subset(held_out.ids[:300], name="test300")
    config = BackboneConfig(epochs=5, **FAST)
    trained = train_backbone(train, config, tmp_path / "true", progress=False)
    control = train_backbone(shuffled_pairs(train), config, tmp_path / "shuffled", progress=False)
    # seen pairs (chance 10/400 = 0.025): measured 0.29 trained vs 0.02 shuffled
    assert recall_at(control, train, 10) < 0.06
    assert recall_at(trained, train, 10) > max(0.15, 4 * recall_at(control, train, 10))
    # unseen items (chance 10/300 = 0.033): measured 0.16 vs 0.03
    assert recall_at(trained, held_out, 10) > max(0.09, 2 * recall_at(control, held_out, 10))
    history = json.loads((tmp_path / "true" / TRAIN_LOG_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5] and history[-1]["loss"] < history[0]["loss"] - 0.5
    assert not (tmp_path / "true" / TRAIN_STATE_FILE).exists()
    again = train_backbone(train, config, tmp_path / "true", progress=False)  # finished: loaded, not retrained
    assert again.id == trained.id


def small_jsonl_catalog(real_catalog: Catalog, folder: Path, n: int) -> Path:
    """A generic catalog file over n real items (images referenced in place, nothing copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"id": item.id, "image": os.path.relpath(item.image_path, folder), "title": item.title,
                         "category": item.category, "attributes": item.attributes})
             for item in real_catalog.split("train").items[:n]]
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


RESUME_CONFIG = BackboneConfig(epochs=4, image_size=[32, 24], batch_size=32, warmup_steps=5)


def test_killed_training_resumes_after_last_finished_epoch(real_catalog: Catalog, tmp_path: Path, forked) -> None:
    catalog_file = small_jsonl_catalog(real_catalog, tmp_path / "shop", 160)
    out_dir = tmp_path / "run"
    # a forked process (no second import of torch and open_clip), SIGKILLed once it has checkpointed an epoch
    images = real_catalog.image_root  # the rows point at the real photos in place: the opt-in image root
    process = forked(train_backbone, load_generic(catalog_file, images_root=images), RESUME_CONFIG, out_dir,
                     progress=False)
    deadline = time.time() + 120
    while not (out_dir / TRAIN_STATE_FILE).exists() and process.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.join()
    assert (out_dir / TRAIN_STATE_FILE).exists(), f"no checkpoint; the training process ended with {process.exitcode}"
    assert not (out_dir / BACKBONE_FILE).exists()
    before = json.loads((out_dir / TRAIN_LOG_FILE).read_text())
    assert 1 <= before[-1]["epoch"] < 4
    resumed = train_backbone(load_generic(catalog_file, images_root=images), RESUME_CONFIG, out_dir, progress=False)
    history = json.loads((out_dir / TRAIN_LOG_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[: len(before)] == before  # the finished epochs were kept, not trained again
    assert Backbone.load(out_dir).id == resumed.id


def test_pixel_cache_survives_a_truncated_file(real_catalog: Catalog) -> None:
    catalog = real_catalog.subset(real_catalog.ids[:50], name="fifty")
    pixels, failed = pixel_tensor(catalog, (32, 24), progress=False)
    assert pixels.shape == (50, 3, 32, 24) and pixels.dtype == torch.uint8 and not failed
    assert pixels.float().std() > 10
    cached = pixel_cache_path(catalog, (32, 24))
    cached.write_bytes(cached.read_bytes()[:1000])
    again, _ = pixel_tensor(catalog, (32, 24), progress=False)
    assert torch.equal(again, pixels)
