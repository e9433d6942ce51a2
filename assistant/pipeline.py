"""The `train` pipeline: every stage in order into one self-contained model directory, skipping finished ones."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from assistant.api import Assistant
from assistant.core.catalog import CaptionPair, Catalog, caption_pairs_digest
from assistant.core.config import STAGES
from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text
from assistant.core.store import read_caption_pairs
from assistant.model_dir import (
    ATTRIBUTES_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RETRIEVER_FILE,
    PipelineConfig,
)
from assistant.users import paraphrase_user, template_user
from assistant.vision.attributes import AttributePredictor
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.backbone_training import train_backbone
from assistant.vision.features import ItemFeatures, compute_features, features_for
from retriever.evaluate import plot
from retriever.train import mixed_user, train_retriever
from simulator.captioner import SimulatorModel
from simulator.metrics import evaluate_simulator
from simulator.train import train_simulator
from simulator.user import load_simulator_user

log = logging.getLogger(__name__)

# The config sections each stage's output depends on: a stage kept by `fine_tune` must keep them unchanged.
STAGE_SECTIONS = {"backbone": ("backbone",), "features": ("backbone",), "attributes": ("attributes",),
                  "simulator": ("simulator",), "retriever": ("retriever", "users"), "metrics": ("evaluation",)}
FINE_TUNED = ("simulator", "retriever")  # the stages `fine_tune` continues from their saved weights

class TrainingRun:
    """One `train` run: the config, the catalog and the model directory, with a manifest of finished stages."""

    def __init__(self, catalog: Catalog, config: PipelineConfig, out_dir: Path, progress: bool = True,
                 human_pairs: Sequence[CaptionPair] = (), fine_tune: bool = False) -> None:
        if human_pairs:
            catalog = catalog.with_caption_pairs(human_pairs)
        self.catalog, self.config, self.out_dir, self.progress = catalog, config, Path(out_dir), progress
        self.fine_tune = fine_tune  # simulator and retriever continue from the weights already in out_dir
        self.run_key: dict[str, Any] = {"catalog": catalog.fingerprint,
                                        "config": {**config.as_dict(), "retriever": config.retriever.keyed()}}
        if human_pairs:
            self.run_key["human_pairs"] = caption_pairs_digest(human_pairs)
        self.manifest: dict[str, Any] = {"run_key": self.run_key, "stages": {}}
        self._backbone: Backbone | None = None
        self._features: ItemFeatures | None = None

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST_FILE

    def open(self, resume: bool) -> None:
        """Start a new model directory, or continue the one there when `resume` and it is the same run."""
        if self.manifest_path.exists():
            existing = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if not resume:
                raise FileExistsError(f"{self.out_dir} already holds a training run: pass --resume to continue it, "
                                      "or choose another --out")
            if existing.get("run_key") != json.loads(json.dumps(self.run_key)):
                raise ValueError(f"{self.out_dir} holds a run of another config or catalog; choose another --out")
            self.manifest = existing
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / CONFIG_FILE, yaml.safe_dump(self.config.as_dict(), sort_keys=False))
        atomic_write_text(self.out_dir / "catalog.json", json.dumps(
            {"name": self.catalog.name, "fingerprint": self.catalog.fingerprint, "items": len(self.catalog),
             "attributes": self.catalog.attribute_names()}, indent=2) + "\n")
        self._save_manifest()

    def _save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2) + "\n")

    def done(self, stage: str) -> bool:
        return bool(self.manifest["stages"].get(stage, {}).get("done"))

    def run(self, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
        for stage in stages:
            if self.done(stage):
                log.info("stage %s: finished before, skipped", stage)
                continue
            start = time.perf_counter()
            log.info("stage %s: running", stage)
            details = getattr(self, f"stage_{stage}")() or {}
            self.manifest["stages"][stage] = {"done": True, "seconds": round(time.perf_counter() - start, 1),
                                              **details}
            self._save_manifest()
        return self.manifest

    # Stages, in order. Each leaves its files in the model directory and can be re-entered after a kill.
    def split(self, name: str) -> Catalog:
        return self.catalog.split(name)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = Backbone.load(self.out_dir / BACKBONE_FILE, device=self.config.backbone.device)
        return self._backbone

    @property
    def features(self) -> ItemFeatures:
        if self._features is None:
            self._features = compute_features(self.backbone, self.catalog, progress=self.progress)
        return self._features

    def stage_backbone(self) -> dict:
        self._backbone = train_backbone(self.split("train"), self.config.backbone, self.out_dir,
                                        progress=self.progress)
        return {"backbone_id": self._backbone.id}

    def stage_features(self) -> dict:
        colour = self.features.colour
        return {"items": len(self.features), "failed_images": len(self.features.failed),
                "colour_features": 0 if colour is None else int(colour.shape[1])}

    def stage_attributes(self) -> dict:
        """Heads trained on the train split, calibrated on val; the test report per attribute (accuracy, ECE,
        colour family) is kept under `test_accuracy`, the name the metrics stage reads."""
        features = self.features
        rows = {name: [self.catalog.index_of(i) for i in self.split(name).ids] for name in ("train", "val", "test")}
        predictor = AttributePredictor.train(features.image, self.catalog, rows["train"], self.config.attributes,
                                             rows_val=rows["val"], colour=features.colour)
        predictor.save(self.out_dir / ATTRIBUTES_FILE)
        return {"test_accuracy": predictor.evaluate(features.image, self.catalog, rows["test"], features.colour)}

    def stage_simulator(self) -> dict:
        train_simulator(self.catalog, self.features, self.config.simulator, self.out_dir, resume=True,
                        fine_tune=self.fine_tune)
        return {"human_pairs": len(self.split("train").caption_pairs), "fine_tune": self.fine_tune}

    def stage_retriever(self) -> dict:
        train = self.split("train")
        train_features = features_for(self.features, train)
        simulator = load_simulator_user(self.out_dir, train, train_features, self.config.users.simulator_decoding,
                                        seed=self.config.users.seed)
        retriever = self.config.retriever
        paraphrase = paraphrase_user(train, self.config.users, bank="train") if retriever.paraphrase_fraction else None
        user = mixed_user(simulator, template_user(train, self.config.users), retriever.simulator_fraction,
                          seed=retriever.seed, paraphrase=paraphrase, paraphrase_fraction=retriever.paraphrase_fraction)
        train_retriever(train, train_features, user, retriever, self.out_dir, resume=True,
                        human_pairs=train.caption_pairs,
                        start_from=self.out_dir / RETRIEVER_FILE if self.fine_tune else None)
        return {"human_pairs": len(train.caption_pairs), "fine_tune": self.fine_tune}

    def stage_metrics(self) -> dict:
        evaluation = self.config.evaluation
        held_out = self.split(evaluation.split)
        assistant = Assistant.load(self.out_dir, held_out, progress=self.progress, backbone=self.backbone,
                                   features=features_for(self.features, held_out))
        metrics: dict[str, Any] = {"catalog": self.catalog.name, "split": evaluation.split,
                                   "stages": {s: v.get("seconds") for s, v in self.manifest["stages"].items()},
                                   "attributes": self.manifest["stages"]["attributes"]["test_accuracy"]}
        simulator = SimulatorModel.load(self.out_dir)
        metrics["simulator"] = {decoding: evaluate_simulator(simulator, held_out, assistant.features,
                                                             pairs=evaluation.simulator_pairs, seed=evaluation.seed,
                                                             decoding=decoding)
                                for decoding in dict.fromkeys([self.config.users.simulator_decoding, "greedy"])}
        for result in metrics["simulator"].values():
            result.pop("examples", None)
        metrics["dialogs"] = {user: assistant.evaluate(user, turns=evaluation.turns, targets=evaluation.targets,
                                                       seed=evaluation.seed) for user in evaluation.users}
        atomic_write_text(self.out_dir / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        plot(metrics["dialogs"]["template"], self.out_dir / PLOT_FILE)
        model = metrics["dialogs"]["template"]["systems"]["model"]
        return {"success@10": model["success@10"][-1], "recall@10": model["recall@10"][-1]}


def read_dialogs_pairs(paths: Sequence[str | Path]) -> list[CaptionPair]:
    """The human pairs of `export-dialogs` files, each file's pairs in order."""
    return [pair for path in paths for pair in read_caption_pairs(path)]


