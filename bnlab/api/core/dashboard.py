"""The web dashboard: a static single-page app (bnlab/api/static) at / and /static/*.

The page only calls the public API from the browser, so it needs no server logic of its own and
no token to load; its API calls carry the token the user gives it. Everything it loads is in the
package (uPlot is vendored): it works with no internet.
"""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def add_dashboard(app: FastAPI) -> None:
    app.add_api_route("/", index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


async def index() -> FileResponse:
    # Revalidated on every load, so a new release's page never pairs with old cached scripts.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
