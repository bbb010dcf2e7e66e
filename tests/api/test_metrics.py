"""GET /metrics: Prometheus text with requests per route template, latencies, /predict latency and
checkpoint-cache hits, and experiments by status, queued jobs and steps/s read from SQL."""

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.orm import Session

from tests.api.conftest import add_checkpoints, add_experiment

BLANK = [0.0] * 784


def scrape(client: TestClient) -> dict[str, list[Sample]]:
    """The samples of a scrape, by metric family name."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(response.text)
    return {family.name: family.samples for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`; None if there is none."""
    for sample in samples:
        if sample.name == name and labels.items() <= sample.labels.items():
            return sample.value
    return None


def test_requests_are_counted_and_timed_per_route_template_not_per_path(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, "succeeded")
    client.get(f"/experiments/{experiment.id}")
    client.get(f"/experiments/{experiment.id}")
    client.get("/experiments/424242")
    client.get("/no/such/page")

    metrics = scrape(client)

    requests = metrics["bnlab_http_requests"]
    route = "/experiments/{experiment_id}"
    assert value(requests, "bnlab_http_requests_total", route=route, status="200") == 2
    assert value(requests, "bnlab_http_requests_total", route=route, status="404") == 1
    assert value(requests, "bnlab_http_requests_total", route="unmatched", status="404") == 1
    assert not any("424242" in str(sample.labels) for sample in requests)
    latency = metrics["bnlab_http_request_duration_seconds"]
    assert value(latency, "bnlab_http_request_duration_seconds_count", route=route) == 3


def test_experiments_by_status_queued_jobs_per_queue_and_steps_per_second(
    client: TestClient, session: Session
) -> None:
    add_experiment(session, "queued")
    add_experiment(session, "queued", device="gpu")
    add_experiment(session, "succeeded")
    running = add_experiment(session, "running")
    running.steps_per_second = 123.5
    add_experiment(session, "running")  # no sample point yet: no rate
    session.commit()

    metrics = scrape(client)

    assert value(metrics["bnlab_database_up"], "bnlab_database_up") == 1
    by_status = metrics["bnlab_experiments"]
    assert {s.labels["status"]: s.value for s in by_status} == {
        "queued": 2,
        "running": 2,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
    }
    queued = metrics["bnlab_queued_jobs"]
    assert {s.labels["queue"]: s.value for s in queued} == {"cpu": 1, "gpu": 1}
    speed = metrics["bnlab_training_steps_per_second"]
    assert [(s.labels, s.value) for s in speed] == [({"experiment_id": str(running.id)}, 123.5)]


def test_predict_latency_per_mode_and_checkpoint_cache_hits_and_misses(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, "succeeded")
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    for mode in ("population", "population", "batch"):
        response = client.post(
            "/predict",
            params={"experiment_id": experiment.id, "mode": mode},
            json={"pixels": BLANK},
        )
        assert response.status_code == 200

    metrics = scrape(client)

    lookups = metrics["bnlab_checkpoint_cache_lookups"]
    # The first request loads the bn net from its checkpoint; the next two find it in memory.
    assert value(lookups, "bnlab_checkpoint_cache_lookups_total", result="miss") == 1
    assert value(lookups, "bnlab_checkpoint_cache_lookups_total", result="hit") == 2
    assert value(metrics["bnlab_checkpoint_cache_nets"], "bnlab_checkpoint_cache_nets") == 1
    latency = metrics["bnlab_predict_duration_seconds"]
    assert value(latency, "bnlab_predict_duration_seconds_count", mode="population") == 2
    assert value(latency, "bnlab_predict_duration_seconds_count", mode="batch") == 1
    assert value(latency, "bnlab_predict_duration_seconds_count", mode="fused") == 0
    assert value(latency, "bnlab_predict_duration_seconds_sum", mode="batch") > 0  # type: ignore[operator]


def test_a_scrape_still_answers_when_the_database_is_down(unmigrated: TestClient) -> None:
    metrics = scrape(unmigrated)
    assert value(metrics["bnlab_database_up"], "bnlab_database_up") == 0
    assert "bnlab_experiments" not in metrics
    assert "bnlab_http_requests" in metrics
