"""The sender's per-key bookkeeping: which key each delivery held by this replica belongs to
(queued, waiting for its retry, or being sent), so a key's pending deliveries can be capped at
submit, and how many of a key's are being sent, so one key's slow receivers never hold every
sender (the rest wait parked, in order, until one of that key's attempts ends)."""

from __future__ import annotations

from collections import Counter, deque

Item = tuple[str, str]  # (job id, delivery id)
KeyId = str | None  # the API key of the delivery's job; None: keys off (no per-key bound)


class KeySlots:
    def __init__(self, in_flight_per_key: int):
        self.in_flight_per_key = in_flight_per_key
        self._held: dict[Item, KeyId] = {}
        self._sending: Counter[KeyId] = Counter()
        self._parked: dict[KeyId, deque[Item]] = {}

    def __contains__(self, item: Item) -> bool:
        return item in self._held

    def hold(self, item: Item, key: KeyId) -> bool:
        """Hold ``item`` here; False when it already is (queued, waiting or being sent)."""
        if item in self._held:
            return False
        self._held[item] = key
        return True

    def key(self, item: Item) -> KeyId:
        return self._held.get(item)

    def pending(self, key: KeyId) -> int:
        """The key's deliveries held here."""
        return sum(1 for k in self._held.values() if k == key)

    def start(self, item: Item) -> bool:
        """Take a sending slot of the item's key; False: its key has every slot it may, the
        item is parked until one frees (``finish``)."""
        key = self._held.setdefault(item, None)
        if key is not None and self._sending[key] >= self.in_flight_per_key:
            self._parked.setdefault(key, deque()).append(item)
            return False
        self._sending[key] += 1
        return True

    def finish(self, item: Item) -> tuple[KeyId, Item | None]:
        """End the item's attempt and stop holding it: its key, and the key's next parked
        item to queue now (None: none)."""
        key = self._held.pop(item, None)
        self._sending[key] -= 1
        if self._sending[key] <= 0:
            del self._sending[key]
        parked = self._parked.get(key)
        following = parked.popleft() if parked else None
        if parked is not None and not parked:
            del self._parked[key]
        return key, following

    def drop(self, item: Item) -> None:
        """Stop holding an item not being sent (the queue was full: it stays pending in its
        record, for a later sweep)."""
        self._held.pop(item, None)
