"""Probes of a backbone: the shuffled-pairs control and text -> image recall over a catalog."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from assistant.core.catalog import Catalog, Item
from assistant.vision.backbone import Backbone
from assistant.vision.preprocessing import pixel_tensor


def shuffled_pairs(catalog: Catalog, seed: int = 0) -> Catalog:
    """The same texts with other items' images: a control with no image-text signal."""
    order = list(range(len(catalog)))
    random.Random(seed).shuffle(order)
    items = [Item(item.id, catalog.items[other].image_path, item.title, item.category, item.attributes)
             for item, other in zip(catalog.items, order, strict=True)]
    return Catalog(items, name=f"{catalog.name}:shuffled")


def text_image_recall(backbone: Backbone, catalog: Catalog, ks: Sequence[int] = (1, 5, 10),
                      progress: bool = False) -> dict[str, float]:
    """Text -> image retrieval with each item's title as the query over all the catalog's images: R@k, median rank.

    Ties count against the item (a constant model scores chance, not perfect).
    """
    pixels, _ = pixel_tensor(catalog, backbone.image_size, progress=progress)
    images = torch.from_numpy(backbone.encode_images(pixels))
    titles = torch.from_numpy(backbone.encode_texts([item.title for item in catalog]))
    ranks = []
    for start in range(0, len(titles), 1024):
        scores = titles[start:start + 1024] @ images.T
        own = scores[torch.arange(len(scores)), torch.arange(start, start + len(scores))]
        ranks.append((scores >= own[:, None]).sum(dim=1) - 1)
    rank = torch.cat(ranks).float()
    result = {f"R@{k}": round(float((rank < k).float().mean()), 4) for k in ks}
    result["median_rank"] = float(rank.median()) + 1
    return result
