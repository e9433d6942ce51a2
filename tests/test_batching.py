"""Batched ranking: concurrent callers' dialogs are ranked together, each caller gets its own pages, an error
reaches every caller of its batch, and a stored dialog played again keeps the pages its shopper saw."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence

import numpy as np

from assistant.core.batching import BatchingRanker
from assistant.core.dialog import DialogState
from assistant.core.store import open_store
from assistant.session import ShoppingSession
from retriever.baselines import KeywordRanker

OPENINGS = ["a red dress", "black trousers", "a white shirt", "a blue skirt", "a green jacket", "a grey sweater",
            "navy shorts", "a pink t-shirt", "a floral dress", "a striped shirt", "brown shoes", "a yellow top"]


class SlowKeywordRanker(KeywordRanker):
    """The search box's BM25 ranker, counting its calls and taking 20 ms each, so that callers overlap."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def rank(self, states: Sequence[DialogState], k: int, exclude: Sequence[set[int]]) -> np.ndarray:
        self.calls.append(len(states))
        time.sleep(0.02)
        if any("explode" in turn.feedback for state in states for turn in state.turns):
            raise ValueError("this batch cannot be ranked")
        return super().rank(states, k, exclude)


def opened_states(demo_assistant, count: int) -> list[DialogState]:
    states = []
    for n in range(count):
        dialog = demo_assistant.dialog()
        dialog.start(text=OPENINGS[n % len(OPENINGS)])
        dialog.reply(["in blue", "shorter", "for women"][n % 3])
        states.append(dialog.state)
    return states


def rank_at_once(ranker: BatchingRanker, states: list[DialogState], k: int = 12) -> list[np.ndarray | Exception]:
    """Every state ranked by its own thread, all released together; each thread's rows or error."""
    results: list[np.ndarray | Exception] = [np.empty(0)] * len(states)
    start = threading.Barrier(len(states))

    def one(n: int) -> None:
        start.wait()
        try:
            results[n] = ranker.rank([states[n]], k, [states[n].shown_rows()])
        except Exception as error:
            results[n] = error

    threads = [threading.Thread(target=one, args=(n,)) for n in range(len(states))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_callers_are_ranked_together_and_each_gets_its_own_pages(demo_assistant) -> None:
    states = opened_states(demo_assistant, 24)
    keyword = SlowKeywordRanker(demo_assistant.catalog)
    alone = [keyword.rank([state], 12, [state.shown_rows()]) for state in states]
    keyword.calls.clear()
    batching = BatchingRanker(keyword, max_batch=8)
    together = rank_at_once(batching, states)
    assert all(np.array_equal(mine, own) for mine, own in zip(together, alone, strict=True))
    assert len({tuple(page[0]) for page in alone}) > 6  # the dialogs want different things
    assert sum(keyword.calls) == 24 and max(keyword.calls) == 8 and len(keyword.calls) <= 6  # batches formed
    assert np.array_equal(batching.rank([states[0]], 12, [states[0].shown_rows()]), alone[0])  # alone: at once


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_still_runs(demo_assistant) -> None:
    states = opened_states(demo_assistant, 6)
    states[0].turns[-1].feedback = "explode"
    keyword = SlowKeywordRanker(demo_assistant.catalog)
    batching = BatchingRanker(keyword, max_batch=16)
    results = rank_at_once(batching, states)
    failed = [r for r in results if isinstance(r, ValueError)]
    assert failed and all("cannot be ranked" in str(error) for error in failed)
    assert isinstance(results[0], ValueError)
    fine = states[1]
    assert np.array_equal(batching.rank([fine], 12, [fine.shown_rows()]),
                          KeywordRanker(demo_assistant.catalog).rank([fine], 12, [fine.shown_rows()]))


def test_a_replayed_dialog_keeps_the_pages_its_shopper_saw(demo_assistant, tmp_path, caplog) -> None:
    """A stored page that today's ranking would not show (a near-tie broken the other way, another model) is what
    the replayed dialog shows and excludes from then on."""
    path = tmp_path / "dialogs.sqlite"
    with open_store(path, source="test", catalog=demo_assistant.catalog.fingerprint) as store:
        session = ShoppingSession(demo_assistant, store)
        session.say("a red dress")
        session.say("in blue")
        last = store.turns(session.id)[-1]
    other = [item.id for item in demo_assistant.catalog if item.id not in last.shown][:12]
    with sqlite3.connect(path) as db:  # the page as another ranking showed it
        db.execute("UPDATE turns SET shown = ? WHERE session_id = ? AND turn = ?",
                   (json.dumps(other), session.id, last.turn))
    caplog.set_level("WARNING", logger="assistant.session")
    with open_store(path, source="test", catalog=demo_assistant.catalog.fingerprint) as store:
        resumed = ShoppingSession.resume(demo_assistant, store, session.id)
        assert [item.id for item in resumed.results] == other
        assert "keeps the stored page" in caplog.text
        assert resumed.reference.id == other[0]
        resumed.say("shorter")
        assert not set(other) & {item.id for item in resumed.results}  # seen: not shown again
