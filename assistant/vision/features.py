"""Feature cache room: every item's image, text and item vectors under one backbone, plus its foreground colour
features, computed in one pass over the images and kept on disk."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from assistant.core.catalog import Catalog, Item, LoadReport
from assistant.core.errors import AssistantError
from assistant.core.storage import atomic_write, cache_dir
from assistant.vision.backbone import Backbone
from assistant.vision.preprocessing import decode_items, item_text

FEATURES_FORMAT = "fashion-assistant-features/2"  # /2 added the colour features
OLD_FORMATS = ("fashion-assistant-features/1",)  # read, colour features recomputed from the images on first use
KINDS = ("image", "text", "item")

# Foreground colour features (`colour_features`), in CIELAB (the ICC profile's D50 white, 8-bit). A change to how
# they are measured that keeps COLOUR_DIM needs a new FEATURES_FORMAT; a change of COLOUR_DIM is noticed by itself.
BACKGROUND_DELTA = 12.0  # Lab distance from the border colour within which a pixel is background
PLAIN_BACKGROUND = (70.0, 15.0)  # a border colour counts as a backdrop when lighter than this L, below this chroma
MIN_FOREGROUND = 0.03  # fewer foreground pixels than this share: the whole image is the item (a white shirt)
ACHROMATIC = 10.0  # chroma below which a pixel is black / grey / white by its lightness
GREY_BINS = 8  # lightness bins of achromatic pixels
HUE_BINS, LIGHTNESS_EDGES = 24, (30.0, 50.0, 70.0)  # chromatic pixels: hue sectors x lightness bands
HISTOGRAM_BINS = GREY_BINS + HUE_BINS * (len(LIGHTNESS_EDGES) + 1)
# where each part sits in a colour feature row (Lab values / 100)
PRESENT, SHARE, MEAN_LAB, CENTRE_LAB, SPREAD_LAB, BORDER_LAB = 0, 1, slice(2, 5), slice(5, 8), slice(8, 11), \
    slice(11, 14)
HISTOGRAM = slice(14, 14 + HISTOGRAM_BINS)
COLOUR_DIM = 14 + HISTOGRAM_BINS

log = logging.getLogger(__name__)


class FeatureCacheError(AssistantError, ValueError):
    """A feature file that is missing, truncated, corrupt or for another catalog/backbone: rebuild it."""


@dataclass
class ItemFeatures:
    """Per-item vectors in catalog order, float32 and L2-normalised (an item whose image failed has zero image row).

    `item` holds the vectors the index searches (image vectors, fused with text when the backbone says so).
    `colour` holds each image's foreground colour features (`colour_features`; zeros where the image failed),
    or None for vectors made without the images' pixels.
    """

    ids: list[str]
    image: np.ndarray
    text: np.ndarray
    item: np.ndarray
    failed: dict[str, str] = field(default_factory=dict)  # id -> why its image could not be used
    backbone_id: str = ""
    fingerprint: str = ""
    colour: np.ndarray | None = None

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
        if self.colour is not None and (self.colour.dtype != np.float32 or self.colour.ndim != 2
                                        or len(self.colour) != len(self.ids)):
            raise ValueError(f"colour features must be float32 (N={len(self.ids)}, C); got {self.colour.dtype} "
                             f"{self.colour.shape}")

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

    def _tensors(self) -> dict[str, np.ndarray]:
        tensors = {kind: np.ascontiguousarray(getattr(self, kind)) for kind in KINDS}
        if self.colour is not None:
            tensors["colour"] = np.ascontiguousarray(self.colour)
        return tensors

    def _digest(self) -> str:
        digest = hashlib.sha256(json.dumps([self.ids, self.failed, self.backbone_id, self.fingerprint]).encode())
        for array in self._tensors().values():
            digest.update(array.tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file with a checksum over ids and vectors, written atomically."""
        meta = {"format": FEATURES_FORMAT, "ids": json.dumps(self.ids), "failed": json.dumps(self.failed),
                "backbone_id": self.backbone_id, "fingerprint": self.fingerprint, "sha256": self._digest()}
        tensors = self._tensors()
        return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    def report(self, source: str = "image features") -> LoadReport:
        """The items whose image failed at feature time (they keep only their text), in the load report's shape."""
        report = LoadReport(source=source, format="image features", loaded=len(self.ids) - len(self.failed))
        for item_id, why in self.failed.items():
            report.skip(f"id {item_id}", f"image failed at feature time: {why}")
        return report

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemFeatures:
        """Read a saved file; FeatureCacheError for anything short of the whole, checksummed file.

        A file of an older format loads without colour features (`colour` None)."""
        path = Path(path)
        try:
            with safe_open(str(path), "np") as handle:
                meta = handle.metadata() or {}
                if meta.get("format") not in (FEATURES_FORMAT, *OLD_FORMATS):
                    raise FeatureCacheError(f"{path}: not a feature file (format {meta.get('format')!r})")
                if meta["format"] == FEATURES_FORMAT and "colour" not in handle.keys():
                    raise FeatureCacheError(f"{path}: no colour features in a {FEATURES_FORMAT} file")
                vectors = {kind: handle.get_tensor(kind) for kind in (*KINDS, "colour") if kind in handle.keys()}
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
                               colour=None if features.colour is None else features.colour[rows],
                               failed={i: why for i, why in features.failed.items() if i in catalog},
                               fingerprint=catalog.fingerprint)


