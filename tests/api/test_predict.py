"""/predict: served answers match the checkpointed nets, for JSON pixels and image uploads, in
every BN mode; and every way a request can be wrong gets a 4xx that says why."""

import asyncio
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event
from sqlalchemy.orm import Session

from bnlab.api.experiments.schemas import PredictionOut
from bnlab.api.main import create_app
from bnlab.api.predict.images import decode_digit
from bnlab.api.predict.serving import LoadedNet, ServedNets
from bnlab.models.checkpoint import load_net, save_net, sha256_of
from bnlab.models.inference import ServedNet
from bnlab.models.network import NetStack, initial_weights
from bnlab.settings import Settings
from bnlab.store import queries
from bnlab.store.db import make_engine
from bnlab.store.tables import Experiment
from tests.api.conftest import ARCH, WEIGHT_STD, add_checkpoints, add_experiment, tamper


def digit(kind: str) -> np.ndarray:
    """A crude handwritten-like digit, uint8 28x28, white on black as in MNIST."""
    image = np.zeros((28, 28), dtype=np.uint8)
    if kind == "1":
        image[4:24, 13:16] = 255
    elif kind == "0":
        rows, columns = np.ogrid[:28, :28]
        radius = np.hypot(rows - 14, (columns - 14) * 1.4)
        image[(radius > 6) & (radius < 10)] = 230
    elif kind == "7":
        image[5:8, 7:22] = 255
        for row in range(8, 24):
            image[row, 20 - (row - 8) // 2 : 23 - (row - 8) // 2] = 200
    return image


def pixels(kind: str) -> list[list[float]]:
    return (digit(kind).astype(np.float32) / 255).tolist()


def flat_pixels(kind: str) -> list[float]:
    return (digit(kind).astype(np.float32) / 255).ravel().tolist()


def encoded(array: np.ndarray, fmt: str = "PNG", size: int | None = None, **options: Any) -> bytes:
    image = Image.fromarray(array)
    if size is not None:
        image = image.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def served(session: Session, tmp_path: Path) -> Experiment:
    """A succeeded experiment with both nets checkpointed."""
    experiment = add_experiment(session, status="succeeded")
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    return experiment


def expected(
    tmp_path: Path, experiment: Experiment, variant: str, images: list[str], mode: str
) -> Any:
    """What the checkpointed net says, computed without the API."""
    stack, _ = load_net(
        tmp_path / "checkpoints" / f"experiment-{experiment.id}" / f"{variant}.safetensors"
    )
    batch = torch.tensor(np.stack([digit(kind) for kind in images]).astype(np.float32) / 255)
    return ServedNet(stack).predict(batch, mode)  # type: ignore[arg-type]


def predict(client: TestClient, experiment_id: int, **params: Any) -> Any:
    """POST /predict; `json`, `files`, `content` and `headers` go to the request."""
    body = {
        key: params.pop(key) for key in ("json", "files", "content", "headers") if key in params
    }
    return client.post("/predict", params={"experiment_id": experiment_id, **params}, **body)


# --- answers -------------------------------------------------------------------------------


def test_one_image_as_json_gets_the_nets_answer(
    client: TestClient, served: Experiment, tmp_path: Path
) -> None:
    response = predict(client, served.id, json={"pixels": pixels("7")})

    assert response.status_code == 200, response.text
    body = PredictionOut.model_validate(response.json())
    truth = expected(tmp_path, served, "bn", ["7"], "population")
    assert body.prediction == truth.classes[0]
    assert body.probabilities == pytest.approx(truth.probabilities[0], abs=1e-6)
    assert sum(body.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert (body.mode, body.variant, body.mode_applies) == ("population", "bn", True)


def test_784_numbers_and_28_rows_are_the_same_image(client: TestClient, served: Experiment) -> None:
    rows = predict(client, served.id, json={"pixels": pixels("0")}).json()
    flat = predict(client, served.id, json={"pixels": flat_pixels("0")}).json()
    assert rows == flat


def test_a_batch_gets_a_list_of_answers_in_order(
    client: TestClient, served: Experiment, tmp_path: Path
) -> None:
    kinds = ["1", "0", "7"]
    response = predict(client, served.id, json={"pixels": [pixels(kind) for kind in kinds]})

    answers = [PredictionOut.model_validate(item) for item in response.json()]
    truth = expected(tmp_path, served, "bn", kinds, "population")
    assert [a.prediction for a in answers] == truth.classes
    for answer, probabilities in zip(answers, truth.probabilities, strict=True):
        assert answer.probabilities == pytest.approx(probabilities, abs=1e-6)
    # Population statistics: each image's answer is its own, batch or not.
    alone = predict(client, served.id, json={"pixels": pixels("0")}).json()
    assert answers[1].probabilities == pytest.approx(alone["probabilities"], abs=1e-6)
    flat_batch = predict(client, served.id, json={"pixels": [flat_pixels(k) for k in kinds]})
    assert flat_batch.json() == response.json()
    assert len(predict(client, served.id, json={"pixels": [pixels("1")]}).json()) == 1


def test_batch_mode_on_single_images_gives_every_image_the_same_answer(
    client: TestClient, served: Experiment
) -> None:
    answers = [
        predict(client, served.id, json={"pixels": pixels(kind)}, mode="batch").json()
        for kind in ("1", "0", "7")
    ]
    assert all(answer["mode_applies"] for answer in answers)
    assert answers[0]["probabilities"] == answers[1]["probabilities"] == answers[2]["probabilities"]
    # ...while with population statistics they differ.
    population = [
        predict(client, served.id, json={"pixels": pixels(kind)}).json()["probabilities"]
        for kind in ("1", "0", "7")
    ]
    assert population[0] != population[1] != population[2]


def test_the_plain_net_has_no_bn_so_the_mode_does_not_apply(
    client: TestClient, served: Experiment, tmp_path: Path
) -> None:
    answers = {
        mode: predict(
            client, served.id, json={"pixels": pixels("7")}, variant="plain", mode=mode
        ).json()
        for mode in ("population", "batch", "fused")
    }
    assert all(a["mode_applies"] is False and a["variant"] == "plain" for a in answers.values())
    assert answers["batch"]["probabilities"] == answers["population"]["probabilities"]
    truth = expected(tmp_path, served, "plain", ["7"], "population")
    assert answers["population"]["probabilities"] == pytest.approx(truth.probabilities[0], abs=1e-6)


def test_fused_bn_answers_as_population_statistics_do(
    client: TestClient, served: Experiment
) -> None:
    population = predict(client, served.id, json={"pixels": pixels("0")}).json()
    fused = predict(client, served.id, json={"pixels": pixels("0")}, mode="fused").json()
    assert fused["mode"] == "fused"
    assert fused["probabilities"] == pytest.approx(population["probabilities"], abs=1e-5)


def test_a_png_upload_is_read_as_the_same_pixels(client: TestClient, served: Experiment) -> None:
    as_json = predict(client, served.id, json={"pixels": pixels("7")}).json()
    response = predict(
        client, served.id, files={"image": ("seven.png", encoded(digit("7")), "image/png")}
    )
    assert response.status_code == 200, response.text
    assert response.json()["probabilities"] == pytest.approx(as_json["probabilities"], abs=1e-6)


def test_a_dark_digit_on_white_paper_is_inverted_to_mnists_white_on_black(
    client: TestClient, served: Experiment
) -> None:
    as_json = predict(client, served.id, json={"pixels": pixels("7")}).json()
    paper = 255 - digit("7")
    response = predict(
        client, served.id, files={"image": ("seven.png", encoded(paper), "image/png")}
    )
    assert response.json()["probabilities"] == pytest.approx(as_json["probabilities"], abs=1e-6)


@pytest.mark.parametrize("paper", [False, True], ids=["white-on-black", "black-on-white"])
def test_jpeg_uploads_of_any_size_are_read(
    client: TestClient, served: Experiment, paper: bool
) -> None:
    array = 255 - digit("0") if paper else digit("0")
    photo = encoded(np.stack([array] * 3, axis=-1), "JPEG", size=280, quality=95)
    response = predict(client, served.id, files={"image": ("zero.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    as_json = predict(client, served.id, json={"pixels": pixels("0")}).json()
    # Lossy and resampled: close to the original digit, not equal to it.
    assert response.json()["probabilities"] == pytest.approx(as_json["probabilities"], abs=0.05)


def test_the_upload_is_made_into_the_digit_the_nets_expect() -> None:
    for array in (digit("7"), 255 - digit("7")):
        for data in (encoded(array, size=112), encoded(array, "JPEG", size=112, quality=95)):
            decoded = decode_digit(data).numpy().astype(np.int16)
            assert decoded.shape == (28, 28)
            assert np.abs(decoded - digit("7")).mean() < 12  # white on black, whatever was sent
    # Black ink on a transparent canvas: shown on white, then inverted like paper.
    ink = np.zeros((28, 28, 4), dtype=np.uint8)
    ink[..., 3] = digit("7")
    decoded = decode_digit(encoded(ink)).numpy().astype(np.int16)
    assert np.abs(decoded - digit("7")).mean() < 2


def test_several_image_fields_are_a_batch(client: TestClient, served: Experiment) -> None:
    files = [("image", (f"{k}.png", encoded(digit(k)), "image/png")) for k in ("1", "0")]
    response = client.post("/predict", params={"experiment_id": served.id}, files=files)
    assert [len(item["probabilities"]) for item in response.json()] == [10, 10]


def test_a_cached_net_is_served_without_touching_the_database(
    client: TestClient, served: Experiment, settings: Settings
) -> None:
    predict(client, served.id, json={"pixels": pixels("1")})  # loads and caches
    statements: list[str] = []
    engine = make_engine(settings.database_url)

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        response = predict(client, served.id, json={"pixels": pixels("0")})
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200
    assert statements == []


def test_the_cache_keeps_the_most_recently_used_nets() -> None:
    loads: list[tuple[int, str]] = []

    def load(experiment_id: int, variant: str, version: int | None) -> LoadedNet:
        loads.append((experiment_id, variant))
        return LoadedNet(net=object(), checkpoint_version=1)  # type: ignore[arg-type]

    nets = ServedNets(2, load)
    for key in [(1, "bn"), (1, "plain"), (1, "bn"), (2, "bn"), (1, "bn"), (1, "plain")]:
        assert (nets.get(*key) or nets.load(*key)) is not None
    # (1, plain) was least recently used when (2, bn) came; then (2, bn) when (1, plain) came.
    assert loads == [(1, "bn"), (1, "plain"), (2, "bn"), (1, "plain")]
    assert len(nets) == 2


def test_the_apps_cache_holds_at_most_its_size(settings: Settings, served: Experiment) -> None:
    app = create_app(Settings(**(settings.model_dump() | {"predict_cache_size": 1})))
    with TestClient(app) as client:
        for variant in ("bn", "plain", "bn"):
            response = predict(client, served.id, json={"pixels": pixels("1")}, variant=variant)
            assert response.json()["variant"] == variant
            assert len(app.state.served_nets) == 1


# --- refusals ------------------------------------------------------------------------------


def test_unknown_experiment_is_404(client: TestClient) -> None:
    response = predict(client, 4242, json={"pixels": pixels("1")})
    assert response.status_code == 404
    assert response.json() == {"detail": "no experiment with id 4242"}


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_an_unfinished_experiment_is_409_naming_its_status(
    client: TestClient, session: Session, status: str
) -> None:
    experiment = add_experiment(session, status=status)
    response = predict(client, experiment.id, json={"pixels": pixels("1")})
    assert response.status_code == 409
    assert f"experiment {experiment.id} is {status}" in response.json()["detail"]


def test_a_succeeded_experiment_without_checkpoint_is_409(
    client: TestClient, session: Session
) -> None:
    experiment = add_experiment(session, status="succeeded")
    response = predict(client, experiment.id, json={"pixels": pixels("1")})
    assert response.status_code == 409
    assert "no bn checkpoint" in response.json()["detail"]


def test_a_diverged_net_is_409_saying_so_and_the_others_answer(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    """A net whose loss turned non-finite is kept as it was (weights NaN): every answer would be
    NaN, which JSON cannot carry, so it is a 409 that says what happened, not a 500."""
    experiment = add_experiment(session, status="succeeded")
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")
    stack = NetStack(ARCH, "plain", [initial_weights(ARCH, WEIGHT_STD, seed=3)])
    diverged = {name: torch.full_like(t, float("nan")) for name, t in stack.net_state(0).items()}
    sha256, size = save_net(paths["plain"], diverged, variant="plain", arch=ARCH, step=200)
    run = queries.run_of(experiment, "plain")
    run.diverged_at_step = 7
    run.checkpoints[0].sha256, run.checkpoints[0].size_bytes = sha256, size
    session.commit()
    response = predict(client, experiment.id, json={"pixels": pixels("1")}, variant="plain")
    assert response.status_code == 409
    assert "plain net of experiment" in response.json()["detail"]
    assert "diverged at step 7" in response.json()["detail"]
    assert predict(client, experiment.id, json={"pixels": pixels("1")}).status_code == 200


@pytest.mark.parametrize(
    "params",
    [{"variant": "resnet"}, {"mode": "train"}, {"experiment_id": "x"}, {"experiment_id": 0}],
)
def test_unknown_variant_mode_or_id_is_422(
    client: TestClient, served: Experiment, params: dict[str, Any]
) -> None:
    response = client.post(
        "/predict", params={"experiment_id": served.id} | params, json={"pixels": pixels("1")}
    )
    assert response.status_code == 422
    assert next(iter(params)) in json.dumps(response.json()["detail"])


def test_a_misspelt_query_parameter_is_422_not_ignored(
    client: TestClient, served: Experiment
) -> None:
    response = client.post(
        "/predict",
        params={"experiment_id": served.id, "modes": "batch"},
        json={"pixels": pixels("1")},
    )
    assert response.status_code == 422
    assert response.json()["detail"] == "modes: Extra inputs are not permitted"


def test_json_spelt_unusually_is_still_read(client: TestClient, served: Experiment) -> None:
    as_usual = predict(client, served.id, json={"pixels": pixels("7")}).json()
    rows = ",\n".join("  [ " + ", ".join(str(v) for v in row) + " ]" for row in pixels("7"))
    spaced = '{ "pixels" :\n [\n' + rows + "\n ] }"
    escaped = json.dumps({"pixels": pixels("7")}).replace('"pixels"', '"pi\\u0078els"')
    for body in (spaced, escaped):
        response = predict(
            client, served.id, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"] == pytest.approx(as_usual["probabilities"])


def test_a_missing_experiment_id_is_422(client: TestClient) -> None:
    response = client.post("/predict", json={"pixels": pixels("1")})
    assert response.status_code == 422
    assert "experiment_id" in json.dumps(response.json()["detail"])


BAD_PIXELS = [
    ({"pixels": [0.5] * 783}, "shape [783]"),
    ({"pixels": [[0.5] * 27] * 28}, "shape [28, 27]"),
    ({"pixels": [[[0.5] * 28] * 28] * 2 + [[[0.5] * 28] * 27]}, "differ in length"),
    ({"pixels": [0.5] * 783 + [1.5]}, "pixels[783]: Input should be less than or equal to 1"),
    (
        {"pixels": [[0.5] * 28] * 27 + [[0.5] * 27 + [-0.1]]},
        "pixels[27][27]: Input should be greater",
    ),
    ({"pixels": []}, "empty"),
    ({"pixels": "0.5"}, "784 numbers, 28 rows of 28"),
    ({"pixels": [[[[0.5]]]]}, "784 numbers, 28 rows of 28"),
    ({"pixels": [0.5] * 784, "label": 3}, "label: Extra inputs are not permitted"),
    ({"image": [0.5] * 784}, "pixels: Field required"),
    ([0.5] * 784, "object"),
]


@pytest.mark.parametrize(("body", "says"), BAD_PIXELS, ids=[says for _, says in BAD_PIXELS])
def test_bad_pixels_are_422_with_a_message(
    client: TestClient, served: Experiment, body: Any, says: str
) -> None:
    response = predict(client, served.id, json=body)
    assert response.status_code == 422
    assert says in response.json()["detail"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ('{"pixels": [' + "0.5, " * 783 + "NaN]}", "pixels[783]: Input should be a finite number"),
        (
            '{"pixels": [' + "0.5, " * 783 + "1e999]}",
            "pixels[783]: Input should be a finite number",
        ),
        ('{"pixels": [0.5, ', "Invalid JSON"),
        ("", "body is empty"),
    ],
)
def test_non_finite_and_malformed_json_pixels_are_422(
    client: TestClient, served: Experiment, raw: str, says: str
) -> None:
    response = predict(client, served.id, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert says in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", None])
def test_a_body_neither_json_nor_multipart_is_415(
    client: TestClient, served: Experiment, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = predict(client, served.id, content=encoded(digit("1")), headers=headers)
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"]


def test_json_with_a_charset_is_json(client: TestClient, served: Experiment) -> None:
    body = json.dumps({"pixels": pixels("1")})
    headers = {"content-type": "application/json; charset=utf-8"}
    assert predict(client, served.id, content=body, headers=headers).status_code == 200


def test_a_body_over_the_limit_is_413_by_its_declared_length(
    client: TestClient, served: Experiment, settings: Settings
) -> None:
    big = b"0" * (settings.max_upload_bytes + 1)
    response = predict(client, served.id, files={"image": ("big.png", big, "image/png")})
    assert response.status_code == 413
    assert f"{settings.max_upload_bytes:,} bytes" in response.json()["detail"]


def test_a_declared_length_over_the_limit_is_refused_before_reading_the_body(
    settings: Settings, served: Experiment
) -> None:
    app = create_app(settings)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(settings.max_upload_bytes + 1).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": f"experiment_id={served.id}".encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413


def test_a_body_over_the_limit_is_413_even_without_a_length(
    client: TestClient, served: Experiment, settings: Settings
) -> None:
    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length header is sent
        yield b'{"pixels": ['
        for _ in range(settings.max_upload_bytes // 10_000 + 1):
            yield b"0.5," * 2_500
        yield b"0.5]}"

    response = predict(
        client, served.id, content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"this is not an image", "not a PNG or JPEG"),
        (encoded(digit("1"), "GIF"), "not a PNG or JPEG"),
        (encoded(digit("1"))[:60], "could not be decoded"),  # truncated
    ],
    ids=["empty", "text", "gif", "truncated"],
)
def test_an_upload_that_is_not_a_usable_image_is_422(
    client: TestClient, served: Experiment, data: bytes, says: str
) -> None:
    response = predict(client, served.id, files={"image": ("digit.png", data, "image/png")})
    assert response.status_code == 422
    assert says in response.json()["detail"]


def test_a_form_without_an_image_file_is_422(client: TestClient, served: Experiment) -> None:
    no_field = client.post(
        "/predict",
        params={"experiment_id": served.id},
        files={"photo": ("d.png", encoded(digit("1")))},
    )
    assert no_field.status_code == 422
    assert "form field 'image'" in no_field.json()["detail"]
    as_text = client.post(
        "/predict",
        params={"experiment_id": served.id},
        data={"image": "1"},
        files={"x": ("x", b"x")},
    )
    assert as_text.status_code == 422
    assert "file upload" in as_text.json()["detail"]


def test_a_multipart_body_without_boundary_is_422(client: TestClient, served: Experiment) -> None:
    response = predict(
        client, served.id, content=b"--x\r\n", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 422
    assert "multipart" in response.json()["detail"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "bomb",
    [
        pytest.param(lambda: encoded(np.zeros((5000, 5000), dtype=np.uint8)), id="5000x5000-zeros"),
        pytest.param(lambda: png_header_only(100_000, 100_000), id="claims-10-gigapixels"),
    ],
)
def test_a_decompression_bomb_is_refused_before_decoding(
    client: TestClient, served: Experiment, settings: Settings, bomb: Any
) -> None:
    data = bomb()
    assert len(data) < settings.max_upload_bytes  # small on the wire, huge when decoded
    response = predict(client, served.id, files={"image": ("bomb.png", data, "image/png")})
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


def test_a_checkpoint_changed_on_disk_is_not_served(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    tamper(add_checkpoints(session, experiment, tmp_path / "checkpoints")["bn"])

    for _ in range(2):  # refused, and not cached as if it were fine
        response = predict(client, experiment.id, json={"pixels": pixels("1")})
        assert response.status_code == 409
        assert "changed on disk" in response.json()["detail"]
    assert (
        predict(client, experiment.id, json={"pixels": pixels("1")}, variant="plain").status_code
        == 200
    )


def test_a_checkpoint_missing_or_unreadable_is_409(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")
    paths["bn"].unlink()
    missing = predict(client, experiment.id, json={"pixels": pixels("1")})
    assert missing.status_code == 409
    assert "missing on disk" in missing.json()["detail"]

    # A file that hashes as recorded but is no checkpoint: refused by the loader.
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    run = queries.run_of(experiment, "plain")
    queries.add_checkpoint(session, run, 300, str(garbage), sha256_of(garbage), 22)
    session.commit()
    unreadable = predict(client, experiment.id, json={"pixels": pixels("1")}, variant="plain")
    assert unreadable.status_code == 409
    assert "does not load" in unreadable.json()["detail"]
    assert str(tmp_path) not in unreadable.json()["detail"]


def test_a_checkpoint_of_the_other_variant_is_not_served(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")
    # A newer "bn" checkpoint that is really the plain net.
    run = queries.run_of(experiment, "bn")
    queries.add_checkpoint(session, run, 300, str(paths["plain"]), sha256_of(paths["plain"]), 1)
    session.commit()
    response = predict(client, experiment.id, json={"pixels": pixels("1")})
    assert response.status_code == 409
    assert "holds a plain net" in response.json()["detail"]


# --- the variants beyond the pair ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["bn_after", "layer_norm", "group_norm"])
def test_mode_applies_only_where_the_answer_depends_on_the_batch(
    client: TestClient, session: Session, tmp_path: Path, variant: str
) -> None:
    """bn_after's BN needs the batch, as bn's does; LayerNorm and GroupNorm answer an image
    alone as they would among others, so their answers say `mode_applies: false`."""
    experiment = add_experiment(session, status="succeeded", variants=["plain", variant])
    stack = NetStack(ARCH, variant, [initial_weights(ARCH, WEIGHT_STD, seed=3)])  # type: ignore[arg-type]
    with torch.no_grad():  # off their start, so that one image's batch statistics show
        for parameter in stack.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    path = tmp_path / f"{variant}.safetensors"
    sha256, size = save_net(path, stack.net_state(0), variant=variant, arch=ARCH, step=200)
    queries.add_checkpoint(
        session, queries.run_of(experiment, variant), 200, str(path), sha256, size
    )  # type: ignore[arg-type]
    session.commit()

    answers = {
        mode: predict(
            client, experiment.id, json={"pixels": pixels("7")}, variant=variant, mode=mode
        )
        for mode in ("population", "batch", "fused")
    }
    assert all(a.status_code == 200 for a in answers.values()), answers
    bodies = {mode: PredictionOut.model_validate(a.json()) for mode, a in answers.items()}
    depends = variant == "bn_after"
    assert all(body.mode_applies is depends for body in bodies.values())
    assert all(body.variant == variant for body in bodies.values())
    population = bodies["population"].probabilities
    assert bodies["fused"].probabilities == pytest.approx(population, abs=1e-6)
    if not depends:
        assert bodies["batch"].probabilities == pytest.approx(population, abs=1e-5)
    else:
        assert bodies["batch"].probabilities != pytest.approx(population, abs=1e-3)
