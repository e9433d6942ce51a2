"""Catalog model: items, caption pairs, the load report, splits and the image check every loader applies."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from assistant.core.errors import AssistantError
from assistant.core.feedback import attribute_kind, tokenize
from assistant.core.storage import atomic_write_text, cache_dir

SPLITS = ("train", "val", "test")
FPI_ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
FPI_COLUMNS = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year",
               "usage", "productDisplayName")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
LONE_JOINERS = re.compile(r"(?<![\w])[-/&+]+(?![\w])")
MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused at load (decompression bombs); product photos are far smaller
OUTSIDE_ROOT = "image outside the catalog folder"
CHECK_VERSION = 1  # part of the image verdict cache's name: bump it whenever decode_image's verdicts change


class CatalogError(AssistantError, ValueError):
    """A catalog folder or file that cannot be loaded at all (a bad row is reported, not raised)."""


class ImageError(AssistantError, ValueError):
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


def caption_pairs_digest(pairs: Iterable[CaptionPair]) -> str:
    """A short hash of a set of caption pairs, for the run keys of trainings that read them."""
    record = sorted((p.reference, p.target, p.caption) for p in pairs)
    return hashlib.sha256(json.dumps(record, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


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


def report_lines(report: dict, title: str = "load report", rows: int = 20) -> list[str]:
    """A report (`LoadReport.as_dict()`) as lines for a terminal: counts by reason, then the first `rows` rows."""
    lines = [f"{title}: {report['loaded']} loaded, {report['skipped']} skipped"]
    lines += [f"  {reason}: {count}" for reason, count in report["skipped_by_reason"].items()]
    lines += [f"    {row['row']}: {row['reason']}" for row in report["skipped_rows"][:rows]]
    if report["skipped"] > rows:
        lines.append(f"    … {report['skipped'] - rows} more (see --json)")
    return lines


def split_of(item_id: str) -> str:
    """Stable train/val/test assignment (80/10/10) from a hash of the id, the same on every machine."""
    bucket = int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


class Catalog:
    """An ordered collection of items with lookup by id, attribute vocabulary, fingerprint and splits."""

    def __init__(self, items: Iterable[Item], name: str = "catalog", root: Path | None = None,
                 report: LoadReport | None = None, caption_pairs: Iterable[CaptionPair] = (),
                 image_root: Path | None = None) -> None:
        self.items: list[Item] = list(items)
        self.name = name
        self.root = root
        self.image_root = image_root  # every item's image lies inside it (loaders confine them): the folder served
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
        return vocabulary_of((item.attributes for item in self.items), self.attribute_names())

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
                       caption_pairs=self.caption_pairs, image_root=self.image_root)

    def with_caption_pairs(self, pairs: Iterable[CaptionPair]) -> Catalog:
        """The same items with these human caption pairs added (pairs naming an item it lacks are left out)."""
        return Catalog(self.items, name=self.name, root=self.root, report=self.report,
                       caption_pairs=list(self.caption_pairs) + list(pairs), image_root=self.image_root)

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
            return decode_image(item.image_path)
        except ImageError as error:
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


def decode_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An image file decoded in full as RGB, as the backbone reads it; ImageError says why it cannot be used."""
    try:
        if os.stat(path).st_size == 0:
            raise ImageError("unreadable image: empty file")
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} pixels, the limit is {max_pixels:,}")
            return image.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError as error:
        raise ImageError("missing image") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"image too large: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageError("unreadable image: not an image file") from error
    except Exception as error:  # PIL raises many types for damaged files
        raise ImageError(f"unreadable image: {type(error).__name__}: {error}") from error