@functools.cache
def _srgb_to_lab() -> ImageCms.ImageCmsTransform:
    # NOCACHE: littlecms' one-pixel cache is not safe across the decoding threads
    return ImageCms.buildTransformFromOpenProfiles(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                                   "RGB", "LAB", flags=ImageCms.Flags.NOCACHE)


def image_lab(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) as float32 CIELAB (L 0-100, a and b about -128-127), converted by littlecms."""
    shape = pixels.shape
    strip = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, shape[-2], 3))
    raw = np.asarray(ImageCms.applyTransform(strip, _srgb_to_lab()))  # mode LAB: L scaled to 0-255, a/b as int8
    lab = raw.view(np.int8).astype(np.float32)
    lab[..., 0] = raw[..., 0] * (100.0 / 255.0)
    return lab.reshape(shape)


def colour_features(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """What colour the items in uint8 images (a numpy (N, H, W, 3) or a torch (N, 3, H, W)) are, from their
    foreground pixels.

    The background is the pixels within BACKGROUND_DELTA of the image's border colour (its median), when that is
    a plain light backdrop (a product photo on white); when fewer than MIN_FOREGROUND of the pixels are left (a
    white item on white) the whole image counts. Per image, float32 (N, COLOUR_DIM), laid out as PRESENT (1; a
    failed image's zero row has 0), SHARE (of foreground pixels), the foreground's mean Lab, the mean Lab of its
    central half, its Lab standard deviation, the border's Lab, then HISTOGRAM, the foreground's share in
    GREY_BINS lightness bins of achromatic pixels and HUE_BINS hue sectors x lightness bands of chromatic ones.
    """
    if isinstance(pixels, torch.Tensor):
        pixels = pixels.permute(0, 2, 3, 1).numpy() if pixels.ndim == 4 else pixels.numpy()
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"colour_features needs uint8 images, numpy (N, H, W, 3) or torch (N, 3, H, W); got "
                         f"{pixels.dtype} {pixels.shape}")
    count, height, width, _ = pixels.shape
    out = np.zeros((count, COLOUR_DIM), np.float32)
    if count == 0:
        return out
    lab = image_lab(pixels).reshape(count, height * width, 3)
    edge, centre = np.zeros((height, width), bool), np.zeros((height, width), bool)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    centre[height // 4: height - height // 4, width // 4: width - width // 4] = True
    border = np.median(lab[:, edge.ravel()], axis=1)  # (N, 3)
    backdrop = (border[:, 0] > PLAIN_BACKGROUND[0]) & (np.hypot(border[:, 1], border[:, 2]) < PLAIN_BACKGROUND[1])
    foreground = (np.linalg.norm(lab - border[:, None], axis=-1) > BACKGROUND_DELTA) | ~backdrop[:, None]
    share = foreground.mean(axis=1)
    foreground[share < MIN_FOREGROUND] = True
    central = foreground & centre.ravel()
    central[~central.any(axis=1)] = True
    weights = foreground / foreground.sum(axis=1, keepdims=True)
    mean = np.einsum("np,npc->nc", weights, lab)
    lightness, chroma = lab[..., 0], np.hypot(lab[..., 1], lab[..., 2])
    grey_bin = np.minimum((lightness * (GREY_BINS / 100.0)).astype(np.int64), GREY_BINS - 1)
    hue = ((np.arctan2(lab[..., 2], lab[..., 1]) + np.pi) * (HUE_BINS / (2 * np.pi))).astype(np.int64) % HUE_BINS
    band = np.searchsorted(np.asarray(LIGHTNESS_EDGES, np.float32), lightness, side="right")
    bins = np.where(chroma < ACHROMATIC, grey_bin, GREY_BINS + hue * (len(LIGHTNESS_EDGES) + 1) + band)
    offsets = np.arange(count)[:, None] * HISTOGRAM_BINS
    histogram = np.bincount((bins + offsets).ravel(), weights=weights.ravel(), minlength=count * HISTOGRAM_BINS)
    out[:, PRESENT], out[:, SHARE] = 1.0, share
    out[:, MEAN_LAB] = mean / 100.0
    out[:, CENTRE_LAB] = np.einsum("np,npc->nc", central / central.sum(axis=1, keepdims=True), lab) / 100.0
    out[:, SPREAD_LAB] = np.sqrt(np.einsum("np,npc->nc", weights, (lab - mean[:, None]) ** 2)) / 100.0
    out[:, BORDER_LAB] = border / 100.0
    out[:, HISTOGRAM] = histogram.reshape(count, HISTOGRAM_BINS)
    return out


def features_path(backbone: Backbone, catalog: Catalog) -> Path:
    """cache_dir()/features/<backbone.id>-<catalog.fingerprint>.safetensors"""
    return cache_dir() / "features" / f"{backbone.id}-{catalog.fingerprint}.safetensors"


def _decoded_batches(catalog: Catalog, size: tuple[int, int], batch_size: int, progress: bool
                     ) -> Iterator[tuple[Sequence[Item], torch.Tensor, dict[str, str], np.ndarray]]:
    """Per batch of items: pixels, {id: why} for images that failed, and colour features (zero rows for those),
    decoded and measured by a thread pool one batch ahead of the caller."""
    items = catalog.items
    batches = [items[start:start + batch_size] for start in range(0, len(items), batch_size)]

    def measured(batch: Sequence[Item]) -> tuple[torch.Tensor, dict[str, str], np.ndarray]:
        pixels, bad = decode_items(catalog, batch, size)
        colour = colour_features(pixels)
        colour[[row for row, item in enumerate(batch) if item.id in bad]] = 0.0
        return pixels, bad, colour

    bar = tqdm(total=len(items), desc="image features", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:

        def submit(index: int) -> Future | None:
            return pool.submit(measured, batches[index]) if index < len(batches) else None

        pending = submit(0)
        for index, batch in enumerate(batches):
            pixels, bad, colour = pending.result()
            pending = submit(index + 1)
            for reason in bad.values():
                log.warning("zero image vector for %s", reason)
            yield batch, pixels, bad, colour
            bar.update(len(batch))
    bar.close()


def _image_pass(backbone: Backbone, catalog: Catalog, batch_size: int, progress: bool,
                encode: Callable[[torch.Tensor], np.ndarray] | None) -> tuple[np.ndarray | None, np.ndarray,
                                                                              dict[str, str]]:
    """One pass over the images: backbone image vectors (when `encode` is given), colour features, failures."""
    image_chunks = [np.zeros((0, backbone.dim), dtype=np.float32)]
    colour_chunks = [np.zeros((0, COLOUR_DIM), dtype=np.float32)]
    failed: dict[str, str] = {}
    for batch, pixels, bad, colour in _decoded_batches(catalog, backbone.image_size, batch_size, progress):
        if encode is not None:
            vectors = encode(pixels)
            vectors[[row for row, item in enumerate(batch) if item.id in bad]] = 0.0
            image_chunks.append(vectors)
        colour_chunks.append(colour)
        failed.update(bad)
    return (np.concatenate(image_chunks) if encode else None), np.concatenate(colour_chunks), failed


def compute_features(backbone: Backbone, catalog: Catalog, batch_size: int = 512, cache: bool = True,
                     progress: bool = True) -> ItemFeatures:
    """All items' vectors and colour features: loaded from the cache when it is whole and matches, else computed
    (and cached). A cached file without (current) colour features, e.g. of the older format, gets them from one
    pass over the images (no backbone) and is saved again.

    Images are decoded by a thread pool one batch ahead of the model. An image that cannot be decoded is
    reported (logged, and listed in `failed`) and gets a zero image vector and zero colour features; the item's
    text still counts.
    """
    path = features_path(backbone, catalog)
    if cache and path.exists():
        try:
            features = ItemFeatures.load(path)
            if (features.ids == catalog.ids and features.backbone_id == backbone.id
                    and features.fingerprint == catalog.fingerprint and features.dim == backbone.dim):
                if features.colour is None or features.colour.shape[1] != COLOUR_DIM:
                    log.info("%s has no (current) colour features; measuring them from the images", path.name)
                    _, colour, _ = _image_pass(backbone, catalog, batch_size, progress, encode=None)
                    features = dataclasses.replace(features, colour=colour)
                    features.save(path)
                return features
            log.warning("%s is for other items; rebuilding it", path.name)
        except FeatureCacheError as error:
            log.warning("%s; rebuilding it", error)
    image, colour, failed = _image_pass(backbone, catalog, batch_size, progress,
                                        encode=lambda pixels: backbone.encode_images(pixels, batch_size=batch_size))
    texts = [item_text(item) for item in catalog.items]
    text_chunks = [np.zeros((0, backbone.dim), dtype=np.float32)]
    for start in tqdm(range(0, len(texts), batch_size), desc="text features", unit_scale=batch_size,
                      disable=not progress):
        text_chunks.append(backbone.encode_texts(texts[start:start + batch_size], batch_size=batch_size))
    text = np.concatenate(text_chunks)
    features = ItemFeatures(ids=catalog.ids, image=image, text=text, item=backbone.fuse(image, text), failed=failed,
                            backbone_id=backbone.id, fingerprint=catalog.fingerprint, colour=colour)
    if cache:
        features.save(path)
    return features
