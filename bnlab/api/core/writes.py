"""Submissions share the API's worker threads with reads, a few at a time.

Routes that touch SQL are plain functions: FastAPI runs each in a worker thread, 40 of them.
A burst of submissions (a script posting 100 experiments at once) would take every thread and
a GET would wait for the burst to drain. Submissions therefore wait, without a thread, for one
of `WRITE_SLOTS` slots; reads never wait for one.
"""

from collections.abc import AsyncIterator

import anyio
from fastapi import Depends, FastAPI, Request

WRITE_SLOTS = 4


def install(app: FastAPI) -> None:
    app.state.write_slots = anyio.Semaphore(WRITE_SLOTS)


async def _write_slot(request: Request) -> AsyncIterator[None]:
    async with request.app.state.write_slots:
        yield


WRITE_SLOT = Depends(_write_slot)
