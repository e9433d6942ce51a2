"""A model directory's files and its config: every stage's section, resolved, as `config.yaml` holds it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.core.config import load_config, section
from assistant.vision.attributes import AttributeConfig
from assistant.vision.backbone import BackboneConfig
from assistant.vision.index import IndexConfig
from retriever.model import RetrieverConfig
from simulator.captioner import DECODINGS, SimulatorConfig

CONFIG_FILE, MANIFEST_FILE, METRICS_FILE = "config.yaml", "stages.json", "metrics.json"
ATTRIBUTES_FILE, RETRIEVER_FILE, PLOT_FILE = "attributes.safetensors", "retriever.safetensors", "evaluation.png"


@dataclass
class CatalogSection:
    """The `catalog:` section: which catalog a config trains on when none is given on the command line."""

    source: str = "demo"


@dataclass
class UsersConfig:
    """The `users:` section: how the template shopper talks during training and evaluation."""

    max_facets: int = 2
    title_words: int = 1
    seed: int = 0
    # How the trained simulator words its answers in rollouts and evaluation: "sample" (nucleus, top_p of the
    # simulator config) varies the wording as people do; "greedy" always says the likeliest caption.
    simulator_decoding: str = "sample"

    def __post_init__(self) -> None:
        if self.simulator_decoding not in DECODINGS:
            raise ValueError(f"users simulator_decoding must be one of {DECODINGS}, not {self.simulator_decoding!r}")


@dataclass
class EvaluationConfig:
    """The `evaluation:` section: the held-out protocol run at the end of training."""

    split: str = "test"
    targets: int = 1000
    turns: int = 5
    seed: int = 0
    simulator_pairs: int = 1000
    users: list[str] = field(default_factory=lambda: ["template", "simulator"])


@dataclass
class PipelineConfig:
    """All sections of a config, each a stage's own dataclass."""

    catalog: CatalogSection
    backbone: BackboneConfig
    attributes: AttributeConfig
    index: IndexConfig
    simulator: SimulatorConfig
    retriever: RetrieverConfig
    users: UsersConfig
    evaluation: EvaluationConfig

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PipelineConfig:
        kinds = {"catalog": CatalogSection, "backbone": BackboneConfig, "attributes": AttributeConfig,
                 "index": IndexConfig, "simulator": SimulatorConfig, "retriever": RetrieverConfig,
                 "users": UsersConfig, "evaluation": EvaluationConfig}
        unknown = set(raw) - set(kinds)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(kinds)}")
        return cls(**{name: section(raw, name, kind) for name, kind in kinds.items()})

    @classmethod
    def load(cls, name_or_path: str | Path) -> PipelineConfig:
        return cls.from_dict(load_config(name_or_path))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)}


