"""Catalog model and loaders: Fashion Product Images, Fashion IQ, a shop's own JSONL/CSV, the embedded demo."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

SPLITS = ("train", "val", "test")
FPI_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
FPI_COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
               "usage", "productDisplayName")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


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


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_fashion_product_images(root: Path) -> Catalog:
    """`styles.csv` + `images/<id>.jpg`: category = articleType, seven attributes, title = productDisplayName."""
    root = Path(root)
    report = LoadReport(source=str(root), format="fashion-product-images")
    items: list[Item] = []
    seen: set[str] = set()
    with open(root / "styles.csv", encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[: len(FPI_COLUMNS)]] != list(FPI_COLUMNS):
            raise CatalogError(f"{root / 'styles.csv'}: header is not {','.join(FPI_COLUMNS)}")
        for line_number, row in enumerate(reader, start=2):
            where = f"styles.csv:{line_number}"
            if len(row) != len(FPI_COLUMNS):
                # The original Kaggle file has titles with unquoted commas; rejoin them when that is all it is.
                if len(row) > len(FPI_COLUMNS) and row[0].strip().isdigit():
                    row = row[:9] + [",".join(row[9:])]
                else:
                    report.skip(where, f"malformed row: {len(row)} fields, expected {len(FPI_COLUMNS)}")
                    continue
            record = dict(zip(FPI_COLUMNS, (value.strip() for value in row), strict=True))
            item_id = record["id"]
            if not item_id.isdigit():
                report.skip(where, f"malformed row: id {item_id!r} is not a number")
                continue
            if item_id in seen:
                report.skip(where, f"duplicate id: {item_id}")
                continue
            if not record["productDisplayName"] or not record["articleType"]:
                report.skip(where, "malformed row: empty title or articleType")
                continue
            image_path = root / "images" / f"{item_id}.jpg"
            problem = image_problem(image_path)
            if problem:
                report.skip(f"{where} (id {item_id})", problem)
                continue
            seen.add(item_id)
            attributes = {name: record[name] for name in FPI_ATTRIBUTES if record[name]}
            items.append(Item(item_id, image_path, record["productDisplayName"], record["articleType"], attributes))
    report.loaded = len(items)
    return Catalog(items, name=root.name, root=root, report=report)


def load_fashion_iq(root: Path) -> Catalog:
    """Fashion IQ: `captions/cap.<cat>.<split>.json`, `image_splits/split.<cat>.<split>.json`, an image folder.

    Optional labels in `tags/asin2attr.<cat>.<split>.json` (asin -> list of attribute words) become
    the `tags` attribute. Items whose image is missing are reported and the caption pairs using them dropped.
    """
    root = Path(root)
    report = LoadReport(source=str(root), format="fashion-iq")
    image_dir = next((root / d for d in ("images", "resized_images", "image_data") if (root / d).is_dir()), None)
    if image_dir is None:
        raise CatalogError(f"{root}: no images/ (or resized_images/) folder beside captions/ and image_splits/")
    category_of: dict[str, str] = {}
    for split_file in sorted((root / "image_splits").glob("split.*.*.json")):
        category = split_file.name.split(".")[1]
        try:
            asins = json.loads(split_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            report.skip(split_file.name, f"malformed file: {error}")
            continue
        for asin in asins:
            category_of.setdefault(str(asin), category)
    raw_pairs: list[tuple[str, str, str, str]] = []
    for caption_file in sorted((root / "captions").glob("cap.*.*.json")):
        category = caption_file.name.split(".")[1]
        try:
            records = json.loads(caption_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            report.skip(caption_file.name, f"malformed file: {error}")
            continue
        for n, record in enumerate(records):
            try:
                reference, target = str(record["candidate"]), str(record["target"])
                captions = [c.strip() for c in record.get("captions", []) if isinstance(c, str) and c.strip()]
            except (KeyError, TypeError, AttributeError):
                report.skip(f"{caption_file.name}[{n}]", "malformed row: needs candidate, target, captions")
                continue
            category_of.setdefault(reference, category)
            category_of.setdefault(target, category)
            raw_pairs.append((reference, target, " and ".join(captions), f"{caption_file.name}[{n}]"))
    tags: dict[str, list[str]] = {}
    for tag_file in sorted((root / "tags").glob("asin2attr.*.json")) if (root / "tags").is_dir() else []:
        try:
            for asin, words in json.loads(tag_file.read_text(encoding="utf-8")).items():
                tags[str(asin)] = [str(w) for w in words]
        except (OSError, ValueError, AttributeError) as error:
            report.skip(tag_file.name, f"malformed file: {error}")
    if not category_of:
        raise CatalogError(f"{root}: no image_splits/split.<cat>.<split>.json or captions/cap.<cat>.<split>.json")
    items = []
    for asin, category in category_of.items():
        image_path = _find_image(image_dir, asin)
        problem = image_problem(image_path) if image_path else "missing image"
        if problem:
            report.skip(asin, problem)
            continue
        attributes = {"category": category}
        if asin in tags:
            attributes["tags"] = ", ".join(sorted(set(tags[asin])))
        title = f"{category} {asin}" if asin not in tags else f"{' '.join(tags[asin][:4])} {category}"
        items.append(Item(asin, image_path, title, category, attributes))
    kept = {item.id for item in items}
    pairs = []
    for reference, target, caption, where in raw_pairs:
        if reference in kept and target in kept and caption:
            pairs.append(CaptionPair(reference, target, caption))
        else:
            report.skip(where, "dropped caption pair: image missing or caption empty")
    report.loaded = len(items)
    report.notes.append(f"{len(pairs)} caption pairs")
    return Catalog(items, name=root.name, root=root, report=report, caption_pairs=pairs)


def _generic_record(record: dict, root: Path, where: str, report: LoadReport) -> Item | None:
    item_id = str(record.get("id", "")).strip()
    title = str(record.get("title", "")).strip()
    if not item_id or not title:
        report.skip(where, "malformed row: needs id and title")
        return None
    attributes = record.get("attributes") or {}
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except ValueError:
            report.skip(where, "malformed row: attributes is not JSON")
            return None
    if not isinstance(attributes, dict):
        report.skip(where, "malformed row: attributes must be an object")
        return None
    image = str(record.get("image", "")).strip()
    image_path = (root / image) if image else _find_image(root / "images", item_id)
    problem = image_problem(image_path) if image_path else "missing image"
    if problem:
        report.skip(f"{where} (id {item_id})", problem)
        return None
    attributes = {str(k): str(v) for k, v in attributes.items() if v not in (None, "")}
    category = str(record.get("category", "")).strip() or attributes.get("category", "item")
    return Item(item_id, image_path, title, category, attributes)


def load_generic(path: Path) -> Catalog:
    """A shop's own products: `catalog.jsonl` or `catalog.csv` (id, image, title, category, attributes).

    In the CSV, columns other than id, image, title and category are attributes too.
    Images are relative to the file's folder; without an image column `images/<id>.<ext>` is used.
    """
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("catalog.jsonl", "catalog.csv") if (path / n).exists()), path / "catalog.jsonl")
    root = path.parent
    report = LoadReport(source=str(path), format="generic-" + path.suffix.lstrip("."))
    items: list[Item] = []
    seen: set[str] = set()

    def add(item: Item | None, where: str) -> None:
        if item is None:
            return
        if item.id in seen:
            report.skip(where, f"duplicate id: {item.id}")
            return
        seen.add(item.id)
        items.append(item)

    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if path.suffix == ".jsonl":
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{line_number}"
                try:
                    record = json.loads(line)
                except ValueError:
                    report.skip(where, "malformed row: not JSON")
                    continue
                if not isinstance(record, dict):
                    report.skip(where, "malformed row: not a JSON object")
                    continue
                add(_generic_record(record, root, where, report), where)
        else:
            reader = csv.DictReader(handle)
            fixed = {"id", "image", "title", "category", "attributes"}
            for line_number, row in enumerate(reader, start=2):
                where = f"{path.name}:{line_number}"
                if None in row or any(v is None for v in row.values()):
                    report.skip(where, "malformed row: wrong number of fields")
                    continue
                record = {k: v for k, v in row.items() if k in fixed}
                extra = {k: v for k, v in row.items() if k not in fixed and v}
                if extra:
                    base = record.get("attributes") or "{}"
                    try:
                        merged = json.loads(base) if isinstance(base, str) else dict(base)
                    except ValueError:
                        report.skip(where, "malformed row: attributes is not JSON")
                        continue
                    record["attributes"] = {**extra, **merged}
                add(_generic_record(record, root, where, report), where)
    report.loaded = len(items)
    return Catalog(items, name=root.name, root=root, report=report)


LOADERS = {
    "fashion-product-images": load_fashion_product_images,
    "fashion-iq": load_fashion_iq,
    "generic": load_generic,
}


def detect_format(path: Path) -> str:
    """Which loader fits a folder or file, from what it contains."""
    path = Path(path)
    if path.is_file():
        if path.suffix in (".jsonl", ".csv") and path.name != "styles.csv":
            return "generic"
        if path.name == "styles.csv":
            return "fashion-product-images"
    if (path / "styles.csv").exists():
        return "fashion-product-images"
    if (path / "captions").is_dir() or (path / "image_splits").is_dir():
        return "fashion-iq"
    if (path / "catalog.jsonl").exists() or (path / "catalog.csv").exists():
        return "generic"
    raise CatalogError(
        f"{path}: not a catalog. Expected styles.csv + images/ (Fashion Product Images), captions/ + "
        "image_splits/ (Fashion IQ), or catalog.jsonl / catalog.csv (your own products)")


def load_catalog(source: str | os.PathLike, format: str | None = None) -> Catalog:
    """Load a catalog from a folder or file (format detected, or named), or `demo` for the embedded one."""
    if str(source) == "demo" or str(source).startswith("demo:"):
        from assistant.demo_catalog import demo_options, ensure_demo_catalog

        return load_generic(ensure_demo_catalog(**demo_options(str(source))))
    path = Path(source).expanduser()
    if not path.exists():
        raise CatalogError(f"{path}: no such file or folder (or pass 'demo' for the embedded catalog)")
    if path.is_file() and path.name == "styles.csv":
        path = path.parent
    fmt = format or detect_format(path)
    if fmt not in LOADERS:
        raise CatalogError(f"unknown catalog format {fmt!r}; choose from {sorted(LOADERS)}")
    return LOADERS[fmt](path)
