"""The public API: `Assistant.load(model_dir, catalog)`, then `assistant.dialog()` with `start` and `reply`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from assistant.core.batching import MAX_BATCH, BatchingRanker
from assistant.core.catalog import Catalog, Item
from assistant.core.constraints import Probabilities
from assistant.core.dialog import PAGE_SIZE, Dialog, RankingContext
from assistant.core.loaders import load_catalog
from assistant.core.messages import RULED_OUT_KEY
from assistant.core.reader import SemanticReader
from assistant.model_dir import ATTRIBUTES_FILE, RETRIEVER_FILE, PipelineConfig
from assistant.users import User, resolve_user
from assistant.vision.attributes import AttributePredictor
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.features import ItemFeatures, compute_features
from assistant.vision.index import cached_index
from retriever.evaluate import evaluate, model_ranker, standard_systems
from retriever.model import DialogRetriever
from retriever.requests import FirstPage, Request, evaluate_requests
from simulator.user import load_simulator_user

log = logging.getLogger(__name__)


def _first_page(context: RankingContext, text: str) -> list[Item]:
    return Dialog(context).start(text=text)


class Assistant:
    """A trained system over one catalog: backbone, item features, retriever with its index, attribute heads.

    The catalog may be one the model never saw: its features and index are built with the model's backbone
    (and cached), and items without attribute labels get predicted ones.
    """

    def __init__(self, model_dir: Path, catalog: Catalog, config: PipelineConfig, backbone: Backbone,
                 features: ItemFeatures, retriever: DialogRetriever, attribute_predictor: AttributePredictor | None,
                 attributes: list[dict[str, str]], predicted: set[tuple[str, str]],
                 probabilities: Probabilities | None = None) -> None:
        self.model_dir, self.catalog, self.config = model_dir, catalog, config
        self.backbone, self.features, self.retriever = backbone, features, retriever
        self.attribute_predictor = attribute_predictor
        self.attributes = attributes  # per catalog row: labels, with predicted values where labels are missing
        self.predicted = predicted  # (item id, attribute name) pairs that were predicted
        self.items = retriever.item_inputs(catalog, features, attributes)
        vectors = retriever.item_vectors(self.items)
        with open(model_dir / RETRIEVER_FILE, "rb") as weights:
            retriever_digest = hashlib.file_digest(weights, "sha256").hexdigest()[:16]
        self.index = cached_index(vectors, config.index, key=f"{retriever_digest}-{catalog.fingerprint}")
        self.ranker = model_ranker(retriever, catalog, self.items, vectors, self.index,
                                   constraints=config.retriever.feedback_constraints,
                                   lexical_weight=config.retriever.lexical_weight, attributes=attributes,
                                   probabilities=probabilities)
        self.constraints, self.keyword = self.ranker.constraints, self.ranker.lexical
        self.reader = self.constraints.reader if self.constraints is not None \
            else SemanticReader.from_catalog(catalog, attributes)
        self._users: dict[str, User] = {}

    @classmethod
    def load(cls, model_dir: str | Path, catalog: str | Catalog = "demo", progress: bool = True,
             backbone: Backbone | None = None, features: ItemFeatures | None = None) -> Assistant:
        """A trained model directory (from `fashion-assistant train`) over a catalog (path, `demo`, or Catalog)."""
        model_dir = Path(model_dir)
        for needed in (BACKBONE_FILE, RETRIEVER_FILE, "config.yaml"):
            if not (model_dir / needed).exists():
                raise FileNotFoundError(f"{model_dir} is not a trained model directory (no {needed}); "
                                        "make one with `fashion-assistant train`")
        config = PipelineConfig.load(model_dir / "config.yaml")
        catalog = catalog if isinstance(catalog, Catalog) else load_catalog(catalog)
        backbone = backbone or Backbone.load(model_dir / BACKBONE_FILE, device=config.backbone.device)
        features = features or compute_features(backbone, catalog, progress=progress)
        retriever = DialogRetriever.load(model_dir / RETRIEVER_FILE)
        predictor = AttributePredictor.load(model_dir / ATTRIBUTES_FILE) if (model_dir / ATTRIBUTES_FILE).exists() \
            else None
        attributes = [dict(item.attributes) for item in catalog]
        predicted: set[tuple[str, str]] = set()
        probabilities: dict = {}
        if predictor is not None and any(set(predictor.names) - set(a) for a in attributes):
            filled, predicted = predictor.fill_missing(catalog, features.image, features.colour)
            attributes = [dict(item.attributes) for item in filled]
            gaps = sorted({catalog.index_of(item_id) for item_id, _ in predicted})
            colour = None if features.colour is None else features.colour[gaps]
            for name, matrix in predictor.predict_proba(features.image[gaps], colour).items():
                rows = [i for i, row in enumerate(gaps) if (catalog.items[row].id, name) in predicted]
                if rows and not predictor.head(name).multi_label:  # predicted labels count by their confidence
                    probabilities[name] = (np.asarray(gaps)[rows], predictor.head(name).values, matrix[rows])
        return cls(model_dir, catalog, config, backbone, features, retriever, predictor, attributes, predicted,
                   probabilities)

    def context(self) -> RankingContext:
        return RankingContext(self.catalog, self.ranker, self.features.image, self.backbone, self.attribute_predictor)

    def batching(self, max_batch: int = MAX_BATCH) -> Assistant:
        """This assistant (sharing every part) with the turns of concurrent threads ranked together (BatchingRanker),
        for a server whose request threads play many dialogs at once."""
        batched = copy.copy(self)
        batched.ranker = BatchingRanker(self.ranker, max_batch)
        return batched

    def dialog(self, page_size: int = PAGE_SIZE) -> Dialog:
        """A new dialog for one shopper."""
        return Dialog(self.context(), page_size=page_size)

    def warm_up(self) -> None:
        """One throwaway dialog, so the lazily built parts (the reader's meaning bank, the text encoders) are
        ready before a server's first shoppers arrive, many at once."""
        dialog = self.dialog()
        dialog.start(text="a shirt")
        dialog.reply("in blue")

    def user(self, spec: str = "template", seed: int = 0, catalog: Catalog | None = None) -> User:
        """A simulated shopper: `template`, `simulator` (the trained one in the model dir) or `module:function`,
        answering about `catalog`'s items (default this assistant's; the full-label original of a thinned one)."""
        catalog = catalog or self.catalog
        key = f"{spec}@{seed}@{catalog.fingerprint}"
        if key not in self._users:
            if spec == "simulator":
                features = self.features if catalog is self.catalog else compute_features(self.backbone, catalog)
                self._users[key] = load_simulator_user(self.model_dir, catalog, features,
                                                       self.config.users.simulator_decoding, seed=seed)
            else:
                self._users[key] = resolve_user(spec, catalog, seed=seed, settings=self.config.users)
        return self._users[key]

    def understood(self, dialog: Dialog) -> dict[str, str]:
        """What the shopper asked for so far (attribute -> value, 'A or B' when several fit equally; later turns
        override earlier) and, under RULED_OUT_KEY, the values ruled out ("Red, Pink")."""
        understanding = self.reader.understand(dialog.state)
        out = understanding.best()
        ruled = sorted({value for values in understanding.ruled_out.values() for value in values})
        if ruled:
            out[RULED_OUT_KEY] = ", ".join(ruled)
        return out

    @property
    def ranking(self) -> str:
        """How this assistant ranks, in words (for evaluation notes)."""
        parts = ["dialog retriever"]
        if self.constraints is not None:
            parts.append("the feedback's attribute constraints")
        if self.keyword is not None:
            parts.append(f"{self.ranker.lexical_weight} x BM25")
        return " + ".join(parts)

    def evaluate(self, user: str = "template", turns: int = 5, targets: int = 1000, seed: int = 0,
                 baselines: bool = True, truth: Catalog | None = None) -> dict[str, Any]:
        """The held-out dialog protocol for the model and the baselines, with one user (see retriever.evaluate);
        the user answers from `truth` (the full-label catalog when this assistant ranks a thinned copy)."""
        systems: dict[str, Any] = {"model": self.ranker}
        notes: dict[str, str] = {}
        if baselines:
            systems, notes = self.systems(seed)
        notes["model"] = self.ranking
        return evaluate(systems, self.catalog, self.user(user, seed=seed, catalog=truth), turns=turns,
                        targets=targets, seed=seed, user_name=user, notes=notes, truth=truth)

    def systems(self, seed: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
        """The model's ranker and every baseline over this catalog, with notes (retriever.evaluate.standard_systems)."""
        return standard_systems(self.ranker, self.catalog, self.features, self.backbone, attributes=self.attributes,
                                seed=seed)

    def first_pages(self, baselines: bool = True) -> dict[str, FirstPage]:
        """Per system, its first page for an opening message: the model exactly as the app ranks
        (`dialog().start(text=...)`), each baseline through the same Dialog with its own ranker."""
        pages: dict[str, FirstPage] = {"model": lambda text: self.dialog().start(text=text)}
        if baselines:
            context = self.context()
            for name, ranker in self.systems()[0].items():
                if name != "model":
                    pages[name] = functools.partial(_first_page, dataclasses.replace(context, ranker=ranker))
        return pages

    def evaluate_requests(self, requests: Sequence[Request], baselines: bool = True,
                          truth: Catalog | None = None) -> dict[str, Any]:
        """The request benchmark (see retriever.requests) for the model and the baselines, judged against
        `truth`'s labels (default this assistant's catalog)."""
        result = evaluate_requests(self.first_pages(baselines), truth or self.catalog, requests)
        result["notes"] = {"model": self.ranking, "keyword": "BM25 over titles and labels, today's exact-word parser"}
        return result