def image_problem(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image file cannot be used (missing, empty, truncated, not an image, too large), or None if it decodes."""
    try:
        decode_image(path, max_pixels).close()
    except ImageError as error:
        return str(error)
    return None


class ImageCheck:
    """The load check every loader applies: each image must lie inside the image root (symlinks resolved) and
    decode in full. Verdicts are cached in the cache folder by path, size and mtime, so a reload decodes only
    the images that changed."""

    def __init__(self, root: Path, max_pixels: int = MAX_IMAGE_PIXELS, workers: int | None = None) -> None:
        self.root = Path(os.path.realpath(Path(root).expanduser()))
        self.max_pixels = max_pixels
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        key = hashlib.sha256(json.dumps([CHECK_VERSION, str(self.root), max_pixels]).encode()).hexdigest()[:16]
        self.cache_path = cache_dir() / "image-checks" / f"{key}.json"
        self._prefix = os.path.join(str(self.root), "")
        self._real_folders: dict[str, str] = {}

    def confine(self, path: Path) -> str | None:
        """The image's real path (symlinks resolved) when it lies inside the root, else None."""
        text = os.path.expanduser(os.fspath(path))
        folder, name = os.path.split(text)
        if name in ("", ".", ".."):
            real = os.path.realpath(text)
        else:
            real_folder = self._real_folders.get(folder)
            if real_folder is None:
                real_folder = self._real_folders[folder] = os.path.realpath(folder)
            real = os.path.join(real_folder, name)
            if os.path.islink(real):
                real = os.path.realpath(real)
        return real if real.startswith(self._prefix) else None

    def _cached_verdicts(self) -> dict[str, list]:
        try:
            return json.loads(self.cache_path.read_text(encoding="utf-8"))["verdicts"]
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: decode again
            return {}

    def problems(self, paths: Sequence[str]) -> list[str | None]:
        """Why each confined image (a real path inside the root) cannot be used, or None; images seen before with
        the same size and mtime are not decoded again."""
        verdicts = self._cached_verdicts()
        answers: list[str | None] = ["missing image"] * len(paths)
        todo: list[tuple[int, str, int, int]] = []
        for row, path in enumerate(paths):
            try:
                stat = os.stat(path)
            except OSError:
                continue
            name = path[len(self._prefix):]
            known = verdicts.get(name)
            if known is not None and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
                answers[row] = known[2]
            else:
                todo.append((row, name, stat.st_size, stat.st_mtime_ns))
        if todo:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                found = list(pool.map(lambda job: image_problem(Path(paths[job[0]]), self.max_pixels), todo,
                                      chunksize=64))
            for (row, name, size, mtime), problem in zip(todo, found, strict=True):
                verdicts[name] = [size, mtime, problem]
                answers[row] = problem
            atomic_write_text(self.cache_path, json.dumps({"root": str(self.root), "max_pixels": self.max_pixels,
                                                           "verdicts": verdicts}, ensure_ascii=False))
        return answers

    def keep_usable(self, candidates: Sequence[tuple[str, Item]], report: LoadReport) -> list[Item]:
        """The candidates (where, item) whose image lies inside the root and decodes; the others are reported.
        Kept items' image paths are their real paths."""
        confined: list[tuple[str, Item, str]] = []
        for where, item in candidates:
            real = self.confine(item.image_path) if item.image_path is not None else None
            if item.image_path is None:
                report.skip(where, "missing image")
            elif real is None:
                report.skip(where, OUTSIDE_ROOT)
            else:
                confined.append((where, item, real))
        kept = []
        for (where, item, real), problem in zip(confined, self.problems([r for _, _, r in confined]), strict=True):
            if problem:
                report.skip(where, problem)
            else:
                kept.append(item if str(item.image_path) == real else replace(item, image_path=Path(real)))
        return kept


def vocabulary_of(rows: Iterable[Mapping[str, str]], names: Iterable[str] = ()) -> dict[str, Counter]:
    """Attribute name (`names` first, in their order, then any other in the order met) -> Counter of its values
    over `rows` (labels, or labels with predicted values filled in)."""
    vocab: dict[str, Counter] = {name: Counter() for name in names}
    for row in rows:
        for name, value in row.items():
            vocab.setdefault(name, Counter())[value] += 1
    return vocab
