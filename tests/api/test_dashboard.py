"""The dashboard's files as the API serves them: the page at /, its assets under /static/, all of
them in the package (nothing from the internet), and open even where the API wants a token."""

import re
from pathlib import Path

from fastapi.testclient import TestClient

from bnlab.api.core.dashboard import STATIC_DIR
from bnlab.api.main import create_app
from bnlab.settings import Settings
from tests.api.conftest import make_settings


def test_root_serves_the_page_and_its_assets(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert "/static/js/main.js" in assets and "/static/vendor/uplot/uPlot.iife.min.js" in assets
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
    assert client.get("/static/js/main.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/nothing-here.js").status_code == 404


def test_every_module_the_page_imports_is_served(client: TestClient) -> None:
    """ES module imports are relative paths in the scripts: each must resolve to a file."""
    for script in STATIC_DIR.rglob("*.js"):
        if "vendor" in script.parts:
            continue
        for imported in re.findall(r'from "(\.[^"]+)"', script.read_text()):
            target = (script.parent / imported).resolve().relative_to(STATIC_DIR)
            assert client.get(f"/static/{target.as_posix()}").status_code == 200, (
                f"{script.name} imports {imported}"
            )


def test_nothing_is_loaded_from_elsewhere() -> None:
    """No CDN: no file of the page names another host (the vendored library's own licence
    and source comments aside)."""
    for path in STATIC_DIR.rglob("*"):
        if path.is_file() and "vendor" not in path.parts:
            assert not re.search(r"(src|href|import|fetch)\W+https?://", path.read_text()), path


def test_the_page_is_open_where_the_api_wants_a_token(settings: Settings, tmp_path: Path) -> None:
    guarded = make_settings(tmp_path, settings.database_url, api_token="s3cret-token")
    with TestClient(create_app(guarded)) as client:
        assert client.get("/").status_code == 200
        assert client.get("/static/js/main.js").status_code == 200
        assert client.get("/experiments").status_code == 401
