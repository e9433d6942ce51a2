"""Caption metrics for the simulator: attribute faithfulness (the one that matters), BLEU, ROUGE-L, CIDEr-D, distinct-n.

Attribute faithfulness reads each caption with `AttributeParser` (built from the catalog's vocabulary):
- precision: asserted values that are true of the target / all asserted values;
- recall (raw): changed attributes (reference and target differ) whose target value the caption states /
  all changed attributes. A person, like the template shopper, names only a few facets a turn, so a pair
  of unlike items (five of seven attributes changed) caps raw recall near max_facets / changed;
- recall against the facet budget: stated changed attributes (at most the budget) / min(changed, max_facets),
  summed over pairs. It is 1 when every turn names as many correct changes as a shopper would.
Diversity: distinct-n over all captions, and within segments of 100 captions (comparable across set sizes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from pycocoevalcap.cider.cider import Cider
from rouge_score.rouge_scorer import RougeScorer

from assistant.core.catalog import Catalog, Item
from assistant.core.feedback import AttributeParser
from simulator.captioner import SimulatorModel
from simulator.pairs import training_triplets
from simulator.template_user import TemplateUser

WORD_PATTERN = re.compile(r"[a-z0-9]+")
BLEU_WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
DEFAULT_MAX_FACETS = 2  # the template shopper's default facet budget (TemplateUser.max_facets)
SEGMENT = 100  # captions per segment for the size-independent distinct-n
ROUGE = RougeScorer(["rougeL"])  # lower-case [a-z0-9] words, as `words` reads them; no stemming
ROUGE_BETA = 1.2  # coco-caption's weight of recall over precision in ROUGE-L


def words(text: str) -> list[str]:
    """Lower-case word tokens, punctuation dropped."""
    return WORD_PATTERN.findall(text.lower())


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4 (nltk, smoothing method 1 so short corpora with no 4-gram match are not all zero)."""
    scores = corpus_bleu([[words(r) for r in refs] for refs in references], [words(c) for c in candidates],
                         weights=BLEU_WEIGHTS, smoothing_function=SmoothingFunction().method1)
    return {f"bleu_{n}": float(score) for n, score in enumerate(scores, start=1)}


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = ROUGE_BETA) -> float:
    """ROUGE-L F-measure averaged over captions, as coco-caption defines it: rouge-score's LCS precision and recall,
    each the best over the references, weighted by beta 1.2 (rouge-score's own fmeasure is F1, beta 1)."""
    scores = []
    for candidate, refs in zip(candidates, references, strict=True):
        lcs = [ROUGE.score(reference, candidate)["rougeL"] for reference in refs]
        p, r = max(score.precision for score in lcs), max(score.recall for score in lcs)
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p and r else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015) by coco-caption's CiderScorer (pycocoevalcap): tf-idf n-gram vectors
    (n = 1..4) with document frequencies over the reference sets, candidate counts clipped by the reference's,
    a Gaussian length penalty (sigma 6), averaged over references and n, times 10.

    The text goes in as `words` joined by spaces, so coco-caption's Java tokenizer is not needed.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} captions but {len(references)} reference sets")
    tokenised = {n: [" ".join(words(reference)) for reference in refs] for n, refs in enumerate(references)}
    if not any(any(refs) for refs in tokenised.values()):  # no reference n-grams: nothing to match (the scorer fails)
        return 0.0
    hypotheses = {n: [" ".join(words(candidate))] for n, candidate in enumerate(candidates)}
    score, _ = Cider(sigma=sigma).compute_score(tokenised, hypotheses)
    return float(score)


