"""The learned phrase matcher: how likely a shopper's phrase means what a value's description (or lexicon entry) says.

A matcher, not a classifier over fixed labels: it scores a pair (phrase vector, description vector) of MiniLM
vectors, so any catalog's values work. The score is a per-dimension weighted dot product of the two L2-normalised
vectors plus a bias, a logistic model trained by benchmarks/train_reader.py on the paraphrase shopper's train bank
(its fit part only; see that script's protocol) and shipped as `meaning_matcher.npz` beside this module. With unit
weights it is plain cosine similarity (the untrained reading by value descriptions).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MATCHER_FILE = Path(__file__).resolve().parent / "meaning_matcher.npz"
DIMENSIONS = 384


@dataclass(frozen=True)
class Matcher:
    """logit(phrase, description) = (phrase * weights) . description + bias; accepted at probability >= threshold."""

    weights: np.ndarray  # (DIMENSIONS,)
    bias: float
    threshold: float  # match probability a phrase needs (calibrated for precision on the fit part)
    margin: float = 0.5  # logit over the best description naming other values of the same attributes

    def probabilities(self, phrases: np.ndarray, descriptions: np.ndarray) -> np.ndarray:
        """(len(phrases), len(descriptions)) match probabilities."""
        logits = (phrases * self.weights) @ descriptions.T + self.bias
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: Path = MATCHER_FILE) -> None:
        np.savez(path, weights=self.weights.astype(np.float32), bias=np.float32(self.bias),
                 threshold=np.float32(self.threshold), margin=np.float32(self.margin))


def cosine_matcher(threshold: float, margin: float = 0.025, scale: float = 20.0) -> Matcher:
    """Plain cosine >= threshold with a cosine margin, as a Matcher (uniform weights; probability 0.5 at the
    threshold)."""
    return Matcher(np.full(DIMENSIONS, scale, np.float32), -scale * threshold, 0.5, scale * margin)


@functools.cache
def shipped_matcher(path: Path = MATCHER_FILE) -> Matcher | None:
    """The trained matcher shipped in the package, None when the file is absent."""
    if not path.is_file():
        return None
    with np.load(path) as data:
        return Matcher(data["weights"].astype(np.float32), float(data["bias"]), float(data["threshold"]),
                       float(data["margin"]))


def fit_matcher(phrases: np.ndarray, descriptions: np.ndarray, labels: np.ndarray, steps: int = 300,
                l2: float = 1e-3, seed: int = 0) -> tuple[np.ndarray, float]:
    """Logistic regression of labels (1: the phrase means the description) on phrase * description, the weights
    pulled towards a uniform scale (the cosine reading) by `l2`. Returns (weights, bias)."""
    torch.manual_seed(seed)
    features = torch.from_numpy(phrases * descriptions).float()
    target = torch.from_numpy(labels).float()
    positive_share = float(target.mean().clamp(1e-3, 1 - 1e-3))
    weight = torch.nn.functional.binary_cross_entropy_with_logits
    scale = torch.tensor(10.0, requires_grad=True)
    offset = torch.zeros(DIMENSIONS, requires_grad=True)
    bias = torch.tensor(-6.0, requires_grad=True)
    optimiser = torch.optim.Adam([scale, offset, bias], lr=0.05)
    balance = torch.where(target > 0, 0.5 / positive_share, 0.5 / (1 - positive_share))
    for _ in range(steps):
        optimiser.zero_grad()
        logits = features @ (scale + offset) + bias
        loss = (weight(logits, target, reduction="none") * balance).mean() + l2 * (offset ** 2).sum()
        loss.backward()
        optimiser.step()
    return (scale + offset).detach().numpy().astype(np.float32), float(bias.detach())
