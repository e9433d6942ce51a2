"""Feature cache room: every item's image, text and item vectors under one backbone, computed once, kept on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, LoadReport
from assistant.core.errors import AssistantError
from assistant.core.storage import atomic_write, cache_dir
from assistant.vision.backbone import Backbone
from assistant.vision.preprocessing import decode_items, item_text

FEATURES_FORMAT = "fashion-assistant-features/1"
KINDS = ("image", "text", "item")

log = logging.getLogger(__name__)


class FeatureCacheError(AssistantError, ValueError):
    """A feature file that is missing, truncated, corrupt or for another catalog/backbone: rebuild it."""


@dataclass
class ItemFeatures:
    """Per-item vectors in catalog order, float32 and L2-normalised (an item whose image failed has zero image row).

    `item` holds the vectors the index searches (image vectors, fused with text when the backbone says so).
    """

    ids: list[str]
    image: np.ndarray
    text: np.ndarray
    item: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # id -> why its image could not be used
    backbone_id: str = ""
    fingerprint: str = ""

    def __post_init__(self) -> None:
        self._rows = {item_id: row for row, item_id in enumerate(self.ids)}
        if len(self._rows) != len(self.ids):
            raise ValueError("feature ids are not unique")
        for kind in KINDS:
            vectors = getattr(self, kind)
            if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != len(self.ids):
                raise ValueError(f"{kind} vectors must be float32 (N={len(self.ids)}, D); got {vectors.dtype} "
                                 f"{vectors.shape}")
        if not self.image.shape == self.text.shape == self.item.shape:
            raise ValueError("image, text and item vectors must have the same shape")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.item.shape[1])

    def row(self, item_id: str) -> int:
        """The row of an item's vectors."""
        try:
            return self._rows[item_id]
        except KeyError:
            raise KeyError(f"no features for item {item_id!r}") from None

    def _digest(self) -> str:
        digest = hashlib.sha256(json.dumps([self.ids, self.failed, self.backbone_id, self.fingerprint]).encode())
        for kind in KINDS:
            digest.update(np.ascontiguousarray(getattr(self, kind)).tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file with a checksum over ids and vectors, written atomically."""
        meta = {"format": FEATURES_FORMAT, "ids": json.dumps(self.ids), "failed": json.dumps(self.failed),
                "backbone_id": self.backbone_id, "fingerprint": self.fingerprint, "sha256": self._digest()}
        tensors = {kind: np.ascontiguousarray(getattr(self, kind)) for kind in KINDS}
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def report(self, source: str = "image features") -> LoadReport:
        """The items whose image failed at feature time (they keep only their text), in the load report's shape."""
        report = LoadReport(source=source, format="image features", loaded=len(self.ids) - len(self.failed))
        for item_id, why in self.failed.items():
            report.skip(f"id {item_id}", f"image failed at feature time: {why}")
        return report

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemFeatures:
        """Read a saved file; FeatureCacheError for anything short of the whole, checksummed file."""
        path = Path(path)
        try:
            with safe_open(str(path), "np") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != FEATURES_FORMAT:
                    raise FeatureCacheError(f"{path}: not a feature file (format {meta.get('format')!r})")
                vectors = {kind: handle.get_tensor(kind) for kind in KINDS}
            features = cls(ids=json.loads(meta["ids"]), failed=json.loads(meta["failed"]),
                           backbone_id=meta["backbone_id"], fingerprint=meta["fingerprint"], **vectors)
        except FeatureCacheError:
            raise
        except Exception as error:  # safetensors / json / shape errors all mean a damaged file
            raise FeatureCacheError(f"{path}: damaged feature file ({type(error).__name__}: {error})") from error
        if features._digest() != meta.get("sha256"):
            raise FeatureCacheError(f"{path}: checksum mismatch (the file was altered or partly written)")
        return features

def features_for(features: ItemFeatures, catalog: Catalog) -> ItemFeatures:
    """The rows of `features` for `catalog`'s items, in its order (e.g. one split of the catalog they came from)."""
    if list(features.ids) == catalog.ids:
        return features
    rows = [features.row(item_id) for item_id in catalog.ids]
    return dataclasses.replace(features, ids=catalog.ids, image=features.image[rows], text=features.text[rows],
                               item=features.item[rows],
                               failed={i: why for i, why in features.failed.items() if i in catalog},
                               fingerprint=catalog.fingerprint)



def features_path(backbone: Backbone, catalog: Catalog) -> Path:
    """cache_dir()/features/<backbone.id>-<catalog.fingerprint>.safetensors"""
    return cache_dir() / "features" / f"{backbone.id}-{catalog.fingerprint}.safetensors"


def compute_features(backbone: Backbone, catalog: Catalog, batch_size: int = 512, cache: bool = True,
                     progress: bool = True) -> ItemFeatures:
    """All items' vectors: loaded from the cache when it is whole and matches, else computed (and cached).

    Images are decoded by a thread pool one batch ahead of the model. An image that cannot be decoded is
    reported (logged, and listed in `failed`) and gets a zero image vector; the item's text still counts.
    """
    path = features_path(backbone, catalog)
    if cache and path.exists():
        try:
            features = ItemFeatures.load(path)
            if (features.ids == catalog.ids and features.backbone_id == backbone.id
                    and features.fingerprint == catalog.fingerprint and features.dim == backbone.dim):
                return features
            log.warning("%s is for other items; rebuilding it", path.name)
        except FeatureCacheError as error:
            log.warning("%s; rebuilding it", error)
    items = catalog.items
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]
    image_chunks: list[np.ndarray] = [np.zeros((0, backbone.dim), dtype=np.float32)]
    failed: dict[str, str] = {}
    bar = tqdm(total=len(items), desc="image features", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:

        def decode(index: int) -> Future | None:
            if index >= len(batches):
                return None
            return pool.submit(decode_items, catalog, batches[index], backbone.image_size)

        pending = decode(0)
        for index in range(len(batches)):
            pixels, bad = pending.result()
            pending = decode(index + 1)
            vectors = backbone.encode_images(pixels, batch_size=batch_size)
            if bad:
                for reason in bad.values():
                    log.warning("zero image vector for %s", reason)
                rows = [row for row, item in enumerate(batches[index]) if item.id in bad]
                vectors[rows] = 0.0
                failed.update(bad)
            image_chunks.append(vectors)
            bar.update(len(pixels))
    bar.close()
    image = np.concatenate(image_chunks)
    texts = [item_text(item) for item in items]
    text_chunks = [np.zeros((0, backbone.dim), dtype=np.float32)]
    for start in tqdm(range(0, len(texts), batch_size), desc="text features", unit_scale=batch_size,
                      disable=not progress):
        text_chunks.append(backbone.encode_texts(texts[start:start + batch_size], batch_size=batch_size))
    text = np.concatenate(text_chunks)
    features = ItemFeatures(ids=catalog.ids, image=image, text=text, item=backbone.fuse(image, text), failed=failed,
                            backbone_id=backbone.id, fingerprint=catalog.fingerprint)
    if cache:
        features.save(path)
    return features
