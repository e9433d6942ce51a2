"""Backbone room: open_clip image and text towers (pretrained or trained here), their input pipeline and files."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, ImageError, Item
from assistant.core.errors import AssistantError
from assistant.core.storage import atomic_write, atomic_write_text, cache_dir
from assistant.core.text_encoder import local_text_source

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

BACKBONE_FORMAT = "fashion-assistant-backbone/1"
TRAIN_STATE_FORMAT = "fashion-assistant-backbone-train-state/1"
PIXELS_FORMAT = "fashion-assistant-pixels/1"
BACKBONE_FILE = "backbone.safetensors"
TRAIN_STATE_FILE = "backbone-train-state.safetensors"
TRAIN_LOG_FILE = "backbone-train-log.json"
# Fields that do not change what a training run computes (so a run can resume when only these differ).
RUN_INDEPENDENT_FIELDS = ("device", "encode_batch_size", "cpu_bf16")
PRETRAINED_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")

log = logging.getLogger(__name__)


class BackboneError(AssistantError, RuntimeError):
    """A backbone that cannot be created or loaded; the message says what to do instead."""


@dataclass
class BackboneConfig:
    """The `backbone:` config section: which open_clip model, which weights, and how to train it here."""

    model: str = "fashion-vit-tiny"  # an open_clip model name (ours in assistant/model_configs/) or "hf-hub:org/repo"
    pretrained: str | None = None  # None: random init, trained here; an open_clip tag; a checkpoint file; "hf-hub:…"
    image_size: int | list[int] | None = None  # None: the model's own; int or [height, width]
    embed_dim: int | None = None  # None: the model's own; only changeable for a model trained from scratch
    fuse_text: float = 0.0  # item vector = normalise((1 - w) * image + w * own title/attribute text)
    epochs: int = 6  # 0: use the weights as they are
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    title_only: float = 0.5  # share of training texts that are the bare title (shoppers type titles, not labels)
    augment: bool = True  # random horizontal flip and a few pixels' shift
    attribute_loss: float = 0.0  # weight of a cross-entropy loss on the catalog's labels beside the CLIP loss
    attribute_min_count: int = 5  # labels seen fewer times than this are ignored by that loss
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)
    cpu_bf16: bool = True  # encode in bf16 on CPUs with native bf16 (AVX512-BF16/AMX): ~2x faster, cos > 0.999
    encode_batch_size: int = 512

    def __post_init__(self) -> None:
        if not 0.0 <= self.fuse_text <= 1.0:
            raise ValueError(f"backbone fuse_text must be within [0, 1], not {self.fuse_text}")
        if not 0.0 <= self.title_only <= 1.0:
            raise ValueError(f"backbone title_only must be within [0, 1], not {self.title_only}")
        if self.attribute_loss < 0:
            raise ValueError(f"backbone attribute_loss must be >= 0, not {self.attribute_loss}")
        if self.epochs < 0 or self.batch_size < 2:
            raise ValueError("backbone epochs must be >= 0 and batch_size >= 2")

    @property
    def source(self) -> tuple[str, str | None]:
        """(open_clip model name, pretrained tag or file): an hf-hub id in `pretrained` becomes the model name."""
        if self.pretrained and self.pretrained.startswith("hf-hub:"):
            return self.pretrained, None
        return self.model, self.pretrained


def item_text(item: Item) -> str:
    """The text an item is trained and indexed with: its title, then its attribute values."""
    values = [value for value in item.attributes.values() if value and value.lower() not in item.title.lower()]
    return f"{item.title}. {' '.join(values)}" if values else item.title


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def letterbox(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An RGB image scaled to fit (height, width) without distortion, padded with its corner colour: uint8 HxWx3."""
    image = image.convert("RGB")
    height, width = size
    scale = min(width / image.width, height / image.height)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if fitted != image.size:
        image = image.resize(fitted, Image.Resampling.BICUBIC)
    if fitted == (width, height):
        return np.asarray(image)
    canvas = Image.new("RGB", (width, height), image.getpixel((0, 0)))
    canvas.paste(image, ((width - fitted[0]) // 2, (height - fitted[1]) // 2))
    return np.asarray(canvas)


def images_to_tensor(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """PIL images as one uint8 tensor (N, 3, height, width), letterboxed."""
    if not images:
        return torch.zeros((0, 3, *size), dtype=torch.uint8)
    return torch.from_numpy(np.stack([letterbox(image, size) for image in images])).permute(0, 3, 1, 2).contiguous()


def decode_items(catalog: Catalog, items: Sequence[Item], size: tuple[int, int],
                 pool: ThreadPoolExecutor | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Decode items' images into a uint8 tensor; an unreadable one becomes zeros and is returned as {id: reason}."""

    def one(item: Item) -> np.ndarray | str:
        try:
            return letterbox(catalog.open_image(item), size)
        except ImageError as error:
            return str(error)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return f"item {item.id}: cannot decode image: {error}"

    decoded = list(pool.map(one, items)) if pool else [one(item) for item in items]
    pixels = np.zeros((len(items), *size, 3), dtype=np.uint8)
    failed: dict[str, str] = {}
    for row, (item, result) in enumerate(zip(items, decoded, strict=True)):
        if isinstance(result, str):
            failed[item.id] = result
        else:
            pixels[row] = result
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), failed


def _images_digest(catalog: Catalog) -> str:
    """Which image files, in which order, at which size and modification time."""
    digest = hashlib.sha256()
    for item in catalog:
        path = item.image_path
        stat = path.stat() if path and path.exists() else None
        record = [str(path.resolve()) if path else "", stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1]
        digest.update(json.dumps(record).encode("utf-8"))
    return digest.hexdigest()[:16]


def pixel_cache_path(catalog: Catalog, image_size: int | Sequence[int]) -> Path:
    """cache_dir()/pixels/<catalog fingerprint>-<images digest>-<H>x<W>.safetensors"""
    height, width = _pair(image_size)
    return cache_dir() / "pixels" / f"{catalog.fingerprint}-{_images_digest(catalog)}-{height}x{width}.safetensors"


def pixel_tensor(catalog: Catalog, image_size: int | Sequence[int], progress: bool = True,
                 cache: bool = True) -> tuple[torch.Tensor, dict[str, str]]:
    """All the catalog's images decoded once into uint8 (N, 3, H, W), cached on disk beside the other caches.

    The cache file is keyed by the catalog's images (paths, sizes, mtimes) and the image size, written
    atomically, and rebuilt when it cannot be read in full. Unreadable images are zeros, returned as {id: reason}.
    """
    size = _pair(image_size)
    path = pixel_cache_path(catalog, size)
    ids = catalog.ids
    if cache and path.exists():
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                pixels = handle.get_tensor("pixels")
            if (meta.get("format") == PIXELS_FORMAT and json.loads(meta["ids"]) == ids
                    and tuple(pixels.shape) == (len(ids), 3, *size)):
                return pixels, json.loads(meta["failed"])
            log.warning("%s does not match the catalog; rebuilding it", path.name)
        except Exception as error:  # a truncated or foreign file: any reader error means rebuild
            log.warning("cannot read %s (%s); rebuilding it", path.name, error)
    chunks, failed = [], {}
    batch = 1024
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for start in tqdm(range(0, len(ids), batch), desc="decoding images", unit_scale=batch, disable=not progress):
            pixels, bad = decode_items(catalog, catalog.items[start:start + batch], size, pool)
            chunks.append(pixels)
            failed.update(bad)
    for reason in failed.values():
        log.warning("skipping image: %s", reason)
    pixels = torch.cat(chunks) if chunks else torch.zeros((0, 3, *size), dtype=torch.uint8)
    if cache:
        meta = {"format": PIXELS_FORMAT, "ids": json.dumps(ids), "failed": json.dumps(failed)}
        atomic_write(path, lambda tmp: save_file({"pixels": pixels}, str(tmp), metadata=meta))
    return pixels, failed


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _weights_help(what: str, model_name: str, pretrained: str | None) -> str:
    create_args = f"'{model_name}'" + (f", pretrained='{pretrained}'" if pretrained else "")
    architecture = model_name if not model_name.startswith("hf-hub:") else "<its architecture, e.g. ViT-B-16>"
    return (
        f"pretrained weights {what} are not on this machine and HF_HUB_OFFLINE=1 forbids downloading them. "
        "Either (1) on a machine with internet run `python -c \"import open_clip, torch; "
        f"m = open_clip.create_model({create_args}); torch.save(m.state_dict(), 'weights.pt')\"`, copy weights.pt "
        f"here and set `backbone: {{model: {architecture}, pretrained: /path/to/weights.pt}}` (or copy that "
        "machine's Hugging Face cache folder, ~/.cache/huggingface/hub); or (2) use a config that trains its "
        "backbone here (configs/demo.yaml: `model: fashion-vit-tiny`, configs/fpi-cpu.yaml: `model: "
        "fashion-regnet-tiny`, both with `pretrained: null`)")


def _hub_file_cached(repo_id: str, filenames: Sequence[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in filenames)


def _check_weights_reachable(model_name: str, pretrained: str | None) -> None:
    """Offline, fail at once (before building a large model) when named weights are not in the local caches."""
    if not _offline():
        return
    if model_name.startswith("hf-hub:"):
        repo_id = model_name[len("hf-hub:"):]
        if not (_hub_file_cached(repo_id, ["open_clip_config.json"]) and _hub_file_cached(
                repo_id, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])):
            raise BackboneError(f"{model_name}: " + _weights_help(model_name, model_name, None))
        return
    if not pretrained or Path(pretrained).expanduser().is_file():
        return
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        return  # not a tag: create_backbone reports an unknown tag or a missing file
    reachable = False
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        alternatives = [filename] + ([filename.rsplit(".", 1)[0] + ".safetensors"] if "." in filename else [])
        reachable = _hub_file_cached(repo_id, alternatives)
    elif tag_cfg.get("url"):
        reachable = (Path("~/.cache/clip").expanduser() / os.path.basename(tag_cfg["url"])).is_file()
    if not reachable:
        raise BackboneError(f"{model_name} / {pretrained}: "
                            + _weights_help(f"'{model_name}' / '{pretrained}'", model_name, pretrained))


def _local_text_cfg(model_cfg: dict[str, Any], load_text_weights: bool) -> dict[str, Any] | None:
    """A Hugging Face text tower's config pointing at local files (MiniLM: its verified folder), else None."""
    text_cfg = copy.deepcopy(model_cfg.get("text_cfg", {}))
    if "hf_model_name" not in text_cfg:
        return None
    text_cfg["hf_model_name"] = local_text_source(text_cfg["hf_model_name"])
    text_cfg["hf_model_pretrained"] = load_text_weights
    return text_cfg


def _tokenizer(model_cfg: dict[str, Any]) -> Any:
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length") or open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(local_text_source(text_cfg["hf_tokenizer_name"]),
                                               context_length=context_length,
                                               tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision for CUDA training and encoding (bf16 where supported, else fp16)."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 would be slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


class Backbone:
    """An open_clip model with its tokenizer and preprocessing: images and texts in, L2-normalised vectors out."""

    def __init__(self, model: torch.nn.Module, config: BackboneConfig, model_cfg: dict[str, Any],
                 device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.model_cfg = model_cfg
        self.device = device
        self.tokenizer = _tokenizer(model_cfg)
        preprocess = open_clip.get_model_preprocess_cfg(model)
        self.image_size = _pair(model.visual.image_size)
        self._mean = torch.tensor(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        self._id: str | None = None

    def __repr__(self) -> str:
        return f"Backbone({self.id}, dim={self.dim}, image_size={self.image_size}, device={self.device})"

    @property
    def dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def id(self) -> str:
        """Architecture + weights + everything else that changes the vectors: the feature cache key."""
        if self._id is None:
            digest = hashlib.sha256()
            settings = {"format": BACKBONE_FORMAT, "image_size": self.image_size, "fuse_text": self.config.fuse_text,
                        "mean": self._mean.flatten().tolist(), "std": self._std.flatten().tolist()}
            digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
            for name, tensor in self.model.state_dict().items():
                digest.update(name.encode("utf-8"))
                digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
            model_name = self.config.source[0].removeprefix("hf-hub:")
            self._id = f"{re.sub(r'[^A-Za-z0-9._]+', '-', model_name)}-{digest.hexdigest()[:12]}"
        return self._id

    def pixels(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Images as the uint8 (N, 3, H, W) tensor this backbone takes (PIL images are letterboxed)."""
        pixels = images if isinstance(images, torch.Tensor) else images_to_tensor(list(images), self.image_size)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != self.image_size:
            raise ValueError(f"images must be (N, 3, {self.image_size[0]}, {self.image_size[1]}); "
                             f"got {tuple(pixels.shape)}")
        return pixels

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) pixels -> the model's normalised float input, on its device."""
        pixels = pixels.to(self.device, non_blocking=True)
        floats = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        return (floats - self._mean.to(self.device)) / self._std.to(self.device)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def _encode_precision(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cpu" and self.config.cpu_bf16 and cpu_has_native_bf16():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return _autocast(self.device, self.config.amp)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self._encode_precision():
                yield
        finally:
            self.model.train(was_training)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """(N, dim) float32 L2-normalised image vectors; a tensor is uint8 (N, 3, H, W) or float in [0, 1]."""
        pixels = self.pixels(images)
        batch_size = batch_size or self.config.encode_batch_size
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with self._inference():
            for start in range(0, len(pixels), batch_size):
                vectors = self.model.encode_image(self.normalise(pixels[start:start + batch_size]))
                out.append(F.normalize(vectors.float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """(N, dim) float32 L2-normalised text vectors."""
        batch_size = batch_size or self.config.encode_batch_size
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with self._inference():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[start:start + batch_size]).to(self.device)
                out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu().numpy())
        return np.concatenate(out)

    def fuse(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Item vectors: image vectors blended with the items' own text vectors by `fuse_text`, re-normalised."""
        weight = self.config.fuse_text
        fused = image if weight == 0 else (1.0 - weight) * image + weight * text
        norms = np.linalg.norm(fused, axis=1, keepdims=True)
        return (fused / np.maximum(norms, 1e-12)).astype(np.float32)

    def save(self, path: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
        """Weights + config in one safetensors file (a folder gets backbone.safetensors), written atomically."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / BACKBONE_FILE
        tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in self.model.state_dict().items()}
        meta = {"format": BACKBONE_FORMAT, "config": json.dumps(dataclasses.asdict(self.config)),
                "model_cfg": json.dumps(self.model_cfg), "id": self.id, **(extra or {})}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> Backbone:
        """A backbone saved with `save` (a file or a model folder); works offline, architecture included."""
        path = Path(path)
        if path.is_dir():
            path = path / BACKBONE_FILE
        if not path.is_file():
            raise BackboneError(f"{path}: no backbone file (train one with train_backbone, or save one)")
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            if meta.get("format") != BACKBONE_FORMAT:
                raise BackboneError(f"{path}: not a backbone file (format {meta.get('format')!r})")
            config = BackboneConfig(**json.loads(meta["config"]))
            model_cfg = json.loads(meta["model_cfg"])
            state = load_file(str(path))
        except BackboneError:
            raise
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise BackboneError(f"{path}: damaged or not a backbone file ({error}); save or train it again") from error
        if device:
            config = dataclasses.replace(config, device=device)
        model = _instantiate(model_cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise BackboneError(f"{path}: weights do not fit the stored architecture: {error}") from error
        return cls(model, config, model_cfg, _device(config.device))


def _instantiate(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip CLIP model with random weights from a resolved model config (no download, no registry)."""
    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise BackboneError("CoCa (captioning) models are not supported as a backbone; use a CLIP model")
    text_cfg = _local_text_cfg(cfg, load_text_weights=False)
    custom_text = cfg.pop("custom_text", False) or text_cfg is not None
    if text_cfg is not None:
        cfg["text_cfg"] = text_cfg
    return (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)


def create_backbone(config: BackboneConfig) -> Backbone:
    """The one factory: a registered model (ours or open_clip's) with random, tagged, hf-hub or local-file weights."""
    model_name, pretrained = config.source
    _check_weights_reachable(model_name, pretrained)
    kwargs: dict[str, Any] = {}
    if model_name.startswith("hf-hub:"):
        model_cfg = None
    else:
        model_cfg = open_clip.get_model_config(model_name)
        if model_cfg is None:
            ours = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
            raise BackboneError(f"unknown open_clip model {model_name!r}: use one of ours {ours}, an open_clip name "
                                "(open_clip.list_models()) or an 'hf-hub:org/repo' id")
        if pretrained and not open_clip.get_pretrained_cfg(model_name, pretrained):
            path = Path(pretrained).expanduser()
            if not path.is_file():
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                looks_like_file = path.suffix in PRETRAINED_SUFFIXES or os.sep in pretrained
                raise BackboneError(f"{model_name}: checkpoint file {pretrained} not found" if looks_like_file else
                                    f"{model_name}: unknown pretrained tag {pretrained!r}; tags: {tags or 'none'}; "
                                    "or give a checkpoint file path")
            pretrained = str(path)
        if "multimodal_cfg" in model_cfg:
            raise BackboneError(f"{model_name}: CoCa (captioning) models are not supported as a backbone")
        text_cfg = _local_text_cfg(model_cfg, load_text_weights=pretrained is None)
        if text_cfg is not None:
            kwargs["text_cfg"] = text_cfg
        if config.embed_dim is not None and config.embed_dim != model_cfg["embed_dim"]:
            if pretrained:
                raise BackboneError(f"{model_name}: embed_dim {config.embed_dim} differs from the pretrained "
                                    f"weights' {model_cfg['embed_dim']}; leave embed_dim unset")
            kwargs["embed_dim"] = config.embed_dim
    device = _device(config.device)
    try:
        with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
            torch.manual_seed(config.seed)
            model = open_clip.create_model(
                model_name, pretrained=pretrained, device="cpu",
                require_pretrained=bool(pretrained) or model_name.startswith("hf-hub:"),
                force_image_size=tuple(_pair(config.image_size)) if config.image_size is not None else None,
                **kwargs)
    except Exception as error:
        raise BackboneError(f"cannot create backbone {model_name!r} (pretrained={pretrained!r}): {error}") from error
    if model_cfg is None:
        model_cfg = open_clip.get_model_config(model_name)
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.update({k: v for k, v in kwargs.items() if k != "text_cfg"})
    model_cfg["vision_cfg"]["image_size"] = list(_pair(model.visual.image_size))
    return Backbone(model, config, model_cfg, device)


def _run_key(catalog: Catalog, config: BackboneConfig) -> str:
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_INDEPENDENT_FIELDS}
    return hashlib.sha256(json.dumps([catalog.fingerprint, settings], sort_keys=True).encode()).hexdigest()[:16]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    def exempt(name: str, param: torch.Tensor) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exempt(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exempt(n, p)], "weight_decay": weight_decay}]


def _save_train_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                      step: int, run_key: str) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for param_id, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optim.{param_id}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    meta = {"format": TRAIN_STATE_FORMAT, "epoch": str(epoch), "step": str(step), "run_key": run_key}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _load_train_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      run_key: str) -> tuple[int, int] | None:
    """Restore model and optimizer from a checkpoint of this same run; (epochs done, steps done), or None."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != TRAIN_STATE_FORMAT or meta.get("run_key") != run_key:
            log.warning("%s is from another run (config or catalog changed); starting afresh", path.name)
            return None
        tensors = load_file(str(path))
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer_state = optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, param_id, key = name.split(".", 2)
                state.setdefault(int(param_id), {})[key] = value
        optimizer_state["state"] = state
        optimizer.load_state_dict(optimizer_state)
        return int(meta["epoch"]), int(meta["step"])
    except Exception as error:  # a damaged checkpoint costs the run, never the correctness
        log.warning("cannot resume from %s (%s); starting afresh", path.name, error)
        return None


def _augment(pixels: torch.Tensor, generator: torch.Generator, shift: int = 3) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `shift` pixels (edge-padded); colours are left alone."""
    flip = torch.rand(len(pixels), generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels.float(), (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (len(pixels), 2), generator=generator).tolist()
    height, width = pixels.shape[-2:]
    return torch.stack([padded[i, :, dy:dy + height, dx:dx + width] for i, (dy, dx) in enumerate(offsets)]) / 255.0


class LabelHeads(torch.nn.Module):
    """Linear classifiers on the image embedding, one per labelled attribute, used only while training.

    They add supervision where a catalog has labels (articleType, colour, ...): the embedding then separates
    classes that titles alone do not. Labels rarer than `min_count` and missing labels are ignored (-1).
    """

    def __init__(self, catalog: Catalog, dim: int, min_count: int) -> None:
        super().__init__()
        columns: dict[str, torch.Tensor] = {}
        for name, counts in catalog.vocabulary().items():
            kept = sorted(value for value, count in counts.items() if count >= min_count and "," not in value)
            if len(kept) < 2:
                continue
            code = {value: index for index, value in enumerate(kept)}
            columns[name] = torch.tensor([code.get(item.attributes.get(name, ""), -1) for item in catalog])
        self.labels = columns
        self.heads = torch.nn.ModuleDict({name: torch.nn.Linear(dim, int(column.max()) + 1)
                                          for name, column in columns.items()})

    def loss(self, image_features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over attributes for a batch of (normalised) image embeddings of catalog rows."""
        losses = []
        for name, head in self.heads.items():
            labels = self.labels[name][rows].to(image_features.device)
            if (labels >= 0).any():
                losses.append(F.cross_entropy(head(image_features.float()) / 0.1, labels, ignore_index=-1))
        return torch.stack(losses).mean() if losses else image_features.new_zeros(())


def train_backbone(catalog: Catalog, config: BackboneConfig, out_dir: str | os.PathLike,
                   progress: bool = True) -> Backbone:
    """Contrastive (CLIP loss) training of image <-> title + attribute text on `catalog`; saves and returns it.

    Pass the training split for honest evaluation. Writes out_dir/backbone.safetensors at the end and a
    resumable checkpoint after every epoch: a killed run continues from its last finished epoch, and a
    finished run with the same catalog and config is loaded instead of trained again. epochs=0 saves the
    (pretrained) weights unchanged.
    """
    out_dir = Path(out_dir)
    final_path, state_path = out_dir / BACKBONE_FILE, out_dir / TRAIN_STATE_FILE
    run_key = _run_key(catalog, config)
    if final_path.exists():
        try:
            with safe_open(str(final_path), "pt") as handle:
                if (handle.metadata() or {}).get("run_key") == run_key:
                    return Backbone.load(final_path, device=config.device)
        except Exception as error:
            log.warning("cannot read %s (%s); training again", final_path, error)
    backbone = create_backbone(config)
    if config.epochs == 0:
        backbone.save(final_path, extra={"run_key": run_key})
        return backbone
    pixels, failed = pixel_tensor(catalog, backbone.image_size, progress=progress)
    usable = torch.tensor([row for row, item in enumerate(catalog) if item.id not in failed], dtype=torch.long)
    if len(usable) < 2:
        raise BackboneError(f"{catalog.name}: fewer than 2 readable images; nothing to train on")
    tokens_full = backbone.tokenize([item_text(item) for item in catalog])
    tokens_title = backbone.tokenize([item.title for item in catalog])
    model, device = backbone.model, backbone.device
    label_heads = LabelHeads(catalog, backbone.dim, config.attribute_min_count).to(device)
    trained_modules = torch.nn.ModuleDict({"model": model, "label_heads": label_heads})
    # fused: one kernel for all parameters (on CPU the step took 58 ms unfused, 7 ms fused for fashion-vit-tiny)
    optimizer = torch.optim.AdamW(_param_groups(trained_modules, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.98), eps=1e-6, fused=device.type in ("cpu", "cuda"))
    batch_size = min(config.batch_size, len(usable))
    steps_per_epoch = len(usable) // batch_size
    total_steps = config.epochs * steps_per_epoch
    warmup = min(config.warmup_steps, max(1, total_steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return config.lr * (step + 1) / warmup
        return 0.5 * config.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    loss_fn = open_clip.ClipLoss()
    use_scaler = device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    resumed = _load_train_state(state_path, trained_modules, optimizer, run_key)
    start_epoch, step = resumed or (0, 0)
    log_path = out_dir / TRAIN_LOG_FILE
    history: list[dict[str, Any]] = []
    if resumed and log_path.exists():
        history = [h for h in json.loads(log_path.read_text(encoding="utf-8")) if h["epoch"] <= start_epoch]
    if resumed:
        log.info("resuming backbone training after epoch %d of %d", start_epoch, config.epochs)
    for epoch in range(start_epoch, config.epochs):
        trained_modules.train()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = usable[torch.randperm(len(usable), generator=generator)]
        losses: list[float] = []
        started = time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"backbone epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for batch in bar:
            rows = order[batch * batch_size:(batch + 1) * batch_size]
            images = _augment(pixels[rows], generator) if config.augment else pixels[rows].float() / 255.0
            title_only = (torch.rand(len(rows), generator=generator) < config.title_only)[:, None]
            tokens = torch.where(title_only, tokens_title[rows], tokens_full[rows]).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            with _autocast(device, config.amp):
                image_features, text_features, logit_scale = model(backbone.normalise(images), tokens)[:3]
                loss = loss_fn(image_features, text_features, logit_scale)
                if config.attribute_loss > 0:
                    loss = loss + config.attribute_loss * label_heads.loss(image_features, rows)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(time.time() - started, 1),
                        "images_per_second": round(len(losses) * batch_size / (time.time() - started), 1)})
        atomic_write_text(log_path, json.dumps(history, indent=1))  # before the state: resuming trims it to match
        _save_train_state(state_path, trained_modules, optimizer, epoch + 1, step, run_key)
    trained = Backbone(model, config, backbone.model_cfg, device)
    trained.save(final_path, extra={"run_key": run_key, "images_failed": json.dumps(sorted(failed))})
    state_path.unlink(missing_ok=True)
    return trained


def shuffled_pairs(catalog: Catalog, seed: int = 0) -> Catalog:
    """The same texts with other items' images: a control with no image-text signal."""
    order = list(range(len(catalog)))
    random.Random(seed).shuffle(order)
    items = [Item(item.id, catalog.items[other].image_path, item.title, item.category, item.attributes)
             for item, other in zip(catalog.items, order, strict=True)]
    return Catalog(items, name=f"{catalog.name}:shuffled")


def text_image_recall(backbone: Backbone, catalog: Catalog, ks: Sequence[int] = (1, 5, 10),
                      progress: bool = False) -> dict[str, float]:
    """Text -> image retrieval with each item's title as the query over all the catalog's images: R@k, median rank.

    Ties count against the item (a constant model scores chance, not perfect).
    """
    pixels, _ = pixel_tensor(catalog, backbone.image_size, progress=progress)
    images = torch.from_numpy(backbone.encode_images(pixels))
    titles = torch.from_numpy(backbone.encode_texts([item.title for item in catalog]))
    ranks = []
    for start in range(0, len(titles), 1024):
        scores = titles[start:start + 1024] @ images.T
        own = scores[torch.arange(len(scores)), torch.arange(start, start + len(scores))]
        ranks.append((scores >= own[:, None]).sum(dim=1) - 1)
    rank = torch.cat(ranks).float()
    result = {f"R@{k}": round(float((rank < k).float().mean()), 4) for k in ks}
    result["median_rank"] = float(rank.median()) + 1
    return result
