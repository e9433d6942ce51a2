"""Backbone room: the config, the one factory of open_clip image and text towers, and the Backbone (encode, files)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
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

from assistant.core.errors import AssistantError
from assistant.core.storage import atomic_write
from assistant.core.text_encoder import local_text_source
from assistant.core.training import MixedPrecision, load_module_weights, module_weights, resolve_device
from assistant.vision.preprocessing import images_to_tensor, size_pair

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

BACKBONE_FORMAT = "fashion-assistant-backbone/1"
BACKBONE_FILE = "backbone.safetensors"
PRETRAINED_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


class BackboneError(AssistantError, RuntimeError):
    """A backbone that cannot be created or loaded; the message says what to do instead."""


@dataclass
class BackboneConfig:
    """The `backbone:` config section: which open_clip model, which weights, and how to train it here."""

    model: str = "fashion-vit-tiny"  # open_clip model name (ours in vision/model_configs/) or "hf-hub:org/repo"
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
    device: str = "auto"  # auto: cuda, then mps, then cpu
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
        self.image_size = size_pair(model.visual.image_size)
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
        return MixedPrecision(self.device, self.config.amp).autocast()

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
        tensors = module_weights(self.model)
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
            load_module_weights(model, state)
        except RuntimeError as error:
            raise BackboneError(f"{path}: weights do not fit the stored architecture: {error}") from error
        return cls(model, config, model_cfg, resolve_device(config.device))


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
    device = resolve_device(config.device)
    try:
        with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
            torch.manual_seed(config.seed)
            model = open_clip.create_model(
                model_name, pretrained=pretrained, device="cpu",
                require_pretrained=bool(pretrained) or model_name.startswith("hf-hub:"),
                force_image_size=tuple(size_pair(config.image_size)) if config.image_size is not None else None,
                **kwargs)
    except Exception as error:
        raise BackboneError(f"cannot create backbone {model_name!r} (pretrained={pretrained!r}): {error}") from error
    if model_cfg is None:
        model_cfg = open_clip.get_model_config(model_name)
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.update({k: v for k, v in kwargs.items() if k != "text_cfg"})
    model_cfg["vision_cfg"]["image_size"] = list(size_pair(model.visual.image_size))
    return Backbone(model, config, model_cfg, device)
