"""The operator dashboard, served by the API under ``/dashboard/``: server-rendered pages (Jinja2)
refreshed in place by htmx (one vendored copy in ``static/``, no CDN), with its own login
(:mod:`api.dashboard.auth`) and actions (:mod:`api.dashboard.actions`).

- ``pages``: the GET pages; ``posts``: login, logout and the actions; ``queries``: what the pages
  read; ``filters``: the jobs filter in URLs and forms; ``rendering``: templates and live refresh.
- ``static/htmx.min.js`` is htmx 2.0.11 (npm ``htmx.org``, BSD Zero Clause licence), unmodified.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from api.dashboard import pages, posts
from api.dashboard.auth import PREFIX as PREFIX
from api.dashboard.rendering import HERE


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app`` (left out of the OpenAPI document: it is HTML, not the API)."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    router.include_router(pages.router)
    router.include_router(posts.router)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
