"""Benchmark: backbone training images/s on CPU (the real training loop on real images), inference images/s, texts/s.

Writes benchmarks/results/backbone_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text
from assistant.vision.backbone import BackboneConfig, create_backbone
from assistant.vision.backbone_training import train_backbone
from assistant.vision.preprocessing import item_text, pixel_tensor

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-small"


def measure(catalog, config: BackboneConfig) -> dict:
    """Training images/s from the second of two epochs (the first warms up), then inference speeds."""
    with tempfile.TemporaryDirectory() as out_dir:
        train_backbone(catalog, dataclasses.replace(config, epochs=2), out_dir, progress=False)
        history = json.loads((Path(out_dir) / "backbone-train-log.json").read_text())
    backbone = create_backbone(config)
    pixels, _ = pixel_tensor(catalog, backbone.image_size, progress=False)
    texts = [item_text(item) for item in catalog]
    backbone.encode_images(pixels[:256])
    started = time.perf_counter()
    backbone.encode_images(pixels)
    image_seconds = time.perf_counter() - started
    started = time.perf_counter()
    backbone.encode_texts(texts)
    text_seconds = time.perf_counter() - started
    parameters = {tower: sum(p.numel() for p in module.parameters())
                  for tower, module in (("image", backbone.model.visual), ("all", backbone.model))}
    return {"model": config.model, "image_size": list(backbone.image_size), "batch_size": config.batch_size,
            "parameters": parameters, "train_images_per_second": history[-1]["images_per_second"],
            "encode_images_per_second": round(len(pixels) / image_seconds, 1),
            "encode_texts_per_second": round(len(texts) / text_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalog", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--items", type=int, default=2048, help="train-split items to time on")
    parser.add_argument("--models", nargs="+", default=["fashion-vit-tiny"])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results/backbone_throughput.json")
    args = parser.parse_args()
    train = load_catalog(args.catalog).split("train")
    catalog = train.subset(train.ids[: args.items], name=f"train[:{args.items}]")
    load_before = os.getloadavg()[0]
    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for model in args.models:
            runs.append({"torch_threads": threads, **measure(catalog, BackboneConfig(model=model))})
            print(json.dumps(runs[-1]), flush=True)
    result = {"items": len(catalog), "device": "cpu", "cpus": os.cpu_count(), "runs": runs,
              "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "note": "CPU shared with other processes while measured: speeds are lower bounds"}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
