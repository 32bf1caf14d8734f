"""Real-photo queries for the text bench: the broader words of the photos' tags, and the
words in photos that OCR reads. Each gives stored documents and queries with the documents
each should find; ``bench.text`` stores them among its pseudo-word texts and reports
recall@5 for both backends."""

from __future__ import annotations

import numpy as np

from extractors.textdoc import Doc, decode_doc, hypernyms, labels

#: A query and the ids of the stored documents it should find.
Query = tuple[str, set[int]]


def broader_term(label: str) -> str | None:
    """What a person would type for a tag's broader class: its nearest one-word broader
    term ("flower" for a daisy, "insect" for a bee), None when it has none."""
    return next((t for t in hypernyms().get(label.lower(), ()) if " " not in t), None)


def tag_docs(
    photos: dict[str, bytes], n_random: int, start: int, rng: np.random.Generator
) -> tuple[list[tuple[int, Doc]], list[Query]]:
    """Tag documents with ids from ``start``: the photos' ImageNet tags as the default app
    computes them (global's pass: the whole short side), then ``n_random`` of three random
    ImageNet classes; and per photo, and per one random document in ten, a query of its top
    tag's broader term, which should find every document with a tag under it (recall@5 is
    over the first five of those, or all when fewer)."""
    from extractors.tags import ImageNetTagger

    tagger = ImageNetTagger(threads=2, crop_pct=1.0)
    tagger.load()
    table = hypernyms()
    classes = sorted(label for label in table if broader_term(label))
    docs: list[Doc] = []
    for result in tagger.extract_bytes(list(photos.values())):
        assert isinstance(result, np.ndarray), result
        docs.append(decode_doc(result))
    for _ in range(n_random):
        picked = rng.choice(classes, 3, replace=False)
        tags = [{"label": str(c), "p": round(0.6 / (j + 1), 2)} for j, c in enumerate(picked)]
        docs.append({"tags": tags})
    items = [(start + j, doc) for j, doc in enumerate(docs)]

    def under(term: str, doc: Doc) -> bool:
        return any(term == lab.lower() or term in table.get(lab.lower(), ()) for lab in labels(doc))

    queries: list[Query] = []
    asked = list(range(len(photos))) + list(range(len(photos), len(docs), 10))
    for j in asked:
        own = labels(docs[j])
        term = broader_term(own[0]) if own else None
        if term:
            queries.append((term, {i for i, doc in items if under(term, doc)}))
    return items, queries


def recall_at(hits: list[int], relevant: set[int], k: int = 5) -> float:
    """The share of the first ``k`` relevant documents (all, when fewer) among ``hits``."""
    return len(set(hits[:k]) & relevant) / min(k, len(relevant))


def describe(queries: list[Query]) -> str:
    """A line on the queries: how many, and a few with their counts of relevant documents."""
    shown = ", ".join(f"{q!r} ({len(r)})" for q, r in queries[:6])
    return f"{len(queries)} queries, e.g. {shown}"


def photo_text_docs(
    photos: dict[str, bytes], start: int
) -> tuple[list[tuple[int, Doc]], list[Query]]:
    """The OCR documents of words rendered onto the photos (``bench.ocr.photo_cases``: tilted,
    warped, on and off a band, half at JPEG 40), read by the default config's OCR, with ids
    from ``start``; and a query per rendered word, which should find every photo it is on."""
    from bench.common import ROOT
    from bench.ocr import photo_cases
    from deployments.config import load_app_args
    from extractors.ocr import Ocr

    args = load_app_args(ROOT / "configs" / "serve.yaml", "imgsearch")
    ocr = Ocr(**args.extractor_options("ocr"))
    ocr.load()
    cases = photo_cases(photos)
    items = [
        (start + j, doc)
        for j, doc in enumerate(ocr.analyze([ocr.decode(case.data)])[0] for case in cases)
    ]
    on: dict[str, set[int]] = {}
    for j, case in enumerate(cases):
        for word in case.words:
            on.setdefault(word, set()).add(start + j)
    return items, sorted(on.items())
