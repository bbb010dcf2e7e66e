"""/predict: a trained net's answer for one image or a batch, with BN in the mode asked for.

The hot path (net cached, JSON pixels) is an `async def` that touches neither the database nor
the threadpool: cache lookup, pydantic parse, one forward pass, a plain JSONResponse. It is the
app's first route, not in an included router, and declares no `Depends` and no FastAPI
parameters: together those cost ~25% of a request against a bare app that parses pixels and
runs the net (measured in-process with the study's 784-100-100-100-10 net). The query is
validated by one pydantic model instead, and documented through `openapi_extra`.
"""

from time import perf_counter
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from bnlab.api.core.errors import describe
from bnlab.api.deps import app_settings, served_nets
from bnlab.api.experiments.schemas import Message, PixelsBody, PredictionOut, PredictQuery
from bnlab.api.predict.uploads import IMAGE_FIELD, read_images
from bnlab.models.inference import Prediction

# Bigger batches run in the threadpool, so one large request does not stall the event loop.
INLINE_BATCH = 64


def _query_parameters() -> list[dict[str, Any]]:
    schema = PredictQuery.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "description": field.pop("description", ""),
            "schema": field,
        }
        for name, field in schema["properties"].items()
    ]


_EXAMPLES = PixelsBody.model_json_schema()["examples"]
_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": PixelsBody.model_json_schema(),
            "examples": {
                "one image": {
                    "summary": "One image, 28 rows of 28, white on black",
                    "value": _EXAMPLES[0],
                },
                "batch": {
                    "summary": "A batch of two images: a list of predictions comes back",
                    "value": _EXAMPLES[1],
                },
            },
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    IMAGE_FIELD: {
                        "type": "string",
                        "format": "binary",
                        "description": "A PNG or JPEG of a digit, any size: made 28x28 grayscale, "
                        "and inverted if it is dark on light. Repeat the field for a batch.",
                    }
                },
                "required": [IMAGE_FIELD],
            },
            "encoding": {IMAGE_FIELD: {"contentType": "image/png, image/jpeg"}},
            "examples": {
                "one image": {
                    "summary": "A PNG upload (curl -F image=@digit.png)",
                    "value": {IMAGE_FIELD: "digit.png"},
                }
            },
        },
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "No experiment with that id, or no such version."},
    409: {"model": Message, "description": "Not succeeded, or its checkpoint cannot be served."},
    413: {"model": Message, "description": "Body or image too large."},
    415: {"model": Message, "description": "Neither JSON nor multipart."},
    422: {"model": Message, "description": "Bad query, not an image, or pixels out of shape."},
}


# `FastAPI.add_api_route` arguments: bnlab/api/main.py puts this route on the app itself.
ROUTE: dict[str, Any] = {
    "path": "/predict",
    "methods": ["POST"],
    "tags": ["predict"],
    "response_model": None,
    "openapi_extra": {"parameters": _query_parameters(), "requestBody": _REQUEST_BODY},
    "responses": {
        200: {
            "model": PredictionOut | list[PredictionOut],
            "description": "One prediction; a list of them when a batch was sent.",
        },
        **_ERRORS,
    },
}


async def predict(request: Request) -> JSONResponse:
    """Classify digits with a succeeded experiment's net, BN in the `mode` asked for."""
    start = perf_counter()
    try:
        query = PredictQuery.model_validate(request.query_params)
    except ValidationError as error:
        raise HTTPException(422, describe(error)) from None
    nets = served_nets(request)
    net = nets.get(query.experiment_id, query.variant, query.version)
    if net is None:
        net = await run_in_threadpool(nets.load, query.experiment_id, query.variant, query.version)
    images = await read_images(request, app_settings(request).max_upload_bytes)
    if len(images.pixels) <= INLINE_BATCH:
        prediction = net.predict(images.pixels, query.mode)
    else:
        prediction = await run_in_threadpool(net.predict, images.pixels, query.mode)
    answers = _answers(prediction, query.variant)
    response = JSONResponse(answers[0] if images.single else answers)
    request.app.state.metrics.observe_prediction(query.mode, perf_counter() - start)
    return response


def _answers(prediction: Prediction, variant: str) -> list[dict[str, Any]]:
    # Plain dicts into a JSONResponse: validating a response model per request would cost more
    # than the forward pass. tests/api checks these against PredictionOut.
    return [
        {
            "prediction": guess,
            "probabilities": probabilities,
            "mode": prediction.mode,
            "variant": variant,
            "mode_applies": prediction.mode_applies,
        }
        for guess, probabilities in zip(prediction.classes, prediction.probabilities, strict=True)
    ]
