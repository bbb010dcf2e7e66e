"""The CLI against an API that wants a token (BNLAB_API_TOKEN): real uvicorn, real HTTP."""

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from bnlab.api.main import create_app
from bnlab.cli import app
from bnlab.store.db import make_engine
from bnlab.store.migrate import upgrade
from tests.api.conftest import make_settings

TOKEN = "a-long-enough-token-for-the-test-0123456789"


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API alone (no worker needed to list experiments), with a token, on a free port."""
    monkeypatch.chdir(tmp_path)  # kombu's filesystem transport writes ./control
    database_url = f"sqlite:///{tmp_path / 'bnlab.db'}"
    upgrade(database_url)
    settings = make_settings(tmp_path, database_url, api_token=TOKEN)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        make_engine(database_url).dispose()


def test_without_the_token_one_line_says_to_set_it(url: str) -> None:
    result = CliRunner().invoke(
        app, ["experiment", "list", "--url", url], env={"BNLAB_API_TOKEN": None}
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BNLAB_API_TOKEN" in lines[0], lines


def test_bnlab_api_token_is_sent_as_a_bearer_token(url: str) -> None:
    result = CliRunner().invoke(
        app, ["experiment", "list", "--json", "--url", url], env={"BNLAB_API_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert '"items": []' in result.stdout
