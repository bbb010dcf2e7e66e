# syntax=docker/dockerfile:1
# One image for every bnlab process: `bnlab migrate`, `bnlab api`, `bnlab worker --queue cpu|gpu`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies get a layer of their own: torch and torchvision (pinned in pyproject.toml) are
# gigabytes and change far less often than bnlab's code. An empty placeholder package lets pip
# install pyproject.toml's dependencies before the real sources are copied in.
COPY pyproject.toml README.md* ./
RUN mkdir bnlab && touch bnlab/__init__.py \
    && pip install ".[s3]" \
    && pip uninstall --yes bnlab \
    && rm -rf bnlab build ./*.egg-info

COPY bnlab ./bnlab
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# Run as a user of its own. /data (datasets) and /checkpoints exist in the image, owned by that
# user, so a named volume mounted there starts out with the same owner and is writable.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin bnlab \
    && mkdir -p /data /checkpoints \
    && chown bnlab:bnlab /data /checkpoints

ENV BNLAB_HOST=0.0.0.0 \
    BNLAB_PORT=8000 \
    BNLAB_DATA_DIR=/data \
    BNLAB_CHECKPOINT_DIR=/checkpoints

USER bnlab
WORKDIR /home/bnlab

EXPOSE 8000
ENTRYPOINT ["bnlab"]
CMD ["api"]
