"""Scoring shared by both text index backends (embedded and PostgreSQL): what a misspelt
or sound-alike query word may match, how well, and how matches rank; the backends'
interface and their one error."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import jellyfish

from extractors.textdoc import Doc, broader_words, doc_text, words
from index_actors.interface import BackendDown

Hit = tuple[int, float]
#: metaphone keys are cut to this length (PostgreSQL's metaphone() needs one).
SOUND_LEN = 16
#: What a match of a tag's broader word ("flower" for a daisy) counts, against 1 for the
#: image's own word: below an exact own word, so a photo tagged "flower" comes before one
#: tagged "daisy"; above a misspelt one (0.75), so "plant" finds the daisy before a "plane".
BROADER = 0.8


class TextUnavailable(BackendDown):
    """The text backend cannot answer (PostgreSQL down): a 503, never a silent fallback."""


def max_edits(word: str) -> int:
    """Edits a misspelt query word may be from the stored one: none up to 3 letters, 1 for
    4, 2 from 5 (a 6-letter word with a letter dropped is a 5-letter query)."""
    return 0 if len(word) <= 3 else 1 if len(word) == 4 else 2


def sound(word: str) -> str:
    """The metaphone key of a Latin-letter word ("" for others: no phonetic match)."""
    if not (word.isascii() and word.isalpha()):
        return ""
    return jellyfish.metaphone(word)[:SOUND_LEN]


def word_score(edits: int, limit: int, same_sound: bool) -> float:
    """How well a stored word matches a query word: 1 exact, 0.75 / 0.5 for one / two edits
    (within ``limit``), 0.6 for a sound-alike, 0 otherwise."""
    by_edits = 1.0 - 0.25 * edits if edits <= limit else 0.0
    return max(by_edits, 0.6 if same_sound else 0.0)


def indexed_words(doc: Doc) -> tuple[list[str], list[str]]:
    """A document's searchable words: its own (text, caption, tag labels), and the broader
    words of its tags that are not its own (matched as ``broader_score`` says)."""
    own = words(doc_text(doc))
    return own, broader_words(doc, own)


def broader_score(edits: int, limit: int) -> float:
    """How well a tag's broader word matches a query word: ``BROADER`` exact, 0.75 of that
    one edit away (within ``limit``: "flowers"), else 0. A broader word is already a guess
    at what the query means; a guess at its spelling or sound on top ("steel" for "seed")
    finds noise."""
    return BROADER * word_score(edits, min(limit, 1), False)


def rank(n_words: int, matches: Iterable[tuple[int, int, float]], k: int) -> list[Hit]:
    """Hits from (query word index, image id, score) matches: per image the best score per
    query word, averaged over the ``n_words`` query words; distance = 1 - that."""
    best: dict[int, dict[int, float]] = {}
    for q, image_id, score in matches:
        per = best.setdefault(image_id, {})
        per[q] = max(per.get(q, 0.0), score)
    hits = [(i, 1.0 - sum(per.values()) / n_words) for i, per in best.items()]
    return sorted(hits, key=lambda h: (h[1], h[0]))[:k]


class TextIndex(Protocol):
    """What both backends offer."""

    def add_many(self, items: list[tuple[int, Doc]]) -> None:
        """Store images' text documents (replacing earlier ones), all in one commit."""

    def add(self, image_id: int, doc: Doc) -> None:
        """Store one image's text document."""

    def remove(self, ids: list[int]) -> list[int]:
        """Forget images; returns the ids that were stored."""

    def present(self, ids: list[int]) -> list[int]:
        """The ids that have a stored document."""

    def get(self, image_id: int) -> Doc | None:
        """An image's stored document, or None."""

    def search(self, query: str, k: int = 20) -> list[Hit]:
        """Images whose words match the query's, best first."""

    @property
    def count(self) -> int:
        """Images with a stored document."""

    def close(self) -> None:
        """Release the backend."""
