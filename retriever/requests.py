"""Request benchmark: opening messages with the labels their first page must and must not have, precision@12."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.core.catalog import Catalog, Item
from assistant.core.dialog import PAGE_SIZE
from assistant.core.feedback import attribute_kind

KINDS = ("synonym", "occasion", "person", "colour_name", "negation", "no_exact_match")
HALVES = ("dev", "held-out")
FPI_REQUESTS = Path(__file__).resolve().parent.parent / "benchmarks" / "requests" / "fpi.jsonl"

Labels = dict[str, tuple[str, ...]]  # attribute name -> acceptable values
FirstPage = Callable[[str], Sequence[Item]]  # an opening message -> the first page a system shows for it


def half_of(request_id: str) -> str:
    """The fixed rule that splits the requests: `dev` (tune on it) or `held-out` (the reported number)."""
    return HALVES[int(hashlib.sha1(request_id.encode("utf-8")).hexdigest(), 16) % 2]


def _has_all(attributes: Mapping[str, str], labels: Labels) -> bool:
    return all(attributes.get(name) in values for name, values in labels.items())


def _has_any(attributes: Mapping[str, str], labels: Labels) -> bool:
    return any(attributes.get(name) in values for name, values in labels.items())


@dataclass(frozen=True)
class Request:
    """One shopper's opening message and what the items on its first page must and must not be labelled.

    `absent` (no_exact_match only) is the combination the shopper asked for that no catalog item has; `must`
    is then what a good page still keeps (the kind of item first).
    """

    id: str
    text: str
    kind: str
    half: str
    must: Labels
    must_not: Labels
    absent: Labels

    def fits(self, attributes: Mapping[str, str]) -> bool:
        """Every must label and no must-not label."""
        return _has_all(attributes, self.must) and not _has_any(attributes, self.must_not)

    def ruled_out(self, attributes: Mapping[str, str]) -> bool:
        """Has a value the shopper ruled out."""
        return _has_any(attributes, self.must_not)

    def keeps_kind(self, attributes: Mapping[str, str]) -> bool:
        """Has the requested kind of item: the must labels that name a category (all of them when none do)."""
        kind = {name: values for name, values in self.must.items() if attribute_kind(name) == "category"}
        return _has_all(attributes, kind or self.must)


def _labels(value: Any, where: str, field: str) -> Labels:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: `{field}` must be an object of attribute -> value or list of values")
    labels: Labels = {}
    for name, values in value.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{where}: `{field}.{name}` must be a value or a non-empty list of values")
        labels[str(name)] = tuple(values)
    return labels


def parse_request(record: Any, where: str) -> Request:
    """One JSON record as a Request, with a clear error naming `where` when a field is missing or wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a request must be a JSON object")
    for field in ("id", "text", "kind", "must"):
        if not record.get(field):
            raise ValueError(f"{where}: missing `{field}`")
    if record["kind"] not in KINDS:
        raise ValueError(f"{where}: kind {record['kind']!r} is not one of {', '.join(KINDS)}")
    request_id = str(record["id"])
    half = record.get("half", half_of(request_id))
    if half != half_of(request_id):
        raise ValueError(f"{where}: half {half!r} breaks the fixed rule (half_of gives {half_of(request_id)!r})")
    labels = {field: _labels(record.get(field), where, field) for field in ("must", "must_not", "absent")}
    request = Request(request_id, str(record["text"]), record["kind"], half, **labels)
    if request.kind == "negation" and not request.must_not:
        raise ValueError(f"{where}: a negation request needs `must_not`")
    if request.kind == "no_exact_match" and not request.absent:
        raise ValueError(f"{where}: a no_exact_match request needs `absent` (the combination no item has)")
    return request


def load_requests(path: str | Path, half: str = "all") -> list[Request]:
    """The requests in a JSONL file (one object per line), all or one half; ids must be unique."""
    if half not in (*HALVES, "all"):
        raise ValueError(f"half must be one of {', '.join(HALVES)} or all, not {half!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no requests file at {path}")
    requests: list[Request] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg})") from error
        request = parse_request(record, where)
        if request.id in seen:
            raise ValueError(f"{where}: duplicate id {request.id!r}")
        seen.add(request.id)
        requests.append(request)
    if not requests:
        raise ValueError(f"{path}: no requests")
    return [r for r in requests if half in ("all", r.half)]


