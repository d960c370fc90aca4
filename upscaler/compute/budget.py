"""An amount of memory shared by concurrent work: each piece reserves its share and waits
until it is free. A piece larger than the whole budget runs alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MemoryBudget:
    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self._freed = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        share = min(nbytes, self.budget)
        async with self._freed:
            await self._freed.wait_for(lambda: self.used + share <= self.budget)
            self.used += share
        try:
            yield
        finally:
            async with self._freed:
                self.used -= share
                self._freed.notify_all()
