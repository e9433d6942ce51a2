"""The trained simulator as a User: says how the target differs from the shown item, one or a batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from assistant.core.catalog import Catalog, Item
from simulator.captioner import DECODINGS, SimulatorModel


class SimulatorUser:
    """A simulated shopper backed by the relative captioner (`respond` for dialogs, `respond_batch` for rollouts).

    With `decoding="sample"` every call draws fresh captions from a seeded stream, so a run is reproducible
    and two calls on the same pair may word it differently.
    """

    def __init__(self, model: SimulatorModel, catalog: Catalog, features, decoding: str = "greedy",
                 seed: int = 0) -> None:
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, not {decoding!r}")
        self.model = model
        self.catalog = catalog
        self.decoding = decoding
        self.seed = seed
        self.calls = 0
        self.lookup = model.lookup(features)

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        return self.respond_batch([shown], [target], [turn])[0]

    def respond_batch(self, shown: Sequence[Item], targets: Sequence[Item], turns: Sequence[int]) -> list[str]:
        """Captions for many (shown, target) pairs in one generate() call (the turn does not change the wording)."""
        if not len(shown) == len(targets) == len(turns):
            raise ValueError(f"respond_batch needs as many shown items, targets and turns "
                             f"(got {len(shown)}, {len(targets)}, {len(turns)})")
        if not shown:
            return []
        self.calls += 1
        return self.model.caption(shown, targets, None, self.decoding, seed=self.seed + self.calls,
                                  batch_size=max(len(shown), 1), lookup=self.lookup)


def load_simulator_user(model_dir: Path, catalog: Catalog, features, decoding: str = "greedy",
                        seed: int = 0) -> SimulatorUser:
    """The simulator saved in `model_dir` (simulator.safetensors + .spm + .json) as a User over `catalog`."""
    return SimulatorUser(SimulatorModel.load(model_dir), catalog, features, decoding, seed)
