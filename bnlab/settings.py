"""bnlab's settings: one class, read from `BNLAB_*` environment variables by API and worker alike.

The defaults are the embedded setup (`bnlab up`): everything lives under `state_dir`, an SQLite
file for the database and a folder for the broker, so nothing needs a server.
"""

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# RFC 6750's token characters: it travels in an HTTP header, as `Authorization: Bearer <token>`.
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Settings(BaseSettings):
    # A rejected value is not echoed in the error: it may be the API token or a password.
    model_config = SettingsConfigDict(
        env_prefix="BNLAB_", extra="ignore", hide_input_in_errors=True
    )

    state_dir: Path = Path(".bnlab")
    database_url: str = ""  # default: SQLite file in state_dir
    broker_url: str = ""  # default: kombu's filesystem transport in state_dir/broker
    data_dir: Path = Path("data")
    # A local folder or an fsspec URL such as s3://bucket/prefix (bnlab/artifacts.py); default:
    # state_dir/checkpoints
    checkpoint_dir: str = ""
    download: bool = True
    host: str = "127.0.0.1"
    port: int = 8000

    # BN as written out in bnlab/models/batchnorm.py, or torch's fused kernel (the same numbers
    # within 1e-5, tested; about 1.3x faster per BN step, so the default)
    bn_impl: Literal["bnlab", "torch"] = "torch"
    predict_cache_size: int = 16
    max_upload_bytes: int = 2_000_000
    # The largest body on every route but /predict: a spec or a sweep's grid is a few KB.
    max_body_bytes: int = 1_000_000
    # The largest bundle POST /experiments/import takes (its checkpoints are ~0.4 MB a net).
    max_bundle_bytes: int = Field(default=64_000_000, ge=1)
    # The study's demos (collapse, batch-size effect, recalibration) run torch in request
    # threads: at most this many at once per API process; one more is a 503 (bnlab/api/study).
    study_slots: int = Field(default=2, ge=1)
    # When set, every route but /health, the docs and the dashboard's files needs
    # `Authorization: Bearer <api_token>` (bnlab/api/core/auth.py). Unset, the API is open to
    # whoever reaches it: the embedded default binds 127.0.0.1 only.
    api_token: SecretStr | None = None
    worker_heartbeat_seconds: float = 2.0
    # Workers train at this niceness (set once at start, inherited by pool processes), so the
    # API, at normal priority, gets a core whenever it wants one; idle CPU still goes to training.
    worker_nice: int = Field(default=10, ge=0, le=19)
    # Sweeps (bnlab/sweeps.py): the most cells one sweep may have, and the most cells trained as
    # one batched model by one worker (a bigger group is split, so more workers share it).
    max_sweep_cells: int = Field(default=256, ge=1)
    max_stacked_cells: int = Field(default=16, ge=1)
    # Recovery (bnlab/store/leases.py, bnlab/worker/reaper.py). A running experiment whose job
    # has not heart-beaten for `lease_timeout_seconds` (default 3 heartbeats + 5 s) is queued
    # again; a queued one that an idle worker has not seen for `requeue_after_seconds` gets a
    # new message (the old one was lost).
    lease_timeout_seconds: float | None = Field(default=None, gt=0)
    requeue_after_seconds: float = Field(default=30.0, gt=0)
    # A job whose worker died (stopped heart-beating) this many times while running it fails
    # instead of being handed out again: it probably kills its worker (out of memory) every
    # time. A graceful hand-back (SIGTERM) does not count.
    max_worker_losses: int = Field(default=3, ge=1)
    # How long a worker retries a write while the database is unreachable.
    database_retry_seconds: float = Field(default=60.0, ge=0)
    # Redis: a job not acknowledged after this long is delivered again (the lease keeps the
    # copy from running twice).
    broker_visibility_timeout: float = Field(default=3600.0, gt=0)
    # `json`: one JSON object per line (time, level, logger, message, experiment_id), API and worker
    log_format: Literal["text", "json"] = "text"

    @field_validator("api_token")
    @classmethod
    def _token_fits_a_header(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not TOKEN_CHARACTERS.fullmatch(token.get_secret_value()):
            raise ValueError(
                "BNLAB_API_TOKEN must be letters, digits and -._~+/ (e.g. `openssl rand -hex 32`); "
                "to run without a token, unset it"
            )
        return token

    @field_validator("checkpoint_dir", mode="before")
    @classmethod
    def _path_as_location(cls, location: object) -> object:
        """A `Path` given in code is the local folder it names, as before URLs were taken."""
        return os.fspath(location) if isinstance(location, os.PathLike) else location

    @model_validator(mode="after")
    def _embedded_defaults(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.state_dir / 'bnlab.db').absolute()}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.checkpoint_dir:
            self.checkpoint_dir = str(self.state_dir / "checkpoints")
        return self

    @property
    def lease_timeout(self) -> float:
        """Seconds without a heartbeat after which a running job's worker is taken for dead;
        the same 3 heartbeats + 5 s after which /health stops counting a worker."""
        if self.lease_timeout_seconds is not None:
            return self.lease_timeout_seconds
        return 3 * self.worker_heartbeat_seconds + 5.0

    @property
    def broker_dir(self) -> Path:
        """Where kombu's filesystem transport keeps its messages (embedded broker only)."""
        return (self.state_dir / "broker").absolute()


@lru_cache
def get_settings() -> Settings:
    return Settings()
