"""Bad input, by hand, beyond what test_predict.py and test_experiments.py already send: images
that are animated, 16-bit, truncated, corrupt or bombs; JSON nested deep or holding NaN; bodies of
the wrong type or over the limit; each spec field at its bounds; a checkpoint changed on disk.
Every one gets a 4xx that says what is wrong (or, for a 16-bit image, the right answer)."""

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bnlab.api.main import create_app
from bnlab.settings import Settings
from bnlab.store.tables import Experiment
from tests.api.conftest import add_checkpoints, add_experiment
from tests.api.test_predict import digit, encoded, pixels, predict


@pytest.fixture
def served(session: Session, tmp_path: Path) -> Experiment:
    experiment = add_experiment(session, status="succeeded")
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    return experiment


def upload(client: TestClient, experiment: Experiment, data: bytes) -> Any:
    return predict(client, experiment.id, files={"image": ("digit.png", data, "image/png")})


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(array: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB): gray (0) or RGB (2)."""
    height, width = array.shape[:2]
    rows = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def noise(side: int = 64) -> np.ndarray:
    return (np.random.default_rng(0).random((side, side)) * 255).astype(np.uint8)


# --- images --------------------------------------------------------------------------------


@pytest.mark.parametrize("color_type", [0, 2], ids=["gray", "rgb"])
def test_a_16_bit_png_is_read_as_the_same_digit(
    client: TestClient, served: Experiment, color_type: int
) -> None:
    wide = digit("7").astype(np.uint16) * 257  # the same picture, at 16 bits per sample
    array = wide if color_type == 0 else np.stack([wide] * 3, axis=-1)
    as_json = predict(client, served.id, json={"pixels": pixels("7")}).json()

    response = upload(client, served, png16(array, color_type))

    assert response.status_code == 200, response.text
    assert response.json()["probabilities"] == pytest.approx(as_json["probabilities"], abs=1e-6)


def test_an_animated_png_is_422(client: TestClient, served: Experiment) -> None:
    frames = [Image.fromarray(digit(kind)) for kind in ("1", "7", "0")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])

    response = upload(client, served, buffer.getvalue())

    assert response.status_code == 422
    assert "animated (3 frames)" in response.json()["detail"]


def test_an_animated_gif_is_422(client: TestClient, served: Experiment) -> None:
    frames = [Image.fromarray(digit(kind)) for kind in ("1", "7")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    response = upload(client, served, buffer.getvalue())
    assert response.status_code == 422
    assert "not a PNG or JPEG" in response.json()["detail"]


def _truncated_png() -> bytes:
    whole = encoded(noise())
    return whole[: len(whole) // 2]


def _truncated_jpeg() -> bytes:
    whole = encoded(noise(), "JPEG")
    return whole[: len(whole) // 2]


def _corrupt_pixel_data() -> bytes:
    damaged = bytearray(encoded(noise()))
    start = damaged.find(b"IDAT") + 20
    for index in range(start, start + 40):
        damaged[index] ^= 0x5A
    return bytes(damaged)


def _bad_header_checksum() -> bytes:
    damaged = bytearray(encoded(digit("7")))
    damaged[8 + 8 + 13 + 3] ^= 0xFF  # the last byte of IHDR's CRC
    return bytes(damaged)


def _text_bomb() -> bytes:
    """A digit with a 48 KB text chunk that inflates to 50 MB."""
    png = encoded(digit("7"))
    after_header = 8 + 25
    text = chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * 50_000_000, 9))
    return png[:after_header] + text + png[after_header:]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_truncated_png, "truncated"),
        (_truncated_jpeg, "truncated"),
        (_corrupt_pixel_data, "could not be decoded"),
        (_bad_header_checksum, "header is damaged"),
        (_text_bomb, "too large"),
    ],
    ids=["truncated-png", "truncated-jpeg", "corrupt-pixels", "bad-checksum", "text-bomb"],
)
def test_a_damaged_image_is_422(
    client: TestClient, served: Experiment, make: Any, says: str
) -> None:
    response = upload(client, served, make())
    assert response.status_code == 422
    assert says in response.json()["detail"]


def _jpeg_claiming(width: int, height: int) -> bytes:
    jpeg = bytearray(encoded(digit("7"), "JPEG"))
    frame = jpeg.find(b"\xff\xc0")  # start of frame: precision, then height and width
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


@pytest.mark.parametrize("side", [5000, 60000])
def test_a_jpeg_claiming_too_many_pixels_is_413(
    client: TestClient, served: Experiment, side: int
) -> None:
    response = upload(client, served, _jpeg_claiming(side, side))
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


# --- JSON ----------------------------------------------------------------------------------


def nested(depth: int, inner: str = "0.5") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [4, 500, 100_000])
def test_pixels_nested_too_deep_are_422(client: TestClient, served: Experiment, depth: int) -> None:
    body = '{"pixels": ' + nested(depth) + "}"
    response = predict(
        client, served.id, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize("depth", [3, 500, 100_000])
def test_a_spec_nested_too_deep_is_4xx_with_a_message(
    client: TestClient, session: Session, depth: int
) -> None:
    body = '{"hidden_layers": ' + nested(depth, "1") + "}"
    response = client.post(
        "/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert response.json()["detail"]
    # The 422 echoes a little of the input, never all of it.
    assert len(response.content) < 2_000
    assert count_experiments(session) == 0


def test_nan_in_a_batch_of_rows_is_422(client: TestClient, served: Experiment) -> None:
    rows = json.dumps({"pixels": [pixels("1"), pixels("7")]})
    body = rows.replace("0.0", "NaN", 1)
    response = predict(
        client, served.id, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "finite number" in response.json()["detail"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_in_a_spec_list_is_422(client: TestClient, session: Session, value: str) -> None:
    body = '{"hidden_layers": [100, ' + value + "]}"
    response = client.post(
        "/experiments", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "hidden_layers" in json.dumps(response.json()["detail"])
    assert count_experiments(session) == 0


# --- content types and sizes ---------------------------------------------------------------


def count_experiments(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Experiment)) or 0


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"],
)
def test_a_spec_that_is_not_json_is_415(
    client: TestClient, session: Session, content_type: str
) -> None:
    response = client.post(
        "/experiments", content=b'{"activation": "relu"}', headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.json()["detail"]
    assert count_experiments(session) == 0


def test_json_types_are_accepted_for_a_spec(client: TestClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = client.post(
            "/experiments", content=b'{"seed": 1}', headers={"content-type": content_type}
        )
        assert response.status_code == 202, response.text


@pytest.mark.parametrize("content_type", ["application/xml", "application/octet-stream"])
def test_predict_refuses_other_content_types_with_415(
    client: TestClient, served: Experiment, content_type: str
) -> None:
    response = predict(
        client, served.id, content=b"<pixels/>", headers={"content-type": content_type}
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]


@pytest.fixture
def small_limit(settings: Settings) -> Iterator[TestClient]:
    limited = Settings(**(settings.model_dump() | {"max_body_bytes": 1_000}))
    with TestClient(create_app(limited)) as client:
        yield client


def test_a_spec_over_the_body_limit_is_413(small_limit: TestClient, session: Session) -> None:
    padded = json.dumps({"seed": 1, "activation": "relu" + " " * 2_000})
    response = small_limit.post(
        "/experiments", content=padded, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "1,000 bytes" in response.json()["detail"]
    assert count_experiments(session) == 0


def test_a_spec_over_the_limit_without_a_length_is_413(
    small_limit: TestClient, session: Session
) -> None:
    def chunks() -> Iterator[bytes]:  # streamed: no Content-Length header is sent
        yield b'{"seed": 1, "activation": "relu'
        for _ in range(10):
            yield b" " * 200
        yield b'"}'

    response = small_limit.post(
        "/experiments", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert count_experiments(session) == 0


def test_predict_keeps_its_own_larger_limit(
    small_limit: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    body = json.dumps({"pixels": pixels("7")})  # ~4 KB: over 1,000 bytes, under the upload limit
    response = predict(
        small_limit, experiment.id, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text


# --- each field at its bounds --------------------------------------------------------------

AT_THE_BOUNDS = [
    {"learning_rate": 100},
    {"learning_rate": 1e-12},
    {"weight_std": 100},
    {"training_batches": 1, "batches_per_sample": 1},
    {"training_batches": 1_000_000},
    {"batch_size": 2},
    {"batch_size": 4096},
    {"hidden_layers": [1]},
    {"hidden_layers": [4096] * 10},
    {"conv_channels": [256, 256, 256]},
    {"seed": 0},
    {"seed": 2**31 - 1},
    {"validation_size": 100},
    {"validation_size": 30_000},
]


@pytest.mark.parametrize("spec", AT_THE_BOUNDS, ids=[repr(s) for s in AT_THE_BOUNDS])
def test_each_field_at_its_bound_is_accepted(client: TestClient, spec: dict[str, Any]) -> None:
    # test_experiments.py's BAD_SPECS checks one step past each bound is refused.
    response = client.post("/experiments", json=spec)
    assert response.status_code == 202, response.text
    assert {key: response.json()["spec"][key] for key in spec} == spec


# --- checkpoints ---------------------------------------------------------------------------


def test_a_checkpoint_changed_on_disk_is_not_downloaded(
    client: TestClient, session: Session, tmp_path: Path
) -> None:
    experiment = add_experiment(session, status="succeeded")
    paths = add_checkpoints(session, experiment, tmp_path / "checkpoints")
    assert client.get(f"/experiments/{experiment.id}/checkpoints/bn").status_code == 200
    tampered = bytearray(paths["bn"].read_bytes())
    tampered[-1] ^= 0xFF
    paths["bn"].write_bytes(bytes(tampered))

    response = client.get(f"/experiments/{experiment.id}/checkpoints/bn")

    assert response.status_code == 409
    assert "changed on disk" in response.json()["detail"]
    assert str(tmp_path) not in response.text
    assert client.get(f"/experiments/{experiment.id}/checkpoints/plain").status_code == 200


# --- found by test_schemathesis.py -----------------------------------------------------------


def test_a_recalibrated_checkpoint_can_be_recalibrated_again(
    settings: Settings, session: Session, tmp_path: Path, idx_data_dir: Path
) -> None:
    # Was a 500: the recalibrated checkpoint's metadata already named its source version.
    experiment = add_experiment(session, status="succeeded", validation_size=200)
    add_checkpoints(session, experiment, tmp_path / "checkpoints")
    app = create_app(Settings(**(settings.model_dump() | {"data_dir": idx_data_dir})))
    with TestClient(app) as client:
        first = client.post(f"/experiments/{experiment.id}/recalibrate")
        again = client.post(f"/experiments/{experiment.id}/recalibrate")  # from the latest
    assert first.status_code == again.status_code == 201, again.text
    assert (again.json()["from_version"], again.json()["version"]) == (2, 3)
