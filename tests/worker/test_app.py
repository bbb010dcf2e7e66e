"""The Celery app is built where a worker starts, never at import: importing the worker's modules
creates no broker folder, the API imports nothing of the worker's, and the contract both share
(bnlab/jobs.py) does not import torch. Each import runs in a fresh interpreter."""

import os
import subprocess
import sys
from pathlib import Path

from bnlab.jobs import TRAIN
from bnlab.settings import Settings
from bnlab.worker.app import worker_app


def imported_after(statement: str, state_dir: Path) -> set[str]:
    """The modules a fresh interpreter holds after `statement`, with BNLAB_STATE_DIR set."""
    script = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    env = {**os.environ, "BNLAB_STATE_DIR": str(state_dir)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_importing_the_worker_builds_nothing(tmp_path: Path) -> None:
    imported_after("import bnlab.worker.app, bnlab.worker.job", tmp_path)
    assert not (tmp_path / "broker").exists()


def test_the_api_enqueues_without_the_worker_and_the_contract_without_torch(
    tmp_path: Path,
) -> None:
    api = imported_after("import bnlab.api.main", tmp_path)
    assert not [name for name in api if name.startswith("bnlab.worker")]
    assert "torch" not in imported_after("import bnlab.jobs", tmp_path)


def test_a_worker_runs_one_task(tmp_path: Path) -> None:
    app = worker_app(Settings(state_dir=tmp_path))
    assert [name for name in app.tasks if name.startswith("bnlab.")] == [TRAIN]
