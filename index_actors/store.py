"""LMDB stores: the source of truth for features and for the id <-> file name catalog."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

_ID = struct.Struct(">q")  # big-endian, so LMDB's key order is id order
_GEN_KEY = b"generation"
_NEXT_KEY = b"next_number"


def id_key(image_id: int) -> bytes:
    """LMDB key of an image id: 8-byte big-endian."""
    return _ID.pack(image_id)


def key_id(key: bytes | memoryview) -> int:
    """Image id of an LMDB key."""
    return int(_ID.unpack(key)[0])


def numbered(value: bytes | memoryview) -> tuple[int, bytes]:
    """(first number, value) of a value stored by ``FeatureStore.put_numbered``."""
    return _ID.unpack_from(value, 0)[0], bytes(value[_ID.size :])


def open_env(path: Path, map_size: int) -> lmdb.Environment:
    """Open (creating) an LMDB environment with room for named databases."""
    path.mkdir(parents=True, exist_ok=True)
    # map_size is address space, not disk: files grow only as data is written.
    return lmdb.open(str(path), map_size=map_size, max_dbs=4)


class FeatureStore:
    """One feature's raw values by image id, plus a generation counter.

    Every write transaction bumps the generation in the same commit, so a snapshot of a
    derived index stamped with it is known to be current exactly when the numbers match.
    """

    def __init__(self, path: Path, map_size: int = 1 << 36) -> None:
        self.env = open_env(path, map_size)
        self.features = self.env.open_db(b"features")
        self.meta = self.env.open_db(b"meta")

    @property
    def generation(self) -> int:
        """Number of committed writes so far."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(_GEN_KEY)
        return int(raw) if raw else 0

    def _bump(self, txn: lmdb.Transaction) -> None:
        raw = txn.get(_GEN_KEY, db=self.meta)
        txn.put(_GEN_KEY, str((int(raw) if raw else 0) + 1).encode(), db=self.meta)

    def put(self, items: Iterable[tuple[int, bytes]]) -> list[int]:
        """Store values, replacing existing ones; returns the ids that were replaced.

        Returns only after the transaction committed (and was synced): that is the moment an
        add may be acknowledged.
        """
        replaced = []
        with self.env.begin(write=True, db=self.features) as txn:
            for image_id, value in items:
                if txn.replace(id_key(image_id), value) is not None:
                    replaced.append(image_id)
            self._bump(txn)
        return replaced

    def put_numbered(
        self, items: list[tuple[int, int, bytes]]
    ) -> tuple[list[int], list[tuple[int, bytes]]]:
        """Store (id, count, value) items, each taking ``count`` consecutive numbers from a
        counter kept in the same transaction (local features: descriptor ids).

        Values are stored behind their first number (``numbered`` splits them again).
        Returns each item's first number and the (first number, value) of every replaced
        item.
        """
        starts: list[int] = []
        replaced: list[tuple[int, bytes]] = []
        with self.env.begin(write=True, db=self.features) as txn:
            raw = txn.get(_NEXT_KEY, db=self.meta)
            next_number = int(raw) if raw else 0
            for image_id, count, value in items:
                previous = txn.replace(id_key(image_id), _ID.pack(next_number) + value)
                if previous is not None:
                    replaced.append(numbered(previous))
                starts.append(next_number)
                next_number += count
            txn.put(_NEXT_KEY, str(next_number).encode(), db=self.meta)
            self._bump(txn)
        return starts, replaced

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Delete values; returns the ids that were present."""
        removed = []
        with self.env.begin(write=True, db=self.features) as txn:
            for image_id in ids:
                if txn.delete(id_key(image_id)):
                    removed.append(image_id)
            self._bump(txn)
        return removed

    def get(self, image_id: int) -> bytes | None:
        """The stored value of ``image_id``, or None."""
        with self.env.begin(db=self.features) as txn:
            return txn.get(id_key(image_id))

    def get_many(self, ids: Iterable[int]) -> list[bytes | None]:
        """Stored values of ``ids`` (None where absent), in one read transaction."""
        with self.env.begin(db=self.features) as txn:
            return [txn.get(id_key(i)) for i in ids]

    def sample(self, n: int, seed: int = 0) -> tuple[list[int], list[bytes]]:
        """Up to ``n`` (ids, values) chosen uniformly at random, in id order."""
        with self.env.begin(db=self.features) as txn:
            keys = [key_id(k) for k in txn.cursor().iternext(keys=True, values=False)]
            if len(keys) > n:
                rng = np.random.default_rng(seed)
                keys = sorted(rng.choice(keys, n, replace=False).tolist())
            return keys, [bytes(txn.get(id_key(i)) or b"") for i in keys]

    def present(self, ids: Iterable[int]) -> list[int]:
        """The subset of ``ids`` that has a stored value."""
        with self.env.begin(db=self.features) as txn:
            return [i for i in ids if txn.get(id_key(i)) is not None]

    def items(self) -> Iterator[tuple[int, bytes]]:
        """All (id, value) pairs in id order."""
        with self.env.begin(db=self.features) as txn:
            for key, value in txn.cursor():
                yield key_id(key), value

    def page(self, after: int, n: int) -> tuple[list[int], list[bytes]]:
        """Up to ``n`` (ids, values) with ids over ``after``, in id order (a reshard reads a
        store page by page while its actor goes on serving)."""
        ids: list[int] = []
        values: list[bytes] = []
        with self.env.begin(db=self.features) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(id_key(after + 1))
            while found and len(ids) < n:
                ids.append(key_id(cursor.key()))
                values.append(bytes(cursor.value()))
                found = cursor.next()
        return ids, values

    def count(self) -> int:
        """Number of stored values."""
        with self.env.begin(db=self.features) as txn:
            return int(txn.stat(self.features)["entries"])

    def close(self) -> None:
        """Close the environment."""
        self.env.close()


MAX_NAME_BYTES = 500  # LMDB keys stop at 511 bytes
MAX_ID = 2**63 - 1


class Catalog:
    """The image ids and file names: id -> name, name -> id, and the next free id.

    An image is *known* when it is in the catalog; the ingress writes it here before any
    feature and removes it after every feature, so an index never holds an unknown id.
    Ids are never reused: the next free id only grows, so a deleted image's id cannot come
    back as another image's (a client may still hold it).

    One writer per image: a write (an add, a re-add, a delete) holds the image's id from its
    registration (``claim``, ``hold``) to its last feature (``release``), and another write of
    the same image waits for it, so that concurrent writes of one id end in one upload's
    features, or none. A hold lapses after its ``ttl_s`` (a writer that died); holds live in
    memory, as they outlive no writer.
    """

    def __init__(self, path: Path, map_size: int = 1 << 32) -> None:
        self.path = Path(path)
        self.env = open_env(self.path, map_size)
        self.names = self.env.open_db(b"id_to_name")
        self.ids = self.env.open_db(b"name_to_id")
        self.meta = self.env.open_db(b"meta")
        #: id -> (the writer's token, when its hold lapses, time.monotonic()).
        self._holds: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()  # the Ray actor is serial; LocalActor calls on threads

    def register(
        self, file_name: str | None, image_id: int | None = None, unique_name: bool = False
    ) -> tuple[int, str]:
        """Record an image; returns its (id, file name).

        Without ``image_id`` the id is the one already given to ``file_name`` (the name is the
        image's identity, so re-adding a file replaces it), else a new one. With
        ``unique_name`` the name is only a label: the image always gets a new id, and a name
        taken by another image gets ``#<id>`` appended. Without a file name an image keeps
        its name, or is named by its id. A name that belongs to another id, or one over
        500 bytes, raises ``ValueError``.
        """
        return self.register_many([(file_name, image_id)], unique_name)[0]

    def register_many(
        self, images: list[tuple[str | None, int | None]], unique_names: bool = False
    ) -> list[tuple[int, str]]:
        """``register`` for a batch, in one transaction (all or nothing)."""
        with self._lock, self.env.begin(write=True) as txn:
            return [self._register(txn, name, i, unique_names)[:2] for name, i in images]

    def claim(
        self,
        images: list[tuple[str | None, int | None]],
        unique_names: bool,
        token: str,
        ttl_s: float,
    ) -> list[tuple[int, str, bool] | str | None]:
        """``register`` each image for the writer ``token`` and hold its id for it (until
        ``release``, or ``ttl_s``), in one transaction. Per image: (id, file name, whether it
        was known before), or why it cannot be registered (``register``'s ``ValueError``), or
        None while another writer holds it (nothing done: ask again)."""
        out: list[tuple[int, str, bool] | str | None] = []
        with self._lock, self.env.begin(write=True) as txn:
            for name, image_id in images:
                try:
                    out.append(self._register(txn, name, image_id, unique_names, (token, ttl_s)))
                except ValueError as exc:
                    out.append(str(exc))
        return out

    def hold(self, ids: list[int], token: str, ttl_s: float) -> bool:
        """Hold every one of ``ids`` for the writer ``token`` (a delete), or none when
        another writer holds one of them."""
        with self._lock:
            if not all(self._free(i, token) for i in ids):
                return False
            until = time.monotonic() + ttl_s
            self._holds.update({i: (token, until) for i in ids})
            return True

    def release(self, ids: list[int], token: str) -> None:
        """End the writer ``token``'s holds of ``ids``."""
        with self._lock:
            for i in ids:
                if self._holds.get(i, ("", 0.0))[0] == token:
                    del self._holds[i]

    def _free(self, image_id: int, token: str) -> bool:
        held = self._holds.get(image_id)
        return held is None or held[0] == token or held[1] < time.monotonic()

    def _next_id(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"next_id", db=self.meta)
        if raw is not None:
            return int(raw)
        cursor = txn.cursor(db=self.names)  # a catalog from before the counter existed
        return key_id(cursor.key()) + 1 if cursor.last() else 1

    def _register(
        self,
        txn: lmdb.Transaction,
        file_name: str | None,
        image_id: int | None,
        unique: bool,
        hold: tuple[str, float] | None = None,
    ) -> Any:
        """(id, name, known before), or None when ``hold`` (token, seconds) cannot hold the
        id; a ``ValueError`` before anything is written."""
        if file_name is not None and len(file_name.encode()) > MAX_NAME_BYTES:
            raise ValueError(f"file name is over {MAX_NAME_BYTES} bytes: {file_name[:60]!r}...")
        if image_id is None and file_name and not unique:
            raw = txn.get(file_name.encode(), db=self.ids)
            if raw is not None:
                image_id = key_id(raw)
        if hold is not None and image_id is not None and not self._free(image_id, hold[0]):
            return None
        if image_id is None:
            image_id = self._next_id(txn)
            if image_id > MAX_ID:
                raise ValueError("no image ids left")
        old = txn.get(id_key(image_id), db=self.names)
        name = file_name or (bytes(old).decode() if old is not None else str(image_id))
        other = txn.get(name.encode(), db=self.ids)
        if other is not None and key_id(other) != image_id:
            if not unique:
                raise ValueError(f"file name {name!r} already belongs to image {key_id(other)}")
            name = f"{name}#{image_id}"
        if old is not None and bytes(old).decode() != name:
            txn.delete(old, db=self.ids)
        txn.put(id_key(image_id), name.encode(), db=self.names)
        txn.put(name.encode(), id_key(image_id), db=self.ids)
        txn.put(b"next_id", str(max(self._next_id(txn), image_id + 1)).encode(), db=self.meta)
        if hold is not None:
            self._holds[image_id] = (hold[0], time.monotonic() + hold[1])
        return image_id, name, old is not None

    def layout(self, feature: str) -> dict[str, Any] | None:
        """The recorded shard layout of a feature (``placement.Layout.to_dict``), or None."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(f"layout:{feature}".encode())
        return json.loads(raw) if raw is not None else None

    def layouts_here(self, feature: str) -> dict[int, int]:
        """Layouts of a feature in the data directory beside this catalog (on the head)
        that hold images, for data from before layouts were recorded: count -> images."""
        from index_actors.shards import layouts_here

        return layouts_here(self.path.parent, feature)

    def set_layout(self, feature: str, layout: dict[str, Any]) -> None:
        """Record a feature's shard layout (committed before this returns)."""
        with self.env.begin(write=True, db=self.meta) as txn:
            txn.put(f"layout:{feature}".encode(), json.dumps(layout).encode())

    def dormant(self, feature: str) -> bool:
        """Whether a feature's index was found empty while its model could not run, and
        is not opened until it can (``IndexClient.open``)."""
        with self.env.begin(db=self.meta) as txn:
            return txn.get(f"dormant:{feature}".encode()) is not None

    def set_dormant(self, feature: str, dormant: bool) -> None:
        """Mark a feature's index dormant, or open again (committed before this returns)."""
        with self.env.begin(write=True, db=self.meta) as txn:
            if dormant:
                txn.put(f"dormant:{feature}".encode(), b"1")
            else:
                txn.delete(f"dormant:{feature}".encode())

    def config(self) -> dict[str, str]:
        """Where this catalog lives (its actor may predate a config change)."""
        return {"path": str(self.path)}

    def unregister(self, image_id: int) -> bool:
        """Forget an image; returns whether it was known."""
        with self.env.begin(write=True) as txn:
            name = txn.pop(id_key(image_id), db=self.names)
            if name is None:
                return False
            txn.delete(name, db=self.ids)
        return True

    def name_of(self, ids: Iterable[int]) -> dict[int, str]:
        """File names of the known ids among ``ids``."""
        out = {}
        with self.env.begin(db=self.names) as txn:
            for image_id in ids:
                raw = txn.get(id_key(image_id))
                if raw is not None:
                    out[image_id] = raw.decode()
        return out

    def id_of(self, file_name: str) -> int | None:
        """Id of a file name, or None."""
        return self.ids_of([file_name])[0]

    def ids_of(self, file_names: list[str]) -> list[int | None]:
        """Ids of file names (None where unknown)."""
        with self.env.begin(db=self.ids) as txn:
            raws = [txn.get(name.encode()) for name in file_names]
        return [key_id(raw) if raw is not None else None for raw in raws]

    def pid(self) -> int:
        """Process id, for fault-injection tests."""
        return os.getpid()

    def count(self) -> int:
        """Number of known images."""
        with self.env.begin(db=self.names) as txn:
            return int(txn.stat(self.names)["entries"])

    def close(self) -> None:
        """Close the environment."""
        self.env.close()
