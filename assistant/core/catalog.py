"""Catalog model: items, caption pairs, the load report, splits and the image check every loader applies."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from assistant.core.feedback import attribute_kind, tokenize

SPLITS = ("train", "val", "test")
FPI_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
FPI_COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
               "usage", "productDisplayName")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LONE_JOINERS = re.compile(r"(?<![\w])[-/&+]+(?![\w])")


class CatalogError(ValueError):
    """A catalog folder or file that cannot be loaded at all (a bad row is reported, not raised)."""


class ImageError(ValueError):
    """An item's image is missing or cannot be decoded."""


@dataclass(frozen=True)
class Item:
    """One product: an image, a title, a category and attribute labels (name -> value)."""

    id: str
    image_path: Path | None
    title: str
    category: str
    attributes: dict[str, str] = field(default_factory=dict, hash=False)

    def as_dict(self) -> dict:
        """The plain form handed to user functions and written to logs."""
        return {"id": self.id, "title": self.title, "category": self.category, "attributes": dict(self.attributes)}


@dataclass(frozen=True)
class CaptionPair:
    """A human relative caption: how `target` differs from `reference` (Fashion IQ style)."""

    reference: str
    target: str
    caption: str


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, with the reason for each skipped row."""

    source: str
    format: str
    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (row or id, reason)
    notes: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def counts(self) -> dict[str, int]:
        """Number of skipped rows by reason."""
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def as_dict(self) -> dict:
        return {"source": self.source, "format": self.format, "loaded": self.loaded,
                "skipped": len(self.skipped), "skipped_by_reason": self.counts(),
                "skipped_rows": [{"row": w, "reason": r} for w, r in self.skipped], "notes": list(self.notes)}


def split_of(item_id: str) -> str:
    """Stable train/val/test assignment (80/10/10) from a hash of the id, the same on every machine."""
    bucket = int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


class Catalog:
    """An ordered collection of items with lookup by id, attribute vocabulary, fingerprint and splits."""

    def __init__(self, items: Iterable[Item], name: str = "catalog", root: Path | None = None,
                 report: LoadReport | None = None, caption_pairs: Iterable[CaptionPair] = ()) -> None:
        self.items: list[Item] = list(items)
        self.name = name
        self.root = root
        self.report = report or LoadReport(source=name, format="memory", loaded=len(self.items))
        self._by_id = {item.id: item for item in self.items}
        self._rows = {item.id: row for row, item in enumerate(self.items)}
        if len(self._by_id) != len(self.items):
            raise CatalogError(f"{name}: item ids are not unique")
        self.caption_pairs = [p for p in caption_pairs if p.reference in self._by_id and p.target in self._by_id]
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self._by_id[item_id]
        except KeyError:
            raise KeyError(f"no item with id {item_id!r} in catalog {self.name!r}") from None

    def __repr__(self) -> str:
        return f"Catalog({self.name!r}, {len(self)} items)"

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def index_of(self, item_id: str) -> int:
        """Row of an item in catalog order (the row of its feature vector)."""
        return self._rows[item_id]

    def attribute_names(self) -> list[str]:
        """Attribute names in first-seen order."""
        names: dict[str, None] = {}
        for item in self.items:
            names.update(dict.fromkeys(item.attributes))
        return list(names)

    def vocabulary(self) -> dict[str, Counter]:
        """Attribute name -> Counter of its values."""
        vocab: dict[str, Counter] = {name: Counter() for name in self.attribute_names()}
        for item in self.items:
            for name, value in item.attributes.items():
                vocab[name][value] += 1
        return vocab

    @property
    def fingerprint(self) -> str:
        """Hash of the catalog's content: ids, texts, labels and each image's name and size."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for item in self.items:
                size = item.image_path.stat().st_size if item.image_path and item.image_path.exists() else -1
                image_name = item.image_path.name if item.image_path else ""
                record = [item.id, item.title, item.category, sorted(item.attributes.items()), image_name, size]
                digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def subset(self, ids: Iterable[str], name: str | None = None) -> Catalog:
        """A catalog of the given ids (in that order), keeping caption pairs among them."""
        chosen = [self[i] for i in ids]
        return Catalog(chosen, name=name or f"{self.name}[subset]", root=self.root, report=self.report,
                       caption_pairs=self.caption_pairs)

    def split(self, split: str) -> Catalog:
        """The train, val or test part, by a stable hash of each id."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return self.subset([item.id for item in self.items if split_of(item.id) == split],
                           name=f"{self.name}:{split}")

    def open_image(self, item: Item | str) -> Image.Image:
        """The item's image as RGB; ImageError says which item and why when it cannot be read."""
        item = self[item] if isinstance(item, str) else item
        if item.image_path is None:
            raise ImageError(f"item {item.id} has no image")
        try:
            with Image.open(item.image_path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ImageError(f"item {item.id}: cannot read image {item.image_path.name}: {error}") from error

    def summary(self) -> dict:
        """Item count, categories, attribute names with value counts, caption pairs and the load report."""
        vocab = self.vocabulary()
        return {
            "name": self.name,
            "items": len(self),
            "fingerprint": self.fingerprint,
            "splits": dict(Counter(split_of(i.id) for i in self.items)),
            "categories": len({i.category for i in self.items}),
            "attributes": {name: dict(values.most_common()) for name, values in vocab.items()},
            "caption_pairs": len(self.caption_pairs),
            "report": self.report.as_dict(),
        }


def _value_words(vocabulary: dict[str, Counter], names: Iterable[str]) -> set[str]:
    return {word for name in names for value in vocabulary[name] for word in tokenize(value) if word.isalnum()}


def thin_labels(catalog: Catalog, names: Iterable[str]) -> Catalog:
    """The catalog as a shop with thin data has it: the `names` labels blanked on every item and, when a colour
    label is among them, its values' words taken out of the titles (words some kept label also uses stay).
    Ids, order, images and categories are kept, so rows line up with the full catalog's."""
    names = list(dict.fromkeys(names))
    vocabulary = catalog.vocabulary()
    unknown = [name for name in names if name not in vocabulary]
    if unknown:
        raise ValueError(f"{catalog.name} has no attribute {', '.join(unknown)} to thin "
                         f"(its attributes: {', '.join(vocabulary) or 'none'})")
    colour_words = _value_words(vocabulary, (name for name in names if attribute_kind(name) == "colour"))
    kept_words = _value_words(vocabulary, (name for name in vocabulary if name not in names))
    dropped = sorted(colour_words - kept_words, key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, dropped)) + r")\b", re.IGNORECASE) if dropped else None
    items = []
    for item in catalog:
        title = item.title
        if pattern is not None and pattern.search(title):  # and the dashes that joined the words ("Silver-Black")
            title = " ".join(LONE_JOINERS.sub(" ", pattern.sub(" ", title)).split())
        items.append(Item(item.id, item.image_path, title or item.category, item.category,
                          {name: value for name, value in item.attributes.items() if name not in names}))
    return Catalog(items, name=f"{catalog.name}[thin {','.join(names)}]", root=catalog.root, report=catalog.report,
                   caption_pairs=catalog.caption_pairs)


def image_problem(path: Path) -> str | None:
    """Why an image file cannot be used (missing, empty, truncated, not an image), or None if it looks sound.

    Checks the format's start and end markers, which catches truncated and garbage files
    without decoding every pixel; other formats are verified by PIL.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return "missing image"
    if size == 0:
        return "unreadable image: empty file"
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            handle.seek(max(0, size - 64))
            tail = handle.read(64)
    except OSError as error:
        return f"unreadable image: {error}"
    if head.startswith(b"\xff\xd8"):
        return None if b"\xff\xd9" in tail else "unreadable image: truncated JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "unreadable image: truncated PNG"
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as error:  # PIL raises many types for bad files
        return f"unreadable image: {type(error).__name__}"
    return None
