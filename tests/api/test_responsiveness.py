"""Reads keep answering while the API is busy: a burst of submissions takes at most a few of its
worker threads, and the garbage collector no longer walks what the process built at startup."""

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from bnlab.api.core.writes import WRITE_SLOTS
from bnlab.vocabulary import Queue

BURST = 3 * WRITE_SLOTS


def test_a_burst_of_submissions_leaves_the_threads_to_reads(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = client.app.state.broker  # type: ignore[attr-defined]
    enqueue, inside, most = broker.enqueue, set(), [0]
    lock, release = threading.Lock(), threading.Event()

    def slow_enqueue(experiment_ids: list[int], queue: Queue) -> None:  # a broker slow to take jobs
        with lock:
            inside.add(experiment_ids[0])
            most[0] = max(most[0], len(inside))
        release.wait(timeout=60)
        with lock:
            inside.discard(experiment_ids[0])
        enqueue(experiment_ids, queue)

    monkeypatch.setattr(broker, "enqueue", slow_enqueue)
    with ThreadPoolExecutor(BURST) as pool:
        posts = [pool.submit(client.post, "/experiments", json={}) for _ in range(BURST)]
        deadline = time.monotonic() + 30
        while len(inside) < WRITE_SLOTS and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # room for any submission beyond the slots to get in, were it let
        # every slot taken, the rest of the burst waiting: a read still answers
        listed = client.get("/experiments")
        release.set()
        answers = [post.result(timeout=60) for post in posts]
    assert listed.status_code == 200
    assert most[0] == WRITE_SLOTS
    assert [answer.status_code for answer in answers] == [202] * BURST


def test_what_the_api_built_at_startup_is_left_out_of_garbage_collection(
    client: TestClient,
) -> None:
    # torch, FastAPI and the app are hundreds of thousands of objects; walked by every full
    # collection, they stalled each request in the process for ~200 ms.
    assert gc.get_freeze_count() > 100_000
