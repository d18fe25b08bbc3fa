"""The embedding cache: pooled vectors by what produced them, so an input embedded once is not run again.

A vector is stored under a key made of the model's content digest (every file the model is built from: a rebuilt
model with other weights has another digest, so it never gets an old vector), the cache scope (the caller's tenant
unless the server shares the cache across tenants: otherwise a fast answer would tell one tenant what another
embedded), and the exact token ids the model runs (after prompts and truncation) with their type ids and the prompt
length pooling leaves out. What is stored is the pooled vector before normalization, shortening and quantization,
so one entry serves every `dimensions`, `normalize` and `embedding_type` a caller asks for.

Two tiers: this process's LRU, bounded in bytes (`LocalVectors`), and optionally a store shared by replicas (the
`SharedVectors` protocol; service/stores/redis_cache.py keeps them in Redis with a TTL). Both are used on the event
loop thread only. Identical inputs within one call are embedded once whether or not the cache is on.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.engine.tokenize import TokenizedInput

# What an entry costs beyond its vector's bytes: the key, the dict slot and the bytes object (measured ~150 bytes
# with CPython 3.11; rounded up so the bound errs on the safe side).
ENTRY_OVERHEAD_BYTES = 200
KEY_BYTES = 16
DIGEST_CHUNK_BYTES = 1 << 20


def model_digest(model_dir: Path, extra: bytes = b"") -> bytes:
    """A digest of every file of a model directory (names and contents, in name order) and `extra` (the manifest
    fields that shape the pooled vector). Read once at load: ~0.5 s per GB."""
    digest = hashlib.blake2b(extra, digest_size=32)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(model_dir).as_posix()
        if relative == "manifest.json" or any(part.startswith(".") for part in path.relative_to(model_dir).parts):
            continue  # the manifest's prices and aliases do not change a vector; `extra` carries what does
        digest.update(relative.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(DIGEST_CHUNK_BYTES):
                digest.update(chunk)
    return digest.digest()


def input_keys(model: bytes, scope: str, tokens: Sequence[TokenizedInput]) -> list[bytes]:
    """The cache key of each input: what the model runs, under the model's digest and the caller's scope."""
    scope_bytes = scope.encode()
    # Each part length-prefixed: no model name or tenant name (free text an admin chooses, NUL bytes included) can
    # be spelled so that its key meets another scope's.
    prefix = b"".join(len(part).to_bytes(4, "little") + part for part in (model, scope_bytes))
    keys = []
    for item in tokens:
        digest = hashlib.blake2b(prefix, digest_size=KEY_BYTES)
        digest.update(item.prompt_length.to_bytes(4, "little"))
        digest.update(np.ascontiguousarray(item.ids, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(item.type_ids, dtype=np.int64).tobytes())
        keys.append(digest.digest())
    return keys


def is_vector(value: bytes, dimensions: int) -> bool:
    """Whether a stored value can be a pooled vector of `dimensions` values: float32 bytes of that size, all finite
    (a NaN would fail every call of that input until the entry expired)."""
    return len(value) == dimensions * 4 and bool(np.isfinite(np.frombuffer(value, dtype="<f4")).all())


class SharedVectors(Protocol):
    """A tier shared by replicas. Both calls are best effort: a slow or failing store answers misses and drops
    writes, never fails or holds up the call."""

    async def start(self) -> None: ...

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class CacheCounters:
    """Totals since start, for metrics: inputs served from each tier, embedded, and duplicates within calls."""

    hits: int = 0
    shared_hits: int = 0
    misses: int = 0
    deduplicated: int = 0


class LocalVectors:
    """This process's vectors, least recently used evicted first once `max_bytes` would be exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        size = len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old) + ENTRY_OVERHEAD_BYTES
        while self._entries and self.bytes + size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted) + ENTRY_OVERHEAD_BYTES
            self.evictions += 1
        self._entries[key] = value
        self.bytes += size


class VectorCache:
    """Both tiers as one: look up keys (this process first, then the shared store), keep new vectors in both."""

    def __init__(self, max_bytes: int, shared: SharedVectors | None = None) -> None:
        self.local = LocalVectors(max_bytes)
        self.shared = shared

    @property
    def enabled(self) -> bool:
        return self.local.max_bytes > 0 or self.shared is not None

    async def lookup(self, keys: Sequence[bytes], counters: CacheCounters, dimensions: int) -> list[bytes | None]:
        """The stored vector of each key (`dimensions` float32 values), or None; counts hits and shared hits (misses
        are counted by the caller, which knows how many it embeds). A shared value that is not such a vector
        (another program's value under our prefix, a truncated write) is a miss, never kept in this process."""
        found = [self.local.get(key) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        counters.hits += len(keys) - len(missing)
        if missing and self.shared is not None:
            remote = await self.shared.get_many([keys[i] for i in missing])
            for i, value in zip(missing, remote, strict=True):
                if value is not None and is_vector(value, dimensions):
                    found[i] = value
                    self.local.put(keys[i], value)
                    counters.shared_hits += 1
        return found

    def keep(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store freshly embedded vectors (rows of float32 `vectors`, in `keys` order). A non-finite row (a model
        that overflowed) is not kept: the call fails for it, and another replica's model may well do better."""
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            keys = [key for key, ok in zip(keys, finite, strict=True) if ok]
            vectors = vectors[finite]
        rows = [np.ascontiguousarray(row, dtype="<f4").tobytes() for row in vectors]
        if self.local.max_bytes:
            for key, row in zip(keys, rows, strict=True):
                self.local.put(key, row)
        if self.shared is not None:
            self.shared.put_many(list(zip(keys, rows, strict=True)))

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
