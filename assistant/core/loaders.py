"""Catalog loaders: Fashion Product Images, Fashion IQ, a shop's own JSONL/CSV and the embedded demo, by format.

Every loader confines its images to one image root (the catalog's image folder, or an explicit `images_root`)
and decodes each image once (`ImageCheck`); rows whose image lies outside or does not decode are reported.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from assistant.core.catalog import (
    FPI_ATTRIBUTES,
    FPI_COLUMNS,
    IMAGE_SUFFIXES,
    CaptionPair,
    Catalog,
    CatalogError,
    ImageCheck,
    Item,
    LoadReport,
)
from assistant.core.demo_catalog import demo_options, ensure_demo_catalog


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def load_fashion_product_images(root: Path, images_root: Path | None = None) -> Catalog:
    """`styles.csv` + `images/<id>.jpg`: category = articleType, seven attributes, title = productDisplayName.

    The images must lie inside `images/` (symlinks resolved), or inside `images_root` when given.
    """
    root = Path(root)
    report = LoadReport(source=str(root), format="fashion-product-images")
    check = ImageCheck(images_root or root / "images")
    image_dir = Path(os.path.realpath(root / "images"))  # real paths from the start: the check need not remake them
    candidates: list[tuple[str, Item]] = []
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
            seen.add(item_id)
            attributes = {name: record[name] for name in FPI_ATTRIBUTES if record[name]}
            candidates.append((f"{where} (id {item_id})", Item(item_id, image_dir / f"{item_id}.jpg",
                                                               record["productDisplayName"], record["articleType"],
                                                               attributes)))
    items = check.keep_usable(candidates, report)
    report.loaded = len(items)
    return Catalog(items, name=root.name, root=root, report=report, image_root=check.root)


def load_fashion_iq(root: Path, images_root: Path | None = None) -> Catalog:
    """Fashion IQ: `captions/cap.<cat>.<split>.json`, `image_splits/split.<cat>.<split>.json`, an image folder.

    Optional labels in `tags/asin2attr.<cat>.<split>.json` (asin -> list of attribute words) become
    the `tags` attribute. Items whose image is missing are reported and the caption pairs using them dropped.
    The images must lie inside the image folder (symlinks resolved), or inside `images_root` when given.
    """
    root = Path(root)
    report = LoadReport(source=str(root), format="fashion-iq")
    image_dir = next((root / d for d in ("images", "resized_images", "image_data") if (root / d).is_dir()), None)
    if image_dir is None:
        raise CatalogError(f"{root}: no images/ (or resized_images/) folder beside captions/ and image_splits/")
    check = ImageCheck(images_root or image_dir)
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
    candidates = []
    for asin, category in category_of.items():
        attributes = {"category": category}
        if asin in tags:
            attributes["tags"] = ", ".join(sorted(set(tags[asin])))
        title = f"{category} {asin}" if asin not in tags else f"{' '.join(tags[asin][:4])} {category}"
        candidates.append((asin, Item(asin, _find_image(image_dir, asin), title, category, attributes)))
    items = check.keep_usable(candidates, report)
    kept = {item.id for item in items}
    pairs = []
    for reference, target, caption, where in raw_pairs:
        if reference in kept and target in kept and caption:
            pairs.append(CaptionPair(reference, target, caption))
        else:
            report.skip(where, "dropped caption pair: image missing or caption empty")
    report.loaded = len(items)
    report.notes.append(f"{len(pairs)} caption pairs")
    return Catalog(items, name=root.name, root=root, report=report, caption_pairs=pairs, image_root=check.root)


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
    attributes = {str(k): str(v) for k, v in attributes.items() if v not in (None, "")}
    category = str(record.get("category", "")).strip() or attributes.get("category", "item")
    return Item(item_id, image_path, title, category, attributes)


def load_generic(path: Path, images_root: Path | None = None) -> Catalog:
    """A shop's own products: `catalog.jsonl` or `catalog.csv` (id, image, title, category, attributes).

    In the CSV, columns other than id, image, title and category are attributes too.
    Images are relative to the file's folder; without an image column `images/<id>.<ext>` is used. They must
    lie inside that folder (symlinks resolved; absolute and `../` paths climbing out are skipped), or inside
    `images_root` when given.
    """
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("catalog.jsonl", "catalog.csv") if (path / n).exists()), path / "catalog.jsonl")
    root = path.parent
    report = LoadReport(source=str(path), format="generic-" + path.suffix.lstrip("."))
    check = ImageCheck(images_root or root)
    candidates: list[tuple[str, Item]] = []
    seen: set[str] = set()

    def add(item: Item | None, where: str) -> None:
        if item is None:
            return
        if item.id in seen:
            report.skip(where, f"duplicate id: {item.id}")
            return
        seen.add(item.id)
        candidates.append((f"{where} (id {item.id})", item))

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
    items = check.keep_usable(candidates, report)
    report.loaded = len(items)
    return Catalog(items, name=root.name, root=root, report=report, image_root=check.root)


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


def load_catalog(source: str | os.PathLike, format: str | None = None,
                 images_root: str | os.PathLike | None = None, split: str | None = None) -> Catalog:
    """Load a catalog from a folder or file (format detected, or named), or `demo` for the embedded one; with
    `split` (train, val or test) only that split of it.

    `images_root` is the opt-in for shops whose images live outside the catalog's folder: the images must then
    lie inside it instead (it is also the only folder the app serves). A catalog left with no items after the
    bad rows are skipped is a CatalogError.
    """
    root = None
    if images_root is not None:
        root = Path(images_root).expanduser()
        if not root.is_dir():
            raise CatalogError(f"{root}: the images root is not a folder")
    if str(source) == "demo" or str(source).startswith("demo:"):
        catalog = load_generic(ensure_demo_catalog(**demo_options(str(source))), images_root=root)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise CatalogError(f"{path}: no such file or folder (or pass 'demo' for the embedded catalog)")
        if path.is_file() and path.name == "styles.csv":
            path = path.parent
        fmt = format or detect_format(path)
        if fmt not in LOADERS:
            raise CatalogError(f"unknown catalog format {fmt!r}; choose from {sorted(LOADERS)}")
        catalog = LOADERS[fmt](path, images_root=root)
    if not catalog.items:
        reasons = ", ".join(f"{reason} {count}" for reason, count in catalog.report.counts().items())
        raise CatalogError(f"{catalog.report.source}: no usable items ({len(catalog.report.skipped)} rows skipped"
                           + (f": {reasons}" if reasons else "") + "); fix the rows or their images")
    return catalog.split(split) if split else catalog
