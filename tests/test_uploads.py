"""``deployments.ingress.Uploads``: the features an add asks of one extractor deployment go
in one request per upload, and each answer (or failure) reaches the feature it belongs to.
The deployment handle is a stand-in that records its calls (Serve's own, not ours)."""

import asyncio
from typing import Any

import pytest

from deployments.ingress import Uploads
from extractors import WeightsUnavailable


class _Method:
    def __init__(self, calls: list[tuple[bytes, Any, list[str]]], fail: bool) -> None:
        self.calls = calls
        self.fail = fail

    def remote(self, data: bytes, query: Any, features: list[str]) -> Any:
        self.calls.append((data, query, list(features)))

        async def answer() -> list[Any]:
            await asyncio.sleep(0)
            if self.fail:
                raise ConnectionError("replica gone")
            return [
                WeightsUnavailable("no weights") if f == "clip" else f"{f}:{data.decode()}"
                for f in features
            ]

        return answer()


class _Handle:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[bytes, Any, list[str]]] = []
        self.extract_many = _Method(self.calls, fail)


def test_one_request_per_upload_and_each_answer_to_its_feature() -> None:
    handle = _Handle()
    uploads = Uploads(handle)  # type: ignore[arg-type]

    async def add(data: bytes) -> list[Any]:
        names = ["phash", "clip", "local"]
        return await asyncio.gather(
            *(uploads.extract(data, n) for n in names), return_exceptions=True
        )

    async def two_adds() -> tuple[list[Any], list[Any]]:
        return await asyncio.gather(add(b"one"), add(b"two"))

    first, second = asyncio.run(two_adds())
    assert sorted(handle.calls) == [
        (b"one", False, ["phash", "clip", "local"]),
        (b"two", False, ["phash", "clip", "local"]),
    ]
    assert first[0] == "phash:one" and first[2] == "local:one"
    assert isinstance(first[1], WeightsUnavailable)
    assert second[0] == "phash:two" and second[2] == "local:two"
    assert not uploads.waiting and not uploads.sending


def test_a_failed_request_fails_every_feature_it_carried() -> None:
    uploads = Uploads(_Handle(fail=True))  # type: ignore[arg-type]

    async def add() -> list[Any]:
        return await asyncio.gather(
            *(uploads.extract(b"x", n) for n in ("phash", "color")), return_exceptions=True
        )

    got = asyncio.run(add())
    assert all(isinstance(g, ConnectionError) for g in got), got
    with pytest.raises(ConnectionError):
        asyncio.run(uploads.extract(b"y", "phash"))
