"""GET /experiments/{id}/events: curve points, progress and the final status as server-sent events;
a reconnect with Last-Event-ID misses nothing; an unknown id is a 404, not an empty stream."""

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from bnlab.api.events import streams as events
from bnlab.client import Event, parse_events
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_sessionmaker
from bnlab.store.tables import Experiment, Sweep
from tests.api.conftest import add_experiment


def add_points(session: Session, experiment: Experiment, steps: list[int]) -> None:
    """Curve points as a worker writes them: both variants at each step, then progress."""
    for step in steps:
        train_loss = None if step == 0 else 2.0 / step
        points = {"plain": (0.1 + step / 1000, train_loss), "bn": (0.2 + step / 1000, train_loss)}
        queries.add_curve_points(session, experiment, step, points)
        experiment.progress_step = step
    session.commit()


def read_events(client: TestClient, url: str, **headers: str) -> list[Event]:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(parse_events(response.iter_lines()))


def read_while_a_worker_writes(
    client: TestClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    poll: str,
    url: str,
    write: Callable[[Session], None],
) -> list[Event]:
    """The events of `url` while a worker thread runs `write` in a session of its own and
    commits. The worker waits until the stream has polled once (`events.<poll>`), so its writes
    happen while the stream follows."""
    first_poll_done = threading.Event()
    original_poll = getattr(events, poll)

    def poll_and_tell(*args: Any) -> Any:
        news = original_poll(*args)
        first_poll_done.set()
        return news

    monkeypatch.setattr(events, poll, poll_and_tell)
    monkeypatch.setattr(events, "POLL_SECONDS", 0.05)

    def worker() -> None:
        first_poll_done.wait(timeout=30)
        with make_sessionmaker(settings.database_url)() as worker_session:
            write(worker_session)
            worker_session.commit()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        return read_events(client, url)
    finally:
        thread.join()


def test_a_finished_experiment_streams_its_curve_progress_and_status_then_ends(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, "succeeded")
    add_points(session, experiment, [0, 50, 100])

    received = read_events(client, f"/experiments/{experiment.id}/events")

    points = [event for event in received if event.name == "point"]
    assert [(e.data["variant"], e.data["step"]) for e in points] == [
        ("plain", 0), ("bn", 0), ("plain", 50), ("bn", 50), ("plain", 100), ("bn", 100),
    ]  # fmt: skip
    # An id once a step's points are all sent: a reconnect with it cannot lose half a step.
    assert [e.id for e in points] == [None, "0", "0", "50", "50", "100"]
    assert points[3].data == {"variant": "bn", "step": 50, "val_accuracy": 0.25, "train_loss": 0.04}
    assert points[0].data["train_loss"] is None
    # The curve, then one progress and the final status, which is what GET returns; then the end.
    assert [event.name for event in received[6:]] == ["progress", "status"]
    progress, status = received[6:]
    assert progress.data == {
        "step": 100,
        "total": 200,
        "steps_per_second": None,
        "eta_seconds": None,
        "status": "succeeded",
    }
    assert progress.id == status.id == "100"
    assert status.data == client.get(f"/experiments/{experiment.id}").json()


def test_a_reconnect_with_last_event_id_gets_only_the_points_after_it(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, "failed")
    add_points(session, experiment, [0, 50, 100, 150])

    received = read_events(
        client, f"/experiments/{experiment.id}/events", **{"Last-Event-ID": "50"}
    )

    steps = [event.data["step"] for event in received if event.name == "point"]
    assert steps == [100, 100, 150, 150]
    assert received[-1].name == "status"
    assert received[-1].data["status"] == "failed"


def test_a_reconnect_after_the_last_point_still_gets_the_status(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, "cancelled")
    add_points(session, experiment, [0, 50])

    received = read_events(
        client, f"/experiments/{experiment.id}/events", **{"Last-Event-ID": "50"}
    )

    assert [event.name for event in received] == ["progress", "status"]
    assert received[0].id == "50"  # a further reconnect still asks for points past 50


