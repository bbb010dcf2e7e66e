"""GET /experiments/{id}/events over real HTTP while a real worker trains, on both stacks: every
curve point once, in order, progress as it goes, the final status, and a client that drops the
connection and reconnects with Last-Event-ID misses nothing."""

from collections.abc import Iterator

import pytest

from bnlab.client import Event, parse_events
from tests.service.conftest import SMALL, STEPS, Service

pytestmark = pytest.mark.service

SPEC = {**SMALL, "seed": 5}


def stream(
    service: Service, experiment_id: int, last_event_id: str | None = None
) -> Iterator[Event]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    url = f"/experiments/{experiment_id}/events"
    with service.client.stream("GET", url, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        yield from parse_events(response.iter_lines())


def points_of(events: list[Event]) -> list[tuple[str, int]]:
    return [(e.data["variant"], e.data["step"]) for e in events if e.name == "point"]


def test_the_stream_follows_an_experiment_to_its_end(service: Service) -> None:
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]

    received = list(stream(service, experiment_id))

    assert points_of(received) == [(variant, step) for step in STEPS for variant in ("plain", "bn")]
    progress = [event.data for event in received if event.name == "progress"]
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert progress[-1]["step"] == progress[-1]["total"] == 300
    assert received[-1].name == "status"
    assert received[-1].data["status"] == "succeeded"
    assert received[-1].data == service.client.get(f"/experiments/{experiment_id}").json()


def test_a_client_that_reconnects_with_last_event_id_misses_nothing(service: Service) -> None:
    experiment_id = service.client.post("/experiments", json=SPEC).json()["id"]

    first: list[Event] = []
    for event in stream(service, experiment_id):  # dropped after the point at step 100
        first.append(event)
        if event.name == "point" and event.data["step"] >= 100:
            break
    # Cut off between the plain and the bn point of step 100: the last id seen is step 50's.
    assert first[-1].data == {**first[-1].data, "variant": "plain", "step": 100}
    last_id = first[-1].id
    assert last_id == "50"
    rest = list(stream(service, experiment_id, last_event_id=last_id))

    points = points_of(first) + points_of(rest)
    assert sorted(set(points)) == sorted((v, s) for s in STEPS for v in ("plain", "bn"))
    assert points_of(rest)[:2] == [("plain", 100), ("bn", 100)]
    assert rest[-1].name == "status" and rest[-1].data["status"] == "succeeded"


def test_an_unknown_experiment_is_a_404_over_http(service: Service) -> None:
    response = service.client.get("/experiments/99999/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


def test_metrics_count_streams_under_their_route_and_see_the_worker(service: Service) -> None:
    service.client.get("/experiments/99998/events")

    scraped = service.client.get("/metrics").text

    assert 'route="/experiments/{experiment_id}/events",status="404"' in scraped
    assert 'bnlab_workers{queue="cpu"} 1.0' in scraped
