"""The obvious alternative to bnlab's /predict: a bare FastAPI app that parses the pixels and
runs the same forward pass on the same checkpoint (BARE_CHECKPOINT), nothing else."""

import os
from pathlib import Path

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from bnlab.models.checkpoint import load_net

net, _ = load_net(Path(os.environ["BARE_CHECKPOINT"]))
app = FastAPI()


class Body(BaseModel):
    pixels: list[float]


@app.post("/predict")
async def predict(body: Body) -> dict:
    with torch.no_grad():
        probabilities = net(torch.tensor(body.pixels).view(1, 28, 28), "population")[0].softmax(1)
    return {"prediction": int(probabilities.argmax()), "probabilities": probabilities[0].tolist()}
