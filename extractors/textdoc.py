"""An image's text document (tags, caption, OCR text): its type, fields and checks, its
encoding as a feature, and its searchable words. Light (json, re, numpy): the extractors, the
text index, the ingress and the scripts all use it."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

Doc = dict[str, Any]
#: The keys of an image's text document whose words are searchable: OCR text, a caption,
#: tags (a string, or a list of labels / ``{"label", "score"}``).
FIELDS = ("text", "caption", "tags")
#: Keys stored but not searched: OCR's words with confidence and box.
EXTRA_FIELDS = ("words",)
_WORD = re.compile(r"\w+")
#: Words of a query at most: a search by a stored image's text (a page of OCR) uses its
#: first ones; each word costs a pass over the vocabulary.
MAX_QUERY_WORDS = 64

#: The broader words of ImageNet's and Places365's labels (WordNet hypernyms: "daisy" ->
#: "flower", "angiosperm", ..., "plant"), built by scripts/build_hypernyms.py.
HYPERNYMS = Path(__file__).with_name("hypernyms.json")

#: Longer "words" are OCR noise or pasted data, not words (and PostgreSQL's levenshtein
#: takes at most 255 characters).
MAX_WORD_LEN = 64


def encode_doc(doc: dict[str, Any]) -> np.ndarray:
    """A text feature (tags, caption, OCR text: a JSON document) as the uint8 array every
    feature travels as, through deployments, Ray Data columns and into LMDB."""
    raw = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return np.frombuffer(raw.encode(), dtype=np.uint8).copy()


def decode_doc(feature: np.ndarray) -> dict[str, Any]:
    """The JSON document of a text feature (trailing zero padding ignored)."""
    doc = json.loads(np.ascontiguousarray(feature, dtype=np.uint8).tobytes().rstrip(b"\0"))
    if not isinstance(doc, dict):
        raise ValueError("a text feature must be a JSON object")
    return doc


def words(text: str) -> list[str]:
    """Distinct lower-case words of ``text`` (letters and digits of any script), in order;
    lone digits and words over ``MAX_WORD_LEN`` characters left out."""
    return list(
        dict.fromkeys(
            w
            for w in _WORD.findall(text.lower())
            if (not w.isdigit() or len(w) > 1) and len(w) <= MAX_WORD_LEN
        )
    )


def query_words(query: str) -> list[str]:
    """The words of a query; ``ValueError`` when there are none (punctuation only)."""
    found = words(query)
    if not found:
        raise ValueError("the query has no words to search for")
    return found


def checked_doc(doc: Any) -> dict[str, Any]:
    """``doc`` (an image's text document) with known keys and well-formed values, empty
    values left out; ``ValueError`` otherwise."""
    if not isinstance(doc, dict):
        raise ValueError("a text document must be a JSON object")
    unknown = set(doc) - set(FIELDS) - set(EXTRA_FIELDS)
    if unknown:
        raise ValueError(f"unknown text fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    for key in ("text", "caption"):
        if not isinstance(doc.get(key, ""), str):
            raise ValueError(f"text field {key!r} must be a string")
    tags = doc.get("tags", [])
    if not isinstance(tags, str) and not (
        isinstance(tags, list)
        and all(
            isinstance(t, str) or (isinstance(t, dict) and isinstance(t.get("label"), str))
            for t in tags
        )
    ):
        raise ValueError("tags must be a string or a list of labels or {label, score}")
    if not isinstance(doc.get("words", []), list):
        raise ValueError("words must be a list")
    # NUL characters have no place in text, and PostgreSQL's jsonb refuses them.
    clean = json.loads(json.dumps(doc).replace("\\u0000", ""))
    return {k: v for k, v in clean.items() if v}


def labels(doc: dict[str, Any]) -> list[str]:
    """The tag labels of a text document."""
    tags = doc.get("tags", [])
    if isinstance(tags, str):
        return [t.strip() for t in tags.split(",") if t.strip()]
    return [t if isinstance(t, str) else t["label"] for t in tags]


def merge_docs(docs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One document from several features' (ImageNet and Places365 tags, OCR, a caption):
    tag lists are joined in order, other keys taken from the last that has them."""
    out: dict[str, Any] = {}
    tags: list[Any] = []
    for doc in docs:
        tags += labels(doc) if isinstance(doc.get("tags"), str) else doc.get("tags", [])
        out.update({k: v for k, v in doc.items() if k != "tags"})
    return {**out, "tags": tags} if tags else out


def doc_text(doc: dict[str, Any]) -> str:
    """The searchable text of a document: OCR text, caption and tag labels."""
    return " ".join([doc.get("text", ""), doc.get("caption", ""), *labels(doc)]).strip()


@functools.cache
def hypernyms() -> dict[str, list[str]]:
    """The shipped table, read once: a label (lower case) -> its broader words, nearest
    first; a label that is both an ImageNet class and a Places365 category gets both lists."""
    table: dict[str, list[str]] = {}
    for section in json.loads(HYPERNYMS.read_text()).values():
        for label, broader in section.items():
            table[label] = table.get(label, []) + broader
    return table


def broader_words(doc: dict[str, Any], own: Iterable[str] = ()) -> list[str]:
    """The words of a document's tag labels' broader terms (``hypernyms``), less ``own``
    (the document's own words, which match as they are) and less the words of one or two
    letters, which join a term's words ("body of water", "child's room") and name nothing."""
    table = hypernyms()
    found = words(" ".join(w for label in labels(doc) for w in table.get(label.lower(), ())))
    mine = set(own)
    return [w for w in found if len(w) > 2 and w not in mine]
