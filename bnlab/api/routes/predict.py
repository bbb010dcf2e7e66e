"""/predict: a trained net's answer for one image or a batch, with BN in the mode asked for.

The hot path (net cached, JSON pixels) is an `async def` that touches neither the database nor
the threadpool: cache lookup, pydantic parse, one forward pass, a plain JSONResponse. Its route
is the app's first and takes no `Depends`: both cost measurable time per request (see deps.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from bnlab.api.deps import app_settings, served_nets
from bnlab.api.schemas import MAX_ID, Message, PixelsBody, PredictionOut, Variant
from bnlab.api.uploads import IMAGE_FIELD, read_images
from bnlab.models.inference import Mode, Prediction

router = APIRouter(tags=["predict"])

# Bigger batches run in the threadpool, so one large request does not stall the event loop.
INLINE_BATCH = 64

_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": PixelsBody.model_json_schema(),
            "examples": {
                "one image": {
                    "summary": "One image, 28 rows of 28, white on black",
                    "value": PixelsBody.model_json_schema()["examples"][0],
                },
                "batch": {
                    "summary": "A batch of two images: a list of predictions comes back",
                    "value": PixelsBody.model_json_schema()["examples"][1],
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
    404: {"model": Message, "description": "No experiment with that id."},
    409: {"model": Message, "description": "Not succeeded, or its checkpoint cannot be served."},
    413: {"model": Message, "description": "Body or image too large."},
    415: {"model": Message, "description": "Neither JSON nor multipart."},
    422: {"model": Message, "description": "Not an image, or pixels of the wrong shape/range."},
}


@router.post(
    "/predict",
    response_model=None,
    openapi_extra={"requestBody": _REQUEST_BODY},
    responses={
        200: {
            "model": PredictionOut | list[PredictionOut],
            "description": "One prediction; a list of them when a batch was sent.",
        },
        **_ERRORS,
    },
)
async def predict(
    request: Request,
    experiment_id: Annotated[int, Query(ge=1, le=MAX_ID)],
    variant: Variant = "bn",
    mode: Mode = "population",
) -> JSONResponse:
    """Classify digits with a succeeded experiment's net. `mode`: `population` (BN's running
    statistics, as served models should), `batch` (the statistics of the images sent: one image
    collapses to the same answer for every input), `fused` (BN folded into the weights)."""
    nets = served_nets(request)
    net = nets.get(experiment_id, variant)
    if net is None:
        net = await run_in_threadpool(nets.load, experiment_id, variant)
    images = await read_images(request, app_settings(request).max_upload_bytes)
    if len(images.pixels) <= INLINE_BATCH:
        prediction = net.predict(images.pixels, mode)
    else:
        prediction = await run_in_threadpool(net.predict, images.pixels, mode)
    answers = _answers(prediction, variant)
    return JSONResponse(answers[0] if images.single else answers)


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