def train(catalog: str | Catalog | None, config: str | Path, out_dir: str | Path, resume: bool = False,
          progress: bool = True, stages: tuple[str, ...] = STAGES, dialogs: Sequence[str | Path] = ()
          ) -> dict[str, Any]:
    """Run every stage (backbone → features → attribute heads → simulator → retriever → metrics) into `out_dir`.

    Stages a previous run of the same config and catalog finished are skipped with `resume`; a stage that
    was killed midway continues from its own checkpoint. The human pairs of `dialogs` (files written by
    `export-dialogs`) among the train split join simulator and retriever training.
    """
    pipeline_config = PipelineConfig.load(config)
    if not isinstance(catalog, Catalog):
        catalog = load_catalog(catalog or pipeline_config.catalog.source)
    run = TrainingRun(catalog, pipeline_config, Path(out_dir), progress=progress,
                      human_pairs=read_dialogs_pairs(dialogs))
    run.open(resume)
    return run.run(stages)


def fine_tune(source: str | Path, out_dir: str | Path, stages: Sequence[str] = FINE_TUNED,
              dialogs: Sequence[str | Path] = (), catalog: str | Catalog | None = None,
              config: str | Path | None = None, resume: bool = False, progress: bool = True,
              fresh: bool = False) -> dict[str, Any]:
    """A copy of the model directory `source` in `out_dir` with only `stages` re-run, on the human pairs of
    `dialogs` too: the simulator and retriever continue from their saved weights (`finetune_steps`,
    `finetune_epochs`), or train from scratch with `fresh` (an ablation, a changed section); features and
    attribute heads are computed again. The other stages' files are kept
    as they are, so their config sections must not change; the held-out metrics are dropped unless `metrics`
    is among `stages`. A killed fine-tune continues with `resume`."""
    source, out_dir = Path(source), Path(out_dir)
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ValueError(f"stages to re-run must be some of {', '.join(STAGES[1:])}, "
                         f"not {', '.join(unknown) or 'none'}")
    if "backbone" in stages:
        raise ValueError("the backbone cannot be re-run on a copy (everything else reads its vectors): "
                         "train a new model instead")
    if not (source / MANIFEST_FILE).exists():
        raise ValueError(f"{source}: not a model directory (no {MANIFEST_FILE})")
    source_config = PipelineConfig.load(source / CONFIG_FILE)
    pipeline_config = PipelineConfig.load(config) if config else source_config
    changed = sorted({name for stage in STAGES if stage not in stages for name in STAGE_SECTIONS[stage]
                      if stage != "metrics" and getattr(pipeline_config, name) != getattr(source_config, name)})
    if changed:
        raise ValueError(f"the config changes the {', '.join(changed)} section(s) of stages kept from {source}: "
                         "re-run those stages too")
    if not isinstance(catalog, Catalog):
        catalog = load_catalog(catalog or pipeline_config.catalog.source)
    trained_on = json.loads((source / "catalog.json").read_text(encoding="utf-8"))["fingerprint"]
    if trained_on != catalog.fingerprint:
        raise ValueError(f"{source} was trained on another catalog (fingerprint {trained_on}, this one "
                         f"{catalog.fingerprint}): train a new model for it")
    run = TrainingRun(catalog, pipeline_config, out_dir, progress=progress,
                      human_pairs=read_dialogs_pairs(dialogs), fine_tune=not fresh)
    if out_dir.exists() and not (resume and run.manifest_path.exists()):
        raise FileExistsError(f"{out_dir} exists: choose another --out (or pass --resume to continue a fine-tune)")
    if not out_dir.exists():
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        manifest = json.loads((staging / MANIFEST_FILE).read_text(encoding="utf-8"))
        redone = set(stages) | {"metrics"}
        manifest["stages"] = {name: info for name, info in manifest["stages"].items() if name not in redone}
        manifest["run_key"] = run.run_key
        manifest["fine_tuned_from"] = {"model": source.name, "stages": list(stages), "fresh": fresh,
                                       "human_pairs": len(run.catalog.caption_pairs)}
        for stale in (METRICS_FILE, PLOT_FILE):
            (staging / stale).unlink(missing_ok=True)
        atomic_write_text(staging / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        staging.rename(out_dir)
    run.open(resume=True)
    return run.run(tuple(stage for stage in STAGES if stage in stages))
