"""text: recall@5 and search latency p50 of exact, misspelt and sound-alike text queries over
``--n-texts`` stored texts, the embedded backend (``EmbeddedTextIndex``) beside PostgreSQL
(``PostgresTextIndex`` on a throwaway server, the peer, when PostgreSQL is installed).

The texts are 8 words each from a vocabulary of pronounceable pseudo-words (no dictionary on
this machine); queries are two words of one stored text, exact, misspelt (each word 1 edit,
2 from 6 letters on: substitutions, transpositions, deletions) and sound-alike (each word's
inner vowels changed and a consonant doubled: 3 or more edits, the same metaphone key).
With the shared photos, also queries of real words (``bench.text_real``): the broader words
of the photos' tags among random ImageNet tags, and words rendered onto the photos as the
default OCR reads them.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Row, ms, row
from bench.text_real import Query as RealQuery
from bench.text_real import describe, photo_text_docs, recall_at, tag_docs
from extractors.textdoc import Doc, words
from index_actors.text import EmbeddedTextIndex
from index_actors.text_match import TextIndex, indexed_words, max_edits, sound
from index_actors.text_pg import PostgresTextIndex

CONSONANTS = "bdfgklmnprstv"
VOWELS = "aeiou"
KINDS = ("exact", "misspelt", "sound-alike")


def vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pseudo-words of 2-4 consonant-vowel syllables."""
    out: set[str] = set()
    while len(out) < n:
        syllables = int(rng.integers(2, 5))
        out.add(
            "".join(
                str(rng.choice(list(CONSONANTS))) + str(rng.choice(list(VOWELS)))
                for _ in range(syllables)
            )
        )
    return sorted(out)


def misspelt(word: str, rng: np.random.Generator) -> str:
    """``word`` with as many random edits as a query may have (1, or 2 from 6 letters)."""
    out = word
    for _ in range(max_edits(word)):
        i = int(rng.integers(0, len(out) - 1))
        pick = rng.random()
        if pick < 0.4:
            out = (
                out[:i]
                + str(rng.choice([c for c in CONSONANTS + VOWELS if c != out[i]]))
                + out[i + 1 :]
            )
        elif pick < 0.7:
            out = out[:i] + out[i + 1] + out[i] + out[i + 2 :]
        else:
            out = out[:i] + out[i + 1 :]
    return out


def sound_alike(word: str, rng: np.random.Generator) -> str | None:
    """``word`` spelt otherwise, sounding the same to metaphone (inner vowels changed, a
    consonant doubled: more edits than a misspelling may have); None if no try kept the
    key (metaphone reads some vowels: "gi" is J)."""
    for _ in range(20):
        chars = [
            str(rng.choice([v for v in VOWELS if v != c])) if i > 0 and c in VOWELS else c
            for i, c in enumerate(word)
        ]
        j = int(rng.choice([i for i in range(1, len(chars)) if chars[i] in CONSONANTS]))
        chars.insert(j, chars[j])
        out = "".join(chars)
        if sound(out) == sound(word):
            return out
    return None


def _fill(index: TextIndex, texts: list[str]) -> float:
    start = time.perf_counter()
    for i, text in enumerate(texts):
        index.add(i, {"text": text})
    return time.perf_counter() - start


def bench_text(n_texts: int, n_queries: int, photos: dict[str, bytes] | None = None) -> list[Row]:
    """recall@5 and latency of exact, misspelt and sound-alike queries, both backends; with
    ``photos``, also of the broader words of their tags (``bench.text_real``)."""
    from scripts.pgserver import NoPostgres, pg_server

    rng = np.random.default_rng(5)
    vocab = vocabulary(max(3 * n_texts, 1000), rng)
    texts = [" ".join(rng.choice(vocab, 8, replace=False)) for _ in range(n_texts)]
    queries: dict[str, list[tuple[int, str]]] = {kind: [] for kind in KINDS}
    for t in rng.permutation(n_texts).tolist():
        if len(queries["exact"]) == n_queries:
            break
        a, b = texts[t].split()[:2]
        alike = sound_alike(a, rng), sound_alike(b, rng)
        if None in alike:
            continue
        queries["exact"].append((t, f"{a} {b}"))
        queries["misspelt"].append((t, f"{misspelt(a, rng)} {misspelt(b, rng)}"))
        queries["sound-alike"].append((t, " ".join(w for w in alike if w)))
    real: dict[str, list[RealQuery]] = {}
    extra: list[tuple[int, Doc]] = []
    if photos:
        extra, real["broader words of tags"] = tag_docs(photos, n_texts // 10, n_texts, rng)
        texts_in_photos, real["words in photos"] = photo_text_docs(photos, n_texts + len(extra))
        extra += texts_in_photos
        # A document with the query's words as its own (a photo tagged "bakery" for the
        # word "bakery" on a shop sign) is a right answer too.
        own = [(i, set(indexed_words(doc)[0])) for i, doc in extra]
        real = {
            label: [(q, rel | {i for i, mine in own if set(words(q)) <= mine}) for q, rel in rq]
            for label, rq in real.items()
        }
        for label, rq in real.items():
            print(f"text {label}: {describe(rq)}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        os.chmod(folder, 0o755)  # the PostgreSQL server runs as the postgres user
        backends: list[tuple[str, Any]] = [("embedded", lambda: EmbeddedTextIndex(folder / "e"))]
        try:
            dsn = stack.enter_context(pg_server(folder / "pg"))
            backends.append(("PostgreSQL", lambda: PostgresTextIndex(dsn)))
        except NoPostgres as exc:
            print(f"text: no PostgreSQL ({exc})")
        for name, make in backends:
            index = make()
            fill_s = _fill(index, texts)
            index.add_many(extra)
            got: dict[str, Any] = {"fill_s": fill_s}
            for label, rq in real.items():
                got[label] = statistics.fmean(
                    recall_at([i for i, _ in index.search(q, k=5)], relevant) for q, relevant in rq
                )
            for kind, qs in queries.items():
                secs, found = [], []
                for truth, q in qs:
                    start = time.perf_counter()
                    hits = index.search(q, k=5)
                    secs.append(time.perf_counter() - start)
                    found.append(truth in [i for i, _ in hits])
                got[kind] = (statistics.fmean(found), ms(secs, 50))
            index.close()
            results[name] = got
            print(
                f"text {name}: {n_texts} texts stored in {fill_s:.1f} s; "
                + "; ".join(f"{k} recall@5 {got[k][0]:.2f}, p50 {got[k][1]:.2f} ms" for k in KINDS)
                + "".join(f"; {k} recall@5 {got[k]:.2f}" for k in real)
            )
    rows = []
    embedded, pg = results["embedded"], results.get("PostgreSQL")
    for kind in KINDS:
        rows.append(row(f"text recall@5 {kind}, embedded", embedded[kind][0], None, "info", None))
        if pg:
            rows.append(row(f"text recall@5 {kind}, PostgreSQL", pg[kind][0], None, "info", None))
        rows.append(
            row(
                f"text search p50 ms {kind}, embedded (peer PostgreSQL)",
                embedded[kind][1],
                pg[kind][1] if pg else None,
                "info",
                None,
            )
        )
    for kind in real:
        for name, got in results.items():
            rows.append(row(f"text recall@5 {kind}, {name}", got[kind], None, "info", None))
    return rows
