"""Text search, the engine's read side for a text query: the text embedder's (CLIP's)
image-text space and the words of the text features (OCR, captions, tags), fused. Ray-free.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.schemas import TextSearchResult
from deployments.search import Options, Searches
from extractors import WeightsUnavailable
from extractors.textdoc import MAX_QUERY_WORDS, words
from index_actors.interface import BackendDown, Hit, InvalidInput, Unavailable, reason
from index_actors.kinds import kind_of

#: Longest text query: CLIP reads 77 tokens; a page of text is a mistake, not a query.
MAX_QUERY_CHARS = 1000


class TextSearches(Searches):
    """``Searches`` with searches by text."""

    async def text_hits(
        self, text: Any, k: int | None, threshold: float | None, values: Options
    ) -> list[Hit]:
        """The text embedder's (CLIP's) nearest stored images to a text query."""
        text = checked_query(text)
        if self.embedder is None:
            raise Unavailable("text search needs the clip feature, which is disabled")
        name = self.features(self.embedder)[0]
        try:
            query = await self.extractors[name].embed_text(text)
        except WeightsUnavailable as exc:
            raise Unavailable(f"{name} is unavailable: {reason(exc)}") from None
        hits = await self.search(
            {name: query}, k, {name: threshold}, {name: self.options(name, values)}
        )
        return hits[name]

    async def search_text(
        self, q: Any, k: int | None, features: str | None, values: Options
    ) -> TextSearchResult:
        """Stored images matching a text: the embedder's (CLIP's) image-text space fused with
        the words of their OCR text, captions and tags. By default every text source, CLIP
        left out (named under ``unavailable``) while its weights are missing; a text backend
        that is down (PostgreSQL) is an error, never silently dropped."""
        kk = self.k(k)
        text = checked_query(q)
        # Every enabled source: one without an index (its model's weights missing) is named
        # under ``unavailable`` by default, a 503 when asked for.
        sources = [n for n in self.extractors if n == self.embedder or kind_of(n).reads_text]
        names = self.features(features, sources)
        if other := [n for n in names if n not in sources]:
            raise InvalidInput(f"{other} cannot search by text; text sources: {sources}")
        if not names:
            raise Unavailable(
                "text search needs clip or a text feature (ocr, caption, tags): none is on"
            )
        # CLIP reads any text; the word sources that will be asked need words.
        if any(kind_of(n).reads_text and n not in self.client.missing for n in names):
            n_words = len(words(text))
            if not n_words:
                raise InvalidInput("the query has no words to search for")
            if n_words > MAX_QUERY_WORDS:
                raise InvalidInput(f"the query has {n_words} words; the limit is {MAX_QUERY_WORDS}")
        k_each = max(kk, self.args.fusion.candidates)

        async def hits(name: str) -> list[Hit]:
            if name == self.embedder:
                return await self.text_hits(text, k_each, None, values)
            self.features(name)  # Unavailable while its index is not open
            found: list[Hit] = await self.client.search(name, text, k_each)
            return found

        results = await asyncio.gather(*(hits(n) for n in names), return_exceptions=True)
        lists: dict[str, list[Hit]] = {}
        unavailable: dict[str, str] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Unavailable) and not features:
                unavailable[name] = str(result)  # clip without weights: a known state
            elif isinstance(result, BackendDown):
                raise BackendDown(f"text search ({name}) is unavailable: {reason(result)}")
            elif isinstance(result, BaseException):
                raise result
            else:
                lists[name] = result
        if not lists:
            raise Unavailable(f"no text source could answer: {unavailable}")
        fused = await self.fused(lists, kk)
        return TextSearchResult(**dict(fused), unavailable=unavailable)


def checked_query(text: Any) -> str:
    """A text query, or an ``InvalidInput`` saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the text query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(
            f"the text query is {len(text)} characters; the limit is {MAX_QUERY_CHARS}"
        )
    return text