def distinct_n(captions: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the captions (diversity of the wording)."""
    grams = [tuple(tokens[i:i + n]) for tokens in map(words, captions) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def segment_distinct_n(captions: Sequence[str], n: int, segment: int = SEGMENT) -> float:
    """Distinct-n within consecutive segments of `segment` captions, averaged over the whole segments.

    Plain distinct-n falls as more captions are pooled (the template shopper's own distinct-2 is 0.28 over
    500 real-catalog pairs and 0.16 over 2,000), so it only compares sets of one size; this variant does not
    depend on the set's size (the idea of the mean segmental type-token ratio). Fewer captions than one
    segment: plain distinct-n.
    """
    if len(captions) < segment:
        return distinct_n(captions, n)
    whole = len(captions) // segment
    return sum(distinct_n(captions[i * segment:(i + 1) * segment], n) for i in range(whole)) / whole


def attribute_faithfulness(captions: Sequence[str], references: Sequence[Item], targets: Sequence[Item],
                           parser: AttributeParser, max_facets: int = DEFAULT_MAX_FACETS) -> dict[str, float]:
    """Precision, raw recall and recall against the facet budget of the values the captions state (see module doc)."""
    asserted = correct = changed = mentioned = budget = budget_mentioned = 0
    for caption, reference, target in zip(captions, references, targets, strict=True):
        parsed = parser.parse(caption)
        asserted += len(parsed.asserted)
        correct += sum(target.attributes.get(name) == value for name, value in parsed.asserted.items())
        differing = [name for name, value in target.attributes.items() if reference.attributes.get(name) != value]
        stated = sum(parsed.asserted.get(name) == target.attributes[name] for name in differing)
        changed, mentioned = changed + len(differing), mentioned + stated
        pair_budget = min(len(differing), max_facets)
        budget, budget_mentioned = budget + pair_budget, budget_mentioned + min(stated, pair_budget)
    return {"attribute_precision": correct / asserted if asserted else 0.0,
            "attribute_recall": mentioned / changed if changed else 0.0,
            "attribute_recall_budget": budget_mentioned / budget if budget else 0.0,
            "asserted_per_caption": asserted / len(captions) if captions else 0.0}


def caption_scores(captions: Sequence[str], template_captions: Sequence[str]) -> dict[str, float]:
    """Overlap with the template captions (BLEU-1..4, ROUGE-L, CIDEr-D) and diversity (distinct-1/2)."""
    references = [[t] for t in template_captions]
    return {**bleu(captions, references), "rouge_l": rouge_l(captions, references),
            "cider_d": cider_d(captions, references),
            "distinct_1": distinct_n(captions, 1), "distinct_2": distinct_n(captions, 2),
            f"distinct_2_per_{SEGMENT}": segment_distinct_n(captions, 2)}


def evaluate_simulator(model: SimulatorModel, catalog: Catalog, features, pairs: int = 1000, seed: int = 0,
                       decoding: str = "greedy") -> dict:
    """Caption `pairs` pairs of `catalog` (sampled as in training) and measure them.

    Works on any catalog with features, also one the model never saw. The template shopper it was trained
    on (same facet budget and title words) captions the same pairs: its captions are the BLEU/ROUGE/CIDEr
    references, and its faithfulness is reported beside the model's as a yardstick.
    """
    trained_on = model.config
    max_facets = trained_on.max_facets
    shopper = TemplateUser(catalog, seed=seed, max_facets=max_facets, title_words=trained_on.title_words)
    triplets = training_triplets(catalog, pairs, seed=seed, similar_fraction=trained_on.similar_fraction,
                                 user=shopper)
    if not triplets:
        raise ValueError(f"{catalog.name}: no pairs to evaluate on")
    references = [catalog[r] for r, _, _ in triplets]
    targets = [catalog[t] for _, t, _ in triplets]
    templates = [caption for _, _, caption in triplets]
    lookup = model.lookup(features)
    model.caption(references[:8], targets[:8], features, decoding, seed=seed, lookup=lookup)  # warm-up
    start = time.perf_counter()
    captions = model.caption(references, targets, features, decoding, seed=seed, lookup=lookup)
    seconds = time.perf_counter() - start
    parser = AttributeParser(catalog.vocabulary())
    faithfulness = attribute_faithfulness(captions, references, targets, parser, max_facets)
    template = attribute_faithfulness(templates, references, targets, parser, max_facets)
    return {"pairs": len(triplets), "decoding": decoding, "max_facets": max_facets, **faithfulness,
            **caption_scores(captions, templates), "captions_per_s": len(captions) / seconds,
            "template_shopper": {**template, "distinct_1": distinct_n(templates, 1),
                                 "distinct_2": distinct_n(templates, 2),
                                 f"distinct_2_per_{SEGMENT}": segment_distinct_n(templates, 2)},
            "examples": [{"reference": r.id, "target": t.id, "caption": c, "template": s}
                         for r, t, c, s in zip(references, targets, captions, templates, strict=True)]}
