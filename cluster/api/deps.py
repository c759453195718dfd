"""What routes are handed: a read-only store view (closed after the request) and the scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from cluster.scheduler_client import SchedulerClient
from cluster.store import Store


def open_store(request: Request) -> Store:
    return Store(request.app.state.store_path, readonly=True)


def read_store(request: Request) -> Iterator[Store]:
    store = open_store(request)
    try:
        yield store
    finally:
        store.close()


def scheduler(request: Request) -> SchedulerClient:
    client: SchedulerClient = request.app.state.scheduler
    return client


ReadStore = Annotated[Store, Depends(read_store)]
Scheduler = Annotated[SchedulerClient, Depends(scheduler)]
