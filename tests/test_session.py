"""A shopping session rebuilt from its stored turns is the same dialog: identical results and the same next turn,
on SQLite and on PostgreSQL; a second copy catches up, and a stale one is refused and rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.core.store import TurnConflict, open_store
from assistant.session import ForeignDialog, ShoppingSession


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, demo_assistant):
    location = str(tmp_path) if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with open_store(location, source="test", catalog=demo_assistant.catalog.fingerprint) as opened:
        yield opened


def ids(items) -> list[str]:
    return [item.id for item in items]


def assert_same_dialog(a: ShoppingSession, b: ShoppingSession) -> None:
    assert ids(a.results) == ids(b.results)
    assert a.understood == b.understood and a.turns == b.turns
    assert (a.reference.id if a.reference else None) == (b.reference.id if b.reference else None)


def test_a_resumed_session_is_the_same_dialog_and_takes_the_same_next_turn(demo_assistant, store) -> None:
    session = ShoppingSession(demo_assistant, store)
    session.say("a red dress for women")
    session.say("in blue", reference=session.results[4])  # a reference sent with the message (the API's way)
    session.click(session.results[2])
    session.say("with long sleeves")  # about the clicked item
    session.say("shorter")  # about the top result
    resumed = ShoppingSession.resume(demo_assistant, store, session.id)
    assert_same_dialog(session, resumed)
    stored = store.turns(session.id)
    assert [t.kind for t in stored] == ["text", "feedback", "feedback", "feedback"]
    assert [t.clicked for t in stored] == [False, True, True, False]
    assert [t.shown for t in stored][-1] == ids(session.results)
    # the resumed copy goes on as the original would have: the same items for the same next message
    first = ShoppingSession.resume(demo_assistant, store, session.id)
    first.store = None  # played without storing, to compare with the stored continuation below
    first.say("not black")
    resumed.say("not black")
    assert ids(first.results) == ids(resumed.results) and len(resumed.results) == 12
    assert [t.turn for t in store.turns(session.id)] == [0, 1, 2, 3, 4]


def test_every_kind_of_start_plays_back_identically(demo_assistant, store, tmp_path: Path) -> None:
    catalog = demo_assistant.catalog
    by_item = ShoppingSession(demo_assistant, store)
    by_item.click(catalog.items[5])
    by_item.say("in green")
    about_an_item = ShoppingSession(demo_assistant, store)
    about_an_item.say("like this but striped", reference=catalog.items[9].id)
    photo = tmp_path / "photo.png"
    catalog.open_image(catalog.items[7]).save(photo)
    by_photo = ShoppingSession(demo_assistant, store)
    by_photo.photo(photo, "but in red")
    photo_alone = ShoppingSession(demo_assistant, store)
    photo_alone.photo(photo)
    assert photo_alone.reference_is_photo
    photo_alone.say("longer")
    for original in (by_item, about_an_item, by_photo, photo_alone):
        resumed = ShoppingSession.resume(demo_assistant, store, original.id)
        assert_same_dialog(original, resumed)
        original.store = None
        original.say("for men")
        resumed.say("for men")
        assert_same_dialog(original, resumed)
    kinds = [[t.kind for t in store.turns(s.id)] for s in (by_item, about_an_item, by_photo, photo_alone)]
    assert kinds == [["item", "feedback", "feedback"], ["text", "feedback"], ["photo", "feedback"],
                     ["photo", "feedback", "feedback"]]


def test_a_second_copy_catches_up_and_a_stale_one_is_refused_then_rebuilt(demo_assistant, store) -> None:
    """Two replicas' copies of one dialog: the one behind plays the other's turns; a write from a stale copy is a
    TurnConflict that stores nothing and leaves the copy equal to the stored dialog."""
    first = ShoppingSession(demo_assistant, store)
    first.say("a black skirt")
    second = ShoppingSession.resume(demo_assistant, store, first.id)
    first.say("longer")
    first.say("with a print")
    assert second.catch_up() == 2
    assert_same_dialog(first, second)
    first.say("in red")
    with pytest.raises(TurnConflict):
        second.say("in white")  # second did not catch up: its fourth turn is already stored
    assert [t.text for t in store.turns(first.id)] == ["a black skirt", "longer", "with a print", "in red"]
    assert_same_dialog(first, second)
    assert second.catch_up() == 0


def test_a_dialog_of_another_catalog_is_not_resumed(demo_assistant, tmp_path: Path) -> None:
    with open_store(tmp_path, catalog="another-catalog") as other:
        other.log_turn("d" * 32, 0, "text", "a dress", None, ["x"])
        with pytest.raises(ForeignDialog, match="another catalog"):
            ShoppingSession.resume(demo_assistant, other, "d" * 32)
        assert ShoppingSession.resume(demo_assistant, other, "e" * 32) is None
