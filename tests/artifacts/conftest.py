"""The store-level tests run on both kinds of location: a local folder and a bucket of moto's
real S3 server."""

from pathlib import Path

import pytest

from tests.objectstore import ObjectStore, object_store

__all__ = ["object_store"]  # a fixture, used by name


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A checkpoint dir as BNLAB_CHECKPOINT_DIR would name it: a folder, or a bucket's prefix."""
    if request.param == "local":
        return str(tmp_path / "checkpoints")
    store: ObjectStore = request.getfixturevalue("object_store")
    return f"s3://{store.new_bucket()}/checkpoints"
