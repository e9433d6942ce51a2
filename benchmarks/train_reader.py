"""Tune and measure the semantic reader's reading by meaning on the paraphrase shopper's train bank only.

Protocol (keep it): the reader is tuned only on the phrase bank's `train` part. The train part's value phrases are
split by a stable hash of the phrase itself into a fit part (80%) and a validation part (20%), so generalisation to
words the reader was never fitted on is measured without the held-aside bank. The held-aside bank (`heldout`) is
read only with `--heldout`, once per kept candidate, at the end; its words never enter the lexicon (a test checks).

    python benchmarks/train_reader.py [--fit] [--heldout] [--out benchmarks/results/reader_meaning.json]

`--fit` trains the learned matcher (assistant/core/meaning.py) on the fit part and writes its weights into the
package; every run measures, per candidate reader, precision and recall of the facets read back from the fit and
validation phrases (bare, and in the shopper's frames), from neutral sentences, from 300 demo reply pairs of the
template and paraphrase-train shoppers, and the reader's time per message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from assistant.core.dialog import DialogState, Turn
from assistant.core.feedback import attribute_kind, tokenize
from assistant.core.loaders import load_catalog
from assistant.core.meaning import Matcher, cosine_matcher, fit_matcher, shipped_matcher
from assistant.core.reader import PhraseEncoder, SemanticReader, residual_grams
from simulator.pairs import PairSampler
from simulator.paraphrase_user import ParaphraseUser, phrase_bank, value_key
from simulator.template_user import TemplateUser

ROOT = Path(__file__).resolve().parents[1]
FPI = json.loads((ROOT / "tests" / "data" / "fpi_vocabulary.json").read_text())["vocabulary"]
VALIDATION_SHARE = 0.2
PAIRS = 300
FLOOR = 0.8  # precision a calibrated matcher keeps on the fit part (lexicon-unknown phrases and frame words)
NEUTRAL = ("hello there", "thanks, that's all", "hi", "ok", "hmm, let me think", "show me more", "that's lovely",
           "not sure yet", "what else do you have?", "nice, thank you", "good morning", "can you help me?",
           "i don't know", "maybe", "something else please", "perfect", "another one", "keep going")


def part_of(phrase: str) -> str:
    """fit | val, by a stable hash of the phrase alone (salted: the bank's held-aside split hashes phrases unsalted)."""
    digest = int.from_bytes(hashlib.blake2b(b"reader-validation " + phrase.encode(), digest_size=8).digest(), "big")
    return "val" if digest < VALIDATION_SHARE * 2 ** 64 else "fit"


def bank_phrases(vocabulary: dict[str, list[str]], bank: str = "train") -> list[dict]:
    """Every value phrase of a bank part that stands for a value of `vocabulary`: text, expected {attribute: values},
    fit/val part. Colours are left out (the colour library reads them, not MiniLM)."""
    out = []
    for kind, table in phrase_bank(bank).words.items():
        names = [n for n in vocabulary if attribute_kind(n) == kind]
        for key, phrases in table.items():
            expected = {n: [v for v in vocabulary[n] if value_key(v) == key] for n in names}
            expected = {n: vs for n, vs in expected.items() if vs}
            if not expected:
                continue
            # a finer category attribute only (articleType, not masterCategory)
            out.extend({"text": p, "kind": kind, "expected": expected, "part": part_of(p)} for p in phrases)
    return out


def unknown(examples: list[dict], vocabulary: dict[str, list[str]]) -> list[dict]:
    """The examples the reader without MiniLM (exact words, lexicon, colours) does not read back."""
    lexicon = SemanticReader(vocabulary, semantic=False)
    return [e for e in examples if not any(lexicon.read(e["text"]).wanted.get(n, {}).get(v, 0.0) >= 1.0
                                           for n, vs in e["expected"].items() for v in vs)]


def frame_texts(bank: str = "train") -> list[str]:
    """The bank part's sentence frames with their fields left out: words that name no value (negatives)."""
    frames = phrase_bank(bank).frames
    return [" ".join(part for part in re.split(r"\{[a-z_]+\}", frame)) for family, fs in frames.items()
            for frame in fs if family not in ("title", "title_brand")]


def pair_data(reader: SemanticReader, examples: list[dict], negatives: list[str], hard: int = 40
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gram vectors, meaning vectors, labels) for the matcher: per example its gram nearest (by cosine) to a
    meaning of its value, against that value's meanings (1) and the `hard` nearest other meanings (0); per negative
    text every gram against its `hard` nearest meanings (0). A meaning whose text is the gram itself is left out."""
    meanings, bank = reader.meaning_bank()
    grams_out, meanings_out, labels = [], [], []
    for example in examples + [{"text": t, "expected": {}} for t in negatives]:
        tokens = tokenize(example["text"])
        grams = [" ".join(tokens[a:b]) for a, b in residual_grams(tokens, set())]
        if not grams:
            continue
        vectors = reader.encoder.encode(grams)
        similarity = vectors @ bank.T
        good = np.array([any(v in example["expected"].get(n, ()) for n, v in m.signature) for m in meanings])
        for g, gram in enumerate(grams):
            similarity[g, [j for j, m in enumerate(meanings) if m.text == gram]] = -2.0
        if good.any():
            rows = [int(np.argmax(np.where(good, similarity, -3.0).max(axis=1)))]
        elif example["expected"]:
            continue
        else:
            rows = list(range(len(grams)))
        for g in rows:
            chosen = [j for j in np.argsort(-similarity[g])[:hard] if similarity[g, j] > -2.0]
            chosen += [j for j in np.nonzero(good)[0] if j not in chosen and similarity[g, j] > -2.0]
            grams_out.extend([vectors[g]] * len(chosen))
            meanings_out.extend(bank[chosen])
            labels.extend(good[chosen].astype(np.float32))
    return np.stack(grams_out), np.stack(meanings_out), np.array(labels, np.float32)


def reading_scores(make_reader, vocabularies, examples, negatives) -> dict[str, float]:
    """Phrase recall/precision over the examples with the negatives' claims counted against precision."""
    recall, claimed, right = [], 0, 0
    for vocabulary in vocabularies:
        reader = make_reader(vocabulary)
        scores = phrase_scores(reader, examples[id(vocabulary)])
        recall.append((scores["recall"], scores["phrases"]))
        claimed += round(scores["phrases"] * scores["recall"] / max(scores["precision"], 1e-9))
        right += round(scores["phrases"] * scores["recall"])
        claimed += sum(bool(reader.read(t).wanted) for t in negatives)
    phrases = sum(n for _, n in recall)
    return {"recall": round(sum(r * n for r, n in recall) / phrases, 3), "precision": round(right / max(claimed, 1), 3)}


def calibrate(matcher_for, thresholds, margins, vocabularies, examples, negatives, floor: float = FLOOR
              ) -> tuple[Matcher, list]:
    """The (threshold, margin) with the highest fit recall whose precision (negatives' claims counted) is >= floor
    (else the most precise)."""
    sweep = []
    for threshold in thresholds:
        for margin in margins:
            matcher = matcher_for(float(threshold), float(margin))
            scores = reading_scores(lambda v, m=matcher: SemanticReader(v, matcher=m), vocabularies, examples,
                                    negatives)
            sweep.append({"threshold": round(float(threshold), 3), "margin": round(float(margin), 3), **scores,
                          "matcher": matcher})
            print("  sweep", {k: v for k, v in sweep[-1].items() if k != "matcher"}, flush=True)
    good = [s for s in sweep if s["precision"] >= floor]
    best = max(good, key=lambda s: (s["recall"], s["precision"])) if good else \
        max(sweep, key=lambda s: (s["precision"], s["recall"]))
    return best["matcher"], [{k: v for k, v in s.items() if k != "matcher"} for s in sweep]


def fit_learned(vocabularies, examples, negatives) -> tuple[Matcher, dict]:
    """Train the matcher on the fit part, calibrate its threshold there, save it into the package."""
    parts = [pair_data(SemanticReader(v, matcher=cosine_matcher(0.6)), examples[id(v)], negatives)
             for v in vocabularies]
    grams, meanings, labels = (np.concatenate(x) for x in zip(*parts, strict=True))
    start = time.perf_counter()
    weights, bias = fit_matcher(grams, meanings, labels)
    seconds = time.perf_counter() - start
    matcher, sweep = calibrate(lambda t, m: Matcher(weights, bias, t, m), (0.5, 0.7, 0.9), (0.5, 2.0, 3.5),
                               vocabularies, examples, negatives)
    matcher.save()
    shipped_matcher.cache_clear()
    return matcher, {"pairs": int(len(labels)), "positives": int(labels.sum()), "train_seconds": round(seconds, 2),
                     "threshold": matcher.threshold, "margin": matcher.margin, "sweep": sweep}


def phrase_scores(reader: SemanticReader, examples: list[dict]) -> dict[str, float]:
    """Recall: the phrase read as (one of) its expected values with full credit; precision over every attribute
    the reader claims (coarser category attributes of a found kind aside)."""
    found = claimed = right = 0
    for example in examples:
        reading = reader.read(example["text"])
        expected = example["expected"]
        hit = any(reading.wanted.get(n, {}).get(v, 0.0) >= 1.0 for n, vs in expected.items() for v in vs)
        found += hit
        for name, credits in reading.wanted.items():
            if name not in expected and attribute_kind(name) == example["kind"] and hit:
                continue  # subCategory beside articleType
            claimed += 1
            right += any(credits.get(v, 0.0) >= 1.0 for v in expected.get(name, []))
    return {"recall": round(found / max(len(examples), 1), 3), "precision": round(right / max(claimed, 1), 3),
            "phrases": len(examples)}


def neutral_claims(reader: SemanticReader) -> list[str]:
    """Neutral sentences the reader reads any facet from (should be none)."""
    return [t for t in NEUTRAL if reader.read(t).wanted or reader.read(t).ruled_out]


def demo_pairs(demo, count: int = PAIRS, seed: int = 11):
    """Seeded (shown, target, turn) triples as tests/test_paraphrase_user.py draws them."""
    sampler, rng = PairSampler(demo), random.Random(seed)
    return [(*(sampler.similar_pair(rng) if n % 2 else sampler.random_pair(rng)), n % 5 + 1) for n in range(count)]


def reply_scores(reader: SemanticReader, demo, pairs, user, facets) -> dict[str, float]:
    """Share of `facets` (the paraphrase shopper's, which are the template shopper's) that the reader reads back
    from `user`'s replies, as tests/test_paraphrase_user.py reads them; precision: the attributes it wants with full
    credit whose value the target has."""
    hits = total = claimed = right = 0
    by_kind: dict[str, list[int]] = {}
    for (shown, target, turn), chosen in zip(pairs, facets, strict=True):
        reply = user.respond(shown, target, turn)
        understood = reader.understand(DialogState([Turn(demo.index_of(shown.id), reply)]))
        for d in chosen:
            ruled = understood.ruled_out.get(d.name, set())
            hit = understood.wanted.get(d.name, {}).get(d.target, 0.0) >= 0.7 or (
                d.shown in ruled and d.target not in ruled)
            hits += hit
            total += 1
            by_kind.setdefault(d.kind, [0, 0])
            by_kind[d.kind][0] += hit
            by_kind[d.kind][1] += 1
        for name, credits in understood.wanted.items():
            best = [v for v, c in credits.items() if c >= 1.0]
            if best:
                claimed += 1
                right += target.attributes.get(name) in best
    return {"recall": round(hits / max(total, 1), 3), "precision": round(right / max(claimed, 1), 3),
            "facets": total, "by_kind": {k: round(h / n, 3) for k, (h, n) in sorted(by_kind.items())}}


def timing(make_reader, texts: list[str]) -> dict[str, float]:
    """Milliseconds per message for a fresh reader with a fresh MiniLM phrase cache (each message read once)."""
    reader = make_reader()
    reader.read("warm up the encoder")
    times = []
    for text in texts:
        start = time.perf_counter()
        reader.read(text)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * len(times))], 3),
            "messages": len(texts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="train the learned matcher and ship it in the package")
    parser.add_argument("--heldout", action="store_true", help="also measure the held-aside bank (final looks only)")
    parser.add_argument("--candidates", default="lexicon,cosine,learned", help="comma-separated candidates")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reader_meaning.json")
    args = parser.parse_args(argv)
    demo = load_catalog("demo:300")
    demo_vocabulary = {n: list(v) for n, v in demo.vocabulary().items()}
    vocabularies = [demo_vocabulary, FPI]
    fit = {id(v): unknown([e for e in bank_phrases(v) if e["part"] == "fit"], v) for v in vocabularies}
    negatives = frame_texts()
    results: dict = {"machine": "2 shared CPU cores, loaded by other engineers' runs (timings are noisy)",
                     "protocol": __doc__.split("\n\n")[1].replace("\n", " "), "candidates": {}}
    names = args.candidates.split(",")
    matchers: dict[str, Matcher | None] = {"lexicon": None}
    if "cosine" in names:
        matchers["cosine"], sweep = calibrate(cosine_matcher, (0.6, 0.7, 0.8), (0.025, 0.1, 0.175), vocabularies,
                                              fit, negatives)
        results["cosine calibration"] = {"threshold": matchers["cosine"].threshold, "sweep": sweep}
    if "learned" in names:
        if args.fit:
            matchers["learned"], results["learned training"] = fit_learned(vocabularies, fit, negatives)
        else:
            matchers["learned"] = shipped_matcher()
    demo_rows = [item.attributes for item in demo.items]
    pairs = demo_pairs(demo)
    users = {"template": TemplateUser(demo), "paraphrase-train": ParaphraseUser(demo, bank="train")}
    if args.heldout:
        users["paraphrase-heldout"] = ParaphraseUser(demo, bank="heldout")
    facets = [users["paraphrase-train"].facets(*p) for p in pairs]
    speakers = list(users.values())[:2]
    texts = [speakers[n % 2].respond(*p) for n, p in enumerate(demo_pairs(demo, 1000, seed=5))]
    for name in names:
        options = {"semantic": False} if name == "lexicon" else \
            {"matcher": matchers[name]} if matchers.get(name) else {}
        out: dict = {}
        for catalog, vocabulary in (("demo", demo_vocabulary), ("fpi", FPI)):
            reader = SemanticReader(vocabulary, **options)
            examples = bank_phrases(vocabulary)
            for part in ("fit", "val"):
                mine = [e for e in examples if e["part"] == part]
                out[f"{catalog} train-bank {part}"] = phrase_scores(reader, mine)
                out[f"{catalog} train-bank {part}, unknown to the lexicon"] = phrase_scores(
                    reader, unknown(mine, vocabulary))
            if args.heldout:
                out[f"{catalog} heldout-bank"] = phrase_scores(reader, bank_phrases(vocabulary, "heldout"))
            out[f"{catalog} neutral claims"] = neutral_claims(reader)
        reader = SemanticReader(demo_vocabulary, rows=demo_rows, **options)
        for user_name, user in users.items():
            out[f"demo replies {user_name}"] = reply_scores(reader, demo, pairs, user, facets)
        out["time per message (1000 replies, fresh reader)"] = timing(
            lambda options=options: SemanticReader(demo_vocabulary, rows=demo_rows, encoder=PhraseEncoder(),
                                                   **options), texts)
        results["candidates"][name] = out
        print(name, json.dumps(out), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