def default_requests(catalog: Catalog) -> Path:
    """The shipped requests for a catalog: the Fashion Product Images set, the only one there is."""
    if catalog.report.format != "fashion-product-images":
        raise ValueError(f"no shipped requests for a {catalog.report.format} catalog; pass --requests FILE")
    return FPI_REQUESTS


def check_labels(requests: Iterable[Request], catalog: Catalog) -> None:
    """Raise when a request names an attribute the catalog does not have (its values may be missing from one
    split; tests check every value against the whole catalog)."""
    names = set(catalog.attribute_names())
    for request in requests:
        for labels in (request.must, request.must_not, request.absent):
            unknown = sorted(set(labels) - names)
            if unknown:
                raise ValueError(f"request {request.id}: the catalog has no attribute {', '.join(unknown)}")


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def summarise(rows: Sequence[dict], systems: Sequence[str], page_size: int) -> dict:
    """Per system: precision@page overall and by kind, the negation and no-exact-match shares."""
    summary: dict[str, Any] = {"requests": len(rows), "by_kind_requests": {k: sum(r["kind"] == k for r in rows)
                                                                         for k in KINDS},
                               "requests_below_page": sum(r["possible"] < page_size for r in rows), "systems": {}}
    for name in systems:
        scored = [(r["kind"], r["systems"][name]) for r in rows]
        summary["systems"][name] = {
            f"precision@{page_size}": _mean([s["precision"] for _, s in scored]),
            "by_kind": {k: _mean([s["precision"] for kind, s in scored if kind == k]) for k in KINDS},
            "negation_no_ruled_out": _mean([float(s["ruled_out"] == 0) for kind, s in scored if kind == "negation"]),
            "no_exact_match_kind_kept": _mean([s["kind_kept"] for kind, s in scored if kind == "no_exact_match"]),
        }
    return summary


def evaluate_requests(systems: Mapping[str, FirstPage], truth: Catalog, requests: Sequence[Request],
                      page_size: int = PAGE_SIZE) -> dict:
    """Each system's first page for every request, judged against `truth`'s labels (the catalog with all its
    labels, also when the systems rank a thinned copy of it); summaries per half and over all requests.

    An item counts when it has every must and no must-not value; the page's precision divides by `page_size`,
    so a short page loses. `possible` is how many items of `truth` fit, to show requests a page cannot fill.
    """
    check_labels(requests, truth)
    rows = []
    for request in requests:
        possible = sum(request.fits(item.attributes) for item in truth)
        row: dict[str, Any] = {"id": request.id, "kind": request.kind, "half": request.half, "text": request.text,
                               "possible": possible, "systems": {}}
        for name, first_page in systems.items():
            page = [truth[item.id].attributes for item in list(first_page(request.text))[:page_size]]
            row["systems"][name] = {
                "precision": round(sum(request.fits(a) for a in page) / page_size, 4),
                "ruled_out": sum(request.ruled_out(a) for a in page),
                "kind_kept": round(sum(request.keeps_kind(a) for a in page) / page_size, 4),
                "shown": len(page),
            }
        rows.append(row)
    names = list(systems)
    halves = {half: summarise([r for r in rows if r["half"] == half], names, page_size)
              for half in HALVES if any(r["half"] == half for r in rows)}
    if len(halves) > 1:
        halves["all"] = summarise(rows, names, page_size)
    return {"catalog": truth.name, "catalog_size": len(truth), "page_size": page_size, "halves": halves,
            "per_request": rows}


def summary_lines(result: dict) -> list[str]:
    """The per-half table for people: precision by kind and the two shares, one line per system."""
    page = result["page_size"]
    short = {"synonym": "syn", "occasion": "occ", "person": "per", "colour_name": "col", "negation": "neg",
             "no_exact_match": "nem"}
    lines = []
    for half, summary in result["halves"].items():
        lines.append(f"{half}: {summary['requests']} requests ({summary['requests_below_page']} with fewer than "
                     f"{page} fitting items in the catalog)")
        lines.append(f"{'system':>16}  p@{page}  " + "  ".join(f"{short[k]:>5}" for k in KINDS)
                     + "  neg-clean  kind-kept")
        for name, metrics in summary["systems"].items():
            cells = "  ".join(f"{v:5.3f}" if v is not None else "    -" for v in metrics["by_kind"].values())
            shares = [metrics["negation_no_ruled_out"], metrics["no_exact_match_kind_kept"]]
            lines.append(f"{name:>16}  {metrics[f'precision@{page}']:5.3f}  {cells}  "
                         + "  ".join(f"{v:9.3f}" if v is not None else f"{'-':>9}" for v in shares))
    return lines
