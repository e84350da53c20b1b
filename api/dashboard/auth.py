"""Who is looking at the dashboard: its login, its session cookie and its CSRF check.

- Without ``JOBRUNNER_API_TOKEN`` the dashboard is open, like the API: everyone is an operator.
- With it, the login form takes that token (an operator, who may act) or
  ``JOBRUNNER_DASHBOARD_READONLY_TOKEN`` (read-only: no action buttons, 403 on action POSTs).
- The session is a cookie signed with a key derived from the token (itsdangerous), HttpOnly,
  SameSite=Strict, scoped to ``/dashboard``: changing the token ends every session.
- Every POST carries the session's CSRF token in a form field (``csrf``); a POST without it, or with
  another, gets 403. A browser starts with an anonymous session (a CSRF token, no role), so even the
  login form is protected.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import SecretStr

from api.deps import token_matches
from jobs.config import Settings

PREFIX = "/dashboard"
COOKIE = "jobrunner_dashboard"
#: How long a session lasts without a new login.
SESSION_SECONDS = 12 * 3600


class Role(enum.StrEnum):
    """What a session may do."""

    #: May look and act.
    OPERATOR = "operator"
    #: May look only.
    READONLY = "readonly"


@dataclasses.dataclass(frozen=True)
class Viewer:
    """The session of a request: its role (None: not logged in), the name given at login, its CSRF token."""

    role: Role | None
    name: str
    csrf: str

    @property
    def can_act(self) -> bool:
        """Whether this session may take actions."""
        return self.role is Role.OPERATOR

    def actor(self, request: Request) -> str:
        """Who, for the operator log: the name given at login (else the role) and the client's address."""
        host = request.client.host if request.client else "?"
        return f"{self.name or self.role or 'anonymous'}@{host}"[:200]


class LoginRequired(HTTPException):
    """Not logged in: a redirect to the login page (htmx follows ``HX-Redirect``)."""

    def __init__(self, request: Request) -> None:
        target = f"{PREFIX}/login?next={request.url.path}"
        super().__init__(303, "log in first", headers={"Location": target, "HX-Redirect": target})


def login_required(settings: Settings) -> bool:
    """Whether the dashboard asks for a token (it does when the API does)."""
    return settings.api_token is not None


def role_for(settings: Settings, token: str) -> Role | None:
    """The role ``token`` opens (None: none)."""
    if settings.api_token is not None and token_matches(token, settings.api_token):
        return Role.OPERATOR
    readonly = settings.dashboard_readonly_token
    if settings.api_token is not None and readonly is not None and token_matches(token, readonly):
        return Role.READONLY
    return None


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    # The signing key comes from the tokens: no extra secret to configure, and a new token ends the
    # sessions signed with the old one. Open (no token), the cookie only carries the CSRF token.
    material = "|".join(_secret(token) for token in (settings.api_token, settings.dashboard_readonly_token))
    key = hashlib.sha256(f"jobrunner-dashboard|{material}".encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt="dashboard-session")


def _secret(token: SecretStr | None) -> str:
    return token.get_secret_value() if token is not None else ""


def read_viewer(request: Request) -> tuple[Viewer, bool]:
    """The request's session, and whether it is new (its cookie must be set on the response)."""
    settings: Settings = request.app.state.settings
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer(settings).loads(raw, max_age=SESSION_SECONDS)
            role = Role(data["role"]) if data.get("role") else None
            if not login_required(settings):
                role = Role.OPERATOR
            return Viewer(role=role, name=str(data.get("name", "")), csrf=str(data["csrf"])), False
        except (BadSignature, KeyError, ValueError, TypeError):
            pass
    role = None if login_required(settings) else Role.OPERATOR
    return Viewer(role=role, name="", csrf=new_csrf()), True


def new_csrf() -> str:
    """A fresh CSRF token."""
    return secrets.token_urlsafe(24)


def write_viewer(request: Request, response: Response, viewer: Viewer) -> None:
    """Set ``viewer`` as the session cookie on ``response``."""
    settings: Settings = request.app.state.settings
    data = {"role": viewer.role.value if viewer.role else None, "name": viewer.name, "csrf": viewer.csrf}
    response.set_cookie(
        COOKIE,
        _serializer(settings).dumps(data),
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def forget_viewer(response: Response) -> None:
    """End the session (the browser drops the cookie)."""
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")


def any_viewer(request: Request) -> Viewer:
    """The session as it is (the login page's dependency); a new one is set by the page."""
    viewer, is_new = read_viewer(request)
    request.state.new_viewer = viewer if is_new else None
    return viewer


def viewer_of(request: Request) -> Viewer:
    """A logged-in session (a page's dependency); otherwise a redirect to the login page."""
    viewer = any_viewer(request)
    if viewer.role is None:
        raise LoginRequired(request)
    return viewer


def poster(request: Request, csrf: str) -> Viewer:
    """The session of a POST whose form carried ``csrf``, the session's CSRF token; otherwise 403."""
    viewer, is_new = read_viewer(request)
    if is_new or not csrf or not secrets.compare_digest(csrf.encode(), viewer.csrf.encode()):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    return viewer


def operator(request: Request, csrf: str) -> Viewer:
    """The session of an action's POST: an operator's, with its CSRF token; read-only or none: 403."""
    viewer = poster(request, csrf)
    if viewer.role is None:
        raise HTTPException(403, "log in first")
    if not viewer.can_act:
        raise HTTPException(403, "this session is read-only")
    return viewer


ViewerDep = Annotated[Viewer, Depends(viewer_of)]
