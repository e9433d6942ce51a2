"""Negation scope: which of a message's mentions (spans of tokens naming a value) the shopper rules out."""

from __future__ import annotations

from collections.abc import Sequence

# Cues that rule out the mentions after them (token sequences, longest first when matched).
PRE_CUES = tuple(sorted((tuple(cue.split()) for cue in (
    "not", "no", "never", "without", "isnt", "arent", "dont", "doesnt", "wont", "nothing", "none", "neither", "nor",
    "anything but", "everything but", "all but", "anything except", "other than", "rather than", "except",
    "excluding", "exclude", "instead of", "no more", "avoid", "avoiding", "hate", "hates", "dislike", "minus",
    "stay away from", "sick of", "tired of", "not into", "cant stand", "but not", "less", "non", "skip", "nix",
    "anything apart from", "apart from")), key=len, reverse=True))
# Cues that rule out the mentions before them in their clause ("red is not for me", "stripes are out").
POST_CUES = tuple(sorted((tuple(cue.split()) for cue in (
    "not for me", "isnt for me", "arent for me", "is not for me", "are not for me", "not my thing",
    "isnt my thing", "not my style", "isnt my style", "arent my style", "not my colour", "not my color",
    "is out", "are out", "no thanks", "no thank you", "is a no", "are a no", "please no", "not please",
    "is too much", "not a fan")), key=len, reverse=True))
CLAUSE_BREAKERS = frozenset({".", ";", "!", "?", "but", "though", "however", "yet", "although", "whereas"})
# Words that turn to what is wanted once a ruled-out value was named ("not red, rather pink"); before it they are
# part of the cue ("I don't want red").
INTENT_WORDS = frozenset({"instead", "rather", "prefer", "preferably", "want", "need", "like", "love", "only",
                          "just", "so", "while", "then", "ideally", "maybe", "perhaps", "in"})
LIST_JOINERS = frozenset({"or", "nor", "either"})
SCOPE_WINDOW = 6  # tokens a pre-cue reaches across before its first mention


def _cue_at(tokens: Sequence[str], start: int, cues: tuple[tuple[str, ...], ...]) -> int:
    """Length of the cue starting at `start` (0 when none)."""
    for cue in cues:
        if tuple(tokens[start:start + len(cue)]) == cue:
            return len(cue)
    return 0


def negated_mentions(tokens: Sequence[str], spans: Sequence[tuple[int, int]]) -> set[int]:
    """Indices of the mention spans (start, end) a cue rules out.

    A pre-cue ("not", "anything but", "instead of", "avoid", ...) reaches its first mention within SCOPE_WINDOW
    tokens, then every mention joined to it by "or"/"nor", commas of a list, or "and" before a mention of the
    same clause; a clause breaker (".", "but", "prefer", "want", ...) ends it. A post-cue ("is not for me",
    "are out") rules out the mentions of its clause before it.
    """
    start_of = {start: index for index, (start, _) in enumerate(spans)}
    covered = {position for start, end in spans for position in range(start, end)}
    negated: set[int] = set()
    clause: list[int] = []  # mentions since the clause began
    scope = False
    budget = 0
    after_mention = False
    i = 0
    while i < len(tokens):
        if i in start_of:
            index = start_of[i]
            if scope:
                negated.add(index)
                after_mention = True
            clause.append(index)
            i = spans[index][1]
            continue
        if i in covered:
            i += 1
            continue
        post = _cue_at(tokens, i, POST_CUES)
        if post and clause and not scope:
            negated.update(clause)
            clause = []
            i += post
            continue
        pre = _cue_at(tokens, i, PRE_CUES)
        if pre:
            scope, budget, after_mention = True, SCOPE_WINDOW, False
            i += pre
            continue
        token = tokens[i]
        if token in CLAUSE_BREAKERS or (token in INTENT_WORDS and (after_mention or not scope)):
            scope = after_mention = False
            clause = []
        elif token == ",":
            if scope and not (after_mention and _list_continues(tokens, i + 1, start_of, covered)):
                scope = after_mention = False
            clause = [] if not scope else clause
        elif scope:
            if after_mention and token not in LIST_JOINERS and token != "and":
                scope = after_mention = False
            elif not after_mention:
                budget -= 1
                scope = budget > 0
        i += 1
    return negated


def _list_continues(tokens: Sequence[str], start: int, start_of: dict[int, int], covered: set[int]) -> bool:
    """After a comma: does a list of values go on ("not red, pink or orange")? A mention comes next and the
    list ends in "or"/"nor" or another comma before any other word."""
    if start not in start_of:
        return start < len(tokens) and tokens[start] in LIST_JOINERS
    i = start
    while i < len(tokens):
        if i in covered:
            i += 1
        elif tokens[i] in LIST_JOINERS or tokens[i] == ",":
            return True
        else:
            return False
    return False
