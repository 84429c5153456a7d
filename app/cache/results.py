"""The `ResultCache` interface and its in-memory LRU default (a Redis one stands in for scale-out).

Keys come from `app.cache.keys.cache_key` (SHA-256 hex); values are `EncodedResult` bytes. Every
method is `async` so that a networked implementation fits the same callers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

from app.media.encoding import EncodedResult


class ResultCache(ABC):
    """A bounded map from request keys to finished results; a miss is never an error."""

    @abstractmethod
    async def get(self, key: str) -> EncodedResult | None:
        """The result stored under `key` (and mark it recently used), or None."""

    @abstractmethod
    async def put(self, key: str, result: EncodedResult) -> None:
        """Store `result`, evicting the least recently used entries beyond the bound."""


class InMemoryResultCache(ResultCache):
    """LRU bounded by the bytes of the stored results (`max_bytes` > 0)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive; got {max_bytes} (no cache: pass None)")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, EncodedResult] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> EncodedResult | None:
        result = self._entries.get(key)
        if result is not None:
            self._entries.move_to_end(key)
        return result

    async def put(self, key: str, result: EncodedResult) -> None:
        if result.nbytes > self.max_bytes:
            return  # would evict everything else and still not fit
        if (previous := self._entries.pop(key, None)) is not None:
            self.nbytes -= previous.nbytes
        self._entries[key] = result
        self.nbytes += result.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
