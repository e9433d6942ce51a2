"""The `train` pipeline: a killed run resumes without repeating finished stages; the metrics stage's report."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from assistant.core.config import STAGES
from assistant.core.loaders import load_catalog
from assistant.model_dir import PipelineConfig
from assistant.pipeline import MANIFEST_FILE, METRICS_FILE, PLOT_FILE, TrainingRun, train
from retriever.train import RETRIEVER_FILE, TRAIN_LOG_FILE

REPO = Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "tests" / "tiny.yaml"


def _copy_run(demo_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(demo_model_dir, copy)
    return copy


def _manifest(model_dir: Path) -> dict:
    return json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))


@pytest.mark.timeout(900)  # trains every stage of the tiny config, then resumes a killed retriever stage
def test_a_run_killed_in_the_retriever_stage_resumes_without_repeating_finished_stages(
        demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_run(demo_model_dir, tmp_path)
    manifest = _manifest(model_dir)
    del manifest["stages"]["retriever"]  # as if the run had been killed before the retriever stage finished
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest), encoding="utf-8")
    for name in (RETRIEVER_FILE, TRAIN_LOG_FILE, "retriever-train-state.safetensors"):
        (model_dir / name).unlink(missing_ok=True)
    finished = {name: (model_dir / name).stat().st_mtime_ns
                for name in ("backbone.safetensors", "attributes.safetensors", "simulator.safetensors")}

    command = [sys.executable, "-m", "assistant", "train", "--config", str(TINY_CONFIG), "--catalog", "demo:300",
               "--out", str(model_dir), "--resume", "retriever"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not (model_dir / TRAIN_LOG_FILE).exists():  # the first retriever epoch is done: kill it mid-stage
        assert process.poll() is None, "the resumed run ended before its first retriever epoch"
        assert time.monotonic() < deadline, "no retriever epoch within 2 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert "retriever" not in _manifest(model_dir)["stages"]
    before_kill = json.loads((model_dir / TRAIN_LOG_FILE).read_text(encoding="utf-8"))

    result = train("demo:300", TINY_CONFIG, model_dir, resume=True, stages=STAGES[:-1], progress=False)
    assert result["stages"]["retriever"]["done"]
    for stage in ("backbone", "features", "attributes", "simulator"):  # the same records: never run again
        assert result["stages"][stage] == manifest["stages"][stage]
    for name, mtime in finished.items():
        assert (model_dir / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    log = json.loads((model_dir / TRAIN_LOG_FILE).read_text(encoding="utf-8"))
    assert log[:len(before_kill)] == before_kill  # the retriever went on from its checkpoint, not from scratch
    assert [entry["epoch"] for entry in log] == [1, 2]


def test_metrics_stage_reports_rising_dialog_curves_and_both_simulator_decodings(
        demo_model_dir: Path, tmp_path: Path) -> None:
    model_dir = _copy_run(demo_model_dir, tmp_path)
    result = train("demo:300", TINY_CONFIG, model_dir, resume=True, progress=False)
    assert result["stages"]["metrics"]["done"]
    metrics = json.loads((model_dir / METRICS_FILE).read_text(encoding="utf-8"))
    assert (model_dir / PLOT_FILE).stat().st_size > 10_000
    assert set(metrics["dialogs"]) == {"template", "simulator"}
    assert set(metrics["simulator"]) == {"sample", "greedy"}
    assert metrics["simulator"]["sample"]["distinct_2"] > metrics["simulator"]["greedy"]["distinct_2"]
    systems = metrics["dialogs"]["template"]["systems"]
    model, learnt, random = systems["model"], systems["retriever_only"], systems["random"]
    assert len(model["recall@10"]) == 5
    # the target climbs as the shopper talks: the retriever's own curve rises (on 300 items the app's ranking,
    # with the feedback's constraints and BM25, is near the top from the first turn) and both end well above random
    assert learnt["rank_percentile"][-1] > learnt["rank_percentile"][0] + 5
    assert model["rank_percentile"][-1] >= model["rank_percentile"][0]
    assert model["recall@10"][-1] >= learnt["recall@10"][-1] > random["recall@10"][-1] + 0.15


def test_a_model_directory_from_before_label_dropout_keeps_its_run_key(tmp_path: Path) -> None:
    catalog, config = load_catalog("demo:300"), PipelineConfig.load(Path(__file__).parent / "tiny.yaml")
    assert "label_dropout" not in TrainingRun(catalog, config, tmp_path).run_key["config"]["retriever"]
    on = dataclasses.replace(config, retriever=dataclasses.replace(config.retriever, label_dropout=0.3))
    assert TrainingRun(catalog, on, tmp_path).run_key["config"]["retriever"]["label_dropout"] == 0.3
