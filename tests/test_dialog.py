"""The dialog loop: batched simulated dialogs (shown item, ranks, stopping) and one shopper's Dialog API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from assistant.core.catalog import Catalog, Item
from assistant.core.dialog import (
    Dialog,
    DialogState,
    RankingContext,
    ScoreRanker,
    ShownImage,
    run_dialogs,
    target_ranks,
    top_rows,
)
from assistant.core.loaders import load_catalog
from retriever.baselines import KeywordRanker
from simulator.template_user import TemplateUser


def pixel_vectors(images: Sequence[Image.Image]) -> np.ndarray:
    """A cheap real image representation: 8x10 RGB thumbnails, centred and L2-normalised."""
    pixels = np.stack([np.asarray(im.convert("RGB").resize((8, 10)), dtype=np.float32).ravel() for im in images])
    pixels -= pixels.mean(1, keepdims=True)
    return pixels / np.linalg.norm(pixels, axis=1, keepdims=True)


class PixelBackbone:
    """Encodes photos as thumbnails (the Dialog only needs encode_images)."""

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return pixel_vectors(images)


class FixedOrderRanker(ScoreRanker):
    """Scores every catalog row by a fixed preference order, whatever the dialog says."""

    def __init__(self, order: Sequence[int], size: int) -> None:
        self.preference = np.zeros(size)
        self.preference[list(order)] = np.arange(len(order), 0, -1)
        self.calls = 0

    def scores(self, states: Sequence[DialogState]) -> np.ndarray:
        self.calls += 1
        return np.tile(self.preference, (len(states), 1))


class RecordingUser:
    """Answers with the ids it was shown, and remembers every question (one at a time)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int]] = []

    def respond(self, shown: Item, target: Item, turn: int) -> str:
        self.asked.append((shown.id, target.id, turn))
        return f"not like {shown.id}"


class BatchUser(RecordingUser):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def respond_batch(self, shown: Sequence[Item], targets: Sequence[Item], turns: Sequence[int]) -> list[str]:
        self.batches.append(len(shown))
        return [self.respond(s, t, n) for s, t, n in zip(shown, targets, turns, strict=True)]


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog("demo:300")


@pytest.fixture(scope="module")
def context(demo: Catalog) -> RankingContext:
    vectors = pixel_vectors([demo.open_image(item) for item in demo])
    return RankingContext(demo, KeywordRanker(demo), vectors, backbone=PixelBackbone())


def test_top_rows_skips_excluded_rows_and_pads() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.2, 0.3]])
    assert top_rows(scores, 3, [{1}, set()]).tolist() == [[3, 2, 0], [0, 3, 2]]
    assert top_rows(scores, 5, [{0, 1, 2}, set()]).tolist() == [[3, -1, -1, -1, -1], [0, 3, 2, 1, -1]]


def test_target_rank_ignores_shown_items() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6]])
    assert target_ranks(scores, np.array([3]), [set()]).tolist() == [4]
    assert target_ranks(scores, np.array([3]), [{0, 2}]).tolist() == [2]


def test_each_turn_shows_the_top_unshown_item_until_the_target_is_first(demo: Catalog) -> None:
    order = [10, 11, 12, 13, 14, 15]  # the ranker's fixed preference; the target (13) is 4th
    ranker = FixedOrderRanker(order, len(demo))
    user = RecordingUser()
    run = run_dialogs(ranker, demo, [13], user, turns=6, start_rows=[50])
    shown = [turn.shown for turn in run.states[0].turns]
    # turn 1 is about the start item; then the top item not shown before, one per turn, until 13 ranks first
    assert shown == [50, 10, 11, 12]
    assert run.ranks.tolist() == [[4, 3, 2, 1, 1, 1]]
    assert run.found().tolist() == [True]
    assert [(s, n) for s, _, n in user.asked] == [(demo.items[r].id, n) for n, r in enumerate(shown, start=1)]
    assert run.states[0].turns[1].feedback == f"not like {demo.items[10].id}"
    assert 13 not in run.states[0].shown_rows()


