"""What every index kind offers (the ``Index`` protocol) and the domain errors of the engine.

Ray-free and light: the index classes, the kinds, the index client, the engine and the routes
all import it. An error raised in an index actor reaches the caller as the same class (Ray
re-raises a task's exception as a subclass of it), so the engine maps each to one answer.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Hit = tuple[int, float]  # (image id, distance): smaller is closer for every kind


class Hits(list[Hit]):
    """The hits of a search over shards; ``missing`` names the shards that did not answer
    (down, or too slow), whose images are not in the list."""

    def __init__(self, hits: Any = (), missing: Any = ()) -> None:
        super().__init__(hits)
        self.missing: list[str] = list(missing)


class InvalidInput(ValueError):
    """The request is wrong (a bad parameter, a query with nothing to match): a 422."""


class NotFound(KeyError):
    """What the request names does not exist here (an image, a service): a 404."""

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument; the message is meant to be read.
        return str(self.args[0]) if self.args else "not found"


class UnknownImage(NotFound):
    """The image id is not stored (in the catalog, or in one feature's index)."""


class Conflict(ValueError):
    """The request contradicts what is stored (a file name that belongs to another id): 409."""


class Unavailable(RuntimeError):
    """A feature cannot answer: disabled, its model missing, its index not open. A 503 whose
    message says why and, where there is one, the fix."""


class BackendDown(RuntimeError):
    """A store or actor failed for reasons not the client's; retrying is safe: a 503."""


class StorageFull(BackendDown):
    """The data directory's disk is full: a 507 that says so. Nothing stored is damaged
    (LMDB's commit fails whole), and a retry works once space is freed."""


#: How a full disk shows in an error's message (``errno.ENOSPC``'s text, LMDB's and the OS's).
NO_SPACE = "No space left on device"


def storage_full(what: str) -> StorageFull:
    """The error for a write that failed on a full disk; ``what``: what failed, and why."""
    return StorageFull(f"the data directory's disk is full; free space, then retry: {what}")


@runtime_checkable
class Index(Protocol):
    """One feature's stored features and what searches them; an index actor hosts one.

    Every kind implements all of it; what a kind cannot do (a trained index for binary
    hashes, documents of a vector index) raises ``ValueError`` saying so.
    """

    LIVE: tuple[str, ...]

    @property
    def live(self) -> dict[str, Any]:
        """The live settings now (changed by ``configure``, no rebuild)."""

    @property
    def count(self) -> int:
        """Number of stored entries."""

    def configure(self, **live: Any) -> None:
        """Change live settings (the kind's ``LIVE``)."""

    def add(self, ids: list[int], features: Any) -> int:
        """Store features of ``ids`` (replacing), durable when this returns; the count."""

    def remove(self, ids: list[int]) -> list[int]:
        """Forget ``ids``; returns those that were stored."""

    def has(self, ids: list[int]) -> list[int]:
        """The stored ids among ``ids``."""

    def search(
        self,
        queries: Any,
        k: int | None = 20,
        threshold: float | None = None,
        exclude: int | None = None,
    ) -> list[Hit]:
        """Nearest stored ids to a query, best first; ``exclude``: an id left out. A kind
        may take per-search options as further keyword arguments (its ``options``)."""

    def search_by_id(
        self, image_id: int, k: int | None = 20, threshold: float | None = None
    ) -> list[Hit]:
        """Nearest stored ids to a stored image (itself left out); ``UnknownImage``."""

    def query_of(self, image_id: int) -> Any:
        """A stored image's feature as a query (None: nothing to match by); ``UnknownImage``.
        A sharded search asks the owner for it, then every shard searches by it."""

    def describe(self) -> dict[str, Any]:
        """Count, live settings and what the kind adds (trained, whitened)."""

    def docs(self, ids: list[int]) -> dict[int, Any]:
        """Stored text documents of ``ids`` (text kind only)."""

    def sample(self, n: int, seed: int = 0) -> Any:
        """Training data: up to ``n`` stored rows at random (trainable kinds only)."""

    def adopt(self, trained: bytes | None, whitening: bytes | None) -> dict[str, Any]:
        """Switch to a trained index (trainable kinds only)."""

    def snapshot(self) -> bool:
        """Persist derived data if it changed."""

    def close(self) -> None:
        """Snapshot and release the store."""


def reason(exc: BaseException) -> str:
    """The message of an error from an actor or deployment, without Ray's traceback (Ray
    wraps a remote exception; its ``cause`` is the original)."""
    cause = getattr(exc, "cause", None)
    return str(cause if isinstance(cause, BaseException) else exc)