def test_points_written_while_following_arrive_then_the_stream_ends(
    client: TestClient, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = add_experiment(session, "running")
    add_points(session, experiment, [0])

    def finish(worker_session: Session) -> None:
        running = queries.get_experiment(worker_session, experiment.id)
        assert running is not None
        add_points(worker_session, running, [50])
        running.progress_step = running.progress_total = 50
        running.steps_per_second, running.eta_seconds = 25.0, 0.0
        running.status = "succeeded"

    received = read_while_a_worker_writes(
        client, settings, monkeypatch, "poll", f"/experiments/{experiment.id}/events", finish
    )

    steps = [event.data["step"] for event in received if event.name == "point"]
    assert steps == [0, 0, 50, 50]
    progress = [event.data for event in received if event.name == "progress"]
    assert progress[0]["status"] == "running"
    assert progress[-1] == {
        "step": 50,
        "total": 50,
        "steps_per_second": 25.0,
        "eta_seconds": 0.0,
        "status": "succeeded",
    }
    assert received[-1].name == "status"


def test_an_unknown_experiment_is_a_404_not_an_empty_stream(client: TestClient) -> None:
    response = client.get("/experiments/999/events")
    assert response.status_code == 404
    assert response.json() == {"detail": "no experiment with id 999"}


def test_a_last_event_id_that_is_not_a_step_is_a_422(client: TestClient, session: Session) -> None:
    experiment = add_experiment(session, "succeeded")
    response = client.get(
        f"/experiments/{experiment.id}/events", headers={"Last-Event-ID": "yesterday"}
    )
    assert response.status_code == 422
    assert json.dumps(response.json()).count("last-event-id") == 1


# --- sweeps ---------------------------------------------------------------------------------


def add_sweep(session: Session, statuses: list[str]) -> tuple[Sweep, list[Experiment]]:
    sweep = Sweep(spec={"grid": {"seed": list(range(len(statuses)))}})
    session.add(sweep)
    session.flush()
    cells = []
    for seed, status in enumerate(statuses):
        cell = add_experiment(session, status, seed=seed)
        cell.sweep_id = sweep.id
        cells.append(cell)
    session.commit()
    return sweep, cells


def test_a_sweep_streams_each_cells_state_then_the_sweep_and_ends(
    client: TestClient, session: Session
) -> None:
    sweep, cells = add_sweep(session, ["succeeded", "failed"])
    cells[0].progress_step = 200
    session.commit()

    received = read_events(client, f"/sweeps/{sweep.id}/events")

    assert [event.name for event in received] == ["cell", "cell", "status"]
    assert received[0].data == {
        "id": cells[0].id,
        "status": "succeeded",
        "progress": {"step": 200, "total": 200, "steps_per_second": None, "eta_seconds": None},
    }
    assert received[1].data["id"] == cells[1].id and received[1].data["status"] == "failed"
    assert received[2].data == client.get(f"/sweeps/{sweep.id}").json()


def test_a_sweep_stream_follows_cells_until_all_have_ended(
    client: TestClient, session: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep, cells = add_sweep(session, ["succeeded", "running"])

    def finish_the_second(worker_session: Session) -> None:
        running = queries.get_experiment(worker_session, cells[1].id)
        assert running is not None
        running.status, running.progress_step = "succeeded", 200

    received = read_while_a_worker_writes(
        client, settings, monkeypatch, "poll_sweep", f"/sweeps/{sweep.id}/events", finish_the_second
    )

    second = [
        event.data for event in received if event.name == "cell" and event.data["id"] == cells[1].id
    ]
    assert [cell["status"] for cell in second] == ["running", "succeeded"]
    assert received[-1].name == "status" and received[-1].data["status"] == "succeeded"


def test_an_unknown_sweep_is_a_404(client: TestClient) -> None:
    response = client.get("/sweeps/999/events")
    assert response.status_code == 404
    assert response.json() == {"detail": "no sweep with id 999"}