def test_batched_users_are_asked_once_per_turn_and_openings_need_no_item(demo: Catalog) -> None:
    ranker = FixedOrderRanker(list(range(40)), len(demo))
    user = BatchUser()
    run = run_dialogs(ranker, demo, [100, 101, 102], user, turns=3, start_rows=[5, None, 7],
                      openings=[None, "a red dress", None])
    assert user.batches == [2, 3, 3]
    opening = run.states[1].turns[0]
    assert opening.shown is None and opening.feedback == "a red dress"
    assert [t.shown for t in run.states[1].turns] == [None, 0, 1]
    with pytest.raises(ValueError, match="start row or an opening"):
        run_dialogs(ranker, demo, [1], user, turns=2, start_rows=[None])


def test_template_shopper_dialogs_with_keyword_search_close_in(demo: Catalog) -> None:
    targets = np.arange(0, 300, 10)
    user = TemplateUser(demo, seed=3)
    run = run_dialogs(KeywordRanker(demo), demo, targets, user, turns=4, start_rows=[(t + 1) % 300 for t in targets])
    median_ranks = np.median(run.ranks, axis=0)
    assert median_ranks[-1] < median_ranks[0]
    assert run.found().mean() > 0.3


def test_dialog_from_words_never_shows_an_item_twice(context: RankingContext, demo: Catalog) -> None:
    dialog = Dialog(context)
    first = dialog.start(text="a red floral dress")
    assert len(first) == 12
    assert first[0].attributes["colour"] == "red" and first[0].attributes["garment"] == "dress"
    assert dialog.reference == first[0]
    second = dialog.reply("in blue instead of red")
    assert dialog.turns[1].shown == demo.index_of(first[0].id)
    assert first[0] not in second
    assert second[0].attributes["colour"] == "blue"
    third = dialog.reply("with long sleeves", reference=second[3].id)
    assert dialog.turns[2].shown == demo.index_of(second[3].id)
    assert second[3] not in third and first[0] not in third
    assert [t.feedback for t in dialog.turns] == ["a red floral dress", "in blue instead of red", "with long sleeves"]
    assert dialog.results == third


def test_dialog_from_an_item_shows_look_alikes_and_talks_about_the_item(context: RankingContext,
                                                                        demo: Catalog) -> None:
    item = demo.items[42]
    dialog = Dialog(context, page_size=6)
    results = dialog.start(item=item.id)
    assert results[0] == item and len(results) == 6
    similarity = context.image_vectors @ context.image_vectors[42]
    assert [demo.index_of(r.id) for r in results[1:]] == list(np.argsort(-similarity)[1:6])
    assert dialog.reference == item and dialog.turns == []
    dialog.reply("in green")
    assert dialog.turns[0].shown == 42
    assert item not in dialog.results


def test_dialog_from_a_photo_uses_the_backbone(context: RankingContext, demo: Catalog) -> None:
    photo = demo.open_image(demo.items[7])
    dialog = Dialog(context)
    results = dialog.start(image=photo)
    assert results[0] == demo.items[7]  # the photo is that item's own picture
    assert isinstance(dialog.reference, ShownImage)
    dialog.reply("a black one")
    assert isinstance(dialog.turns[0].shown, ShownImage)
    no_backbone = RankingContext(demo, context.ranker, context.image_vectors)
    with pytest.raises(ValueError, match="backbone"):
        Dialog(no_backbone).start(image=photo)


def test_dialog_rejects_bad_requests(context: RankingContext) -> None:
    dialog = Dialog(context)
    with pytest.raises(ValueError, match="start the dialog first"):
        dialog.reply("in red")
    with pytest.raises(ValueError, match="say what you are looking for"):
        dialog.start(text="  ")
    with pytest.raises(ValueError, match="no item 'nope'"):
        dialog.start(item="nope")
    dialog.start(text="a dress")
    with pytest.raises(ValueError, match="already started"):
        dialog.start(text="a skirt")
    with pytest.raises(ValueError, match="how the item should change"):
        dialog.reply("")
    assert len(dialog.turns) == 1
