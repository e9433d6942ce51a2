"""The public API: `Assistant.load(model_dir, catalog)`, then `assistant.dialog()` with `start` and `reply`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from assistant.core.catalog import Catalog
from assistant.core.constraints import FeedbackReader
from assistant.core.dialog import Dialog, RankingContext
from assistant.core.loaders import load_catalog
from assistant.model_dir import ATTRIBUTES_FILE, RETRIEVER_FILE, PipelineConfig
from assistant.users import User, resolve_user
from assistant.vision.attributes import AttributePredictor
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.features import ItemFeatures, compute_features
from assistant.vision.index import cached_index
from retriever.evaluate import evaluate, model_ranker, standard_systems
from retriever.model import DialogRetriever
from simulator.user import load_simulator_user

log = logging.getLogger(__name__)


class Assistant:
    """A trained system over one catalog: backbone, item features, retriever with its index, attribute heads.

    The catalog may be one the model never saw: its features and index are built with the model's backbone
    (and cached), and items without attribute labels get predicted ones.
    """

    def __init__(self, model_dir: Path, catalog: Catalog, config: PipelineConfig, backbone: Backbone,
                 features: ItemFeatures, retriever: DialogRetriever, attribute_predictor: AttributePredictor | None,
                 attributes: list[dict[str, str]], predicted: set[tuple[str, str]]) -> None:
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
                                   lexical_weight=config.retriever.lexical_weight, attributes=attributes)
        self.constraints, self.keyword = self.ranker.constraints, self.ranker.lexical
        self.reader = self.constraints.reader if self.constraints is not None else FeedbackReader(catalog)
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
        if predictor is not None and any(set(predictor.names) - set(a) for a in attributes):
            filled, predicted = predictor.fill_missing(catalog, features.image)
            attributes = [dict(item.attributes) for item in filled]
        return cls(model_dir, catalog, config, backbone, features, retriever, predictor, attributes, predicted)

    def context(self) -> RankingContext:
        return RankingContext(self.catalog, self.ranker, self.features.image, self.backbone, self.attribute_predictor)

    def dialog(self, page_size: int = 12) -> Dialog:
        """A new dialog for one shopper."""
        return Dialog(self.context(), page_size=page_size)

    def user(self, spec: str = "template", seed: int = 0) -> User:
        """A simulated shopper: `template`, `simulator` (the trained one in the model dir) or `module:function`."""
        key = f"{spec}@{seed}"
        if key not in self._users:
            if spec == "simulator":
                self._users[key] = load_simulator_user(self.model_dir, self.catalog, self.features,
                                                       self.config.users.simulator_decoding, seed=seed)
            else:
                self._users[key] = resolve_user(spec, self.catalog, seed=seed, settings=self.config.users)
        return self._users[key]

    def understood(self, dialog: Dialog) -> dict[str, str]:
        """The attribute values the shopper has asked for so far (later turns override earlier, negations remove)."""
        return self.reader.constraints(dialog.state)[0]

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
                 baselines: bool = True) -> dict[str, Any]:
        """The held-out dialog protocol for the model and the baselines, with one user (see retriever.evaluate)."""
        systems: dict[str, Any] = {"model": self.ranker}
        notes: dict[str, str] = {}
        if baselines:
            systems, notes = standard_systems(self.ranker, self.catalog, self.features, self.backbone,
                                              attributes=self.attributes, seed=seed)
        notes["model"] = self.ranking
        return evaluate(systems, self.catalog, self.user(user, seed=seed), turns=turns, targets=targets, seed=seed,
                        user_name=user, notes=notes)
