"""Who may see and act: open without a token; with one, a login (operator or read-only), a signed
HttpOnly SameSite=Strict cookie, 403 on actions for read-only; the JSON API keeps its bearer token."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.dashboard.conftest import READONLY_TOKEN, TOKEN, csrf_of

JobMaker = Callable[..., list[uuid.UUID]]


def _log_in(client: TestClient, token: str, name: str = "") -> None:
    csrf = csrf_of(client.get("/dashboard/login").text)
    answer = client.post("/dashboard/login", data={"csrf": csrf, "token": token, "name": name}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def test_without_a_token_the_dashboard_is_open(client: TestClient) -> None:
    page = client.get("/dashboard/")
    assert page.status_code == 200 and "log out" not in page.text


def test_with_a_token_pages_redirect_to_the_login(guarded_client: TestClient) -> None:
    answer = guarded_client.get("/dashboard/jobs", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login?next=/dashboard/jobs"
    hx = guarded_client.get("/dashboard/", headers={"HX-Request": "true"}, follow_redirects=False)
    assert hx.headers["HX-Redirect"].startswith("/dashboard/login")


def test_login_sets_a_signed_strict_http_only_cookie_and_logout_ends_it(guarded_client: TestClient) -> None:
    csrf = csrf_of(guarded_client.get("/dashboard/login").text)
    wrong = guarded_client.post("/dashboard/login", data={"csrf": csrf, "token": "nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    answer = guarded_client.post(
        "/dashboard/login", data={"csrf": csrf, "token": TOKEN, "next": "/dashboard/jobs"}, follow_redirects=False
    )
    assert answer.headers["location"] == "/dashboard/jobs"
    cookie = answer.headers["set-cookie"]
    assert (
        "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/dashboard" in cookie
    )
    page = guarded_client.get("/dashboard/jobs")
    assert page.status_code == 200 and "log out" in page.text
    # A tampered cookie is no session.
    value = guarded_client.cookies.get("jobrunner_dashboard")
    assert value
    tampered = TestClient(guarded_client.app, cookies={"jobrunner_dashboard": value[:-2] + "xx"})
    assert tampered.get("/dashboard/", follow_redirects=False).status_code == 303
    guarded_client.post("/dashboard/logout", data={"csrf": csrf_of(page.text)})
    assert guarded_client.get("/dashboard/", follow_redirects=False).status_code == 303


def test_login_needs_the_csrf_token(guarded_client: TestClient) -> None:
    guarded_client.get("/dashboard/login")
    assert guarded_client.post("/dashboard/login", data={"token": TOKEN}).status_code == 403


def test_read_only_sees_no_buttons_and_gets_403_on_actions(guarded_client: TestClient, make_jobs: JobMaker) -> None:
    (job_id,) = make_jobs(1, status="failed", kind="fail")
    _log_in(guarded_client, READONLY_TOKEN)
    page = guarded_client.get(f"/dashboard/jobs/{job_id}").text
    assert "(read-only)" in page and "data-action=" not in page
    assert "data-action=" not in guarded_client.get("/dashboard/jobs").text
    assert "data-action=" not in guarded_client.get("/dashboard/failures").text
    csrf = csrf_of(page)
    for url in ["/dashboard/jobs/actions/replay/preview", "/dashboard/jobs/actions/replay"]:
        answer = guarded_client.post(url, data={"csrf": csrf, "job_id": str(job_id)})
        assert answer.status_code == 403 and "read-only" in answer.text


def test_an_operator_acts_under_the_name_given_at_login(guarded_client: TestClient, make_jobs: JobMaker) -> None:
    (job_id,) = make_jobs(1, status="failed", kind="fail")
    _log_in(guarded_client, TOKEN, name="ada")
    csrf = csrf_of(guarded_client.get(f"/dashboard/jobs/{job_id}").text)
    guarded_client.post("/dashboard/jobs/actions/replay", data={"csrf": csrf, "job_id": str(job_id)})
    assert "ada@" in guarded_client.get("/dashboard/log").text


def test_the_json_api_still_wants_its_bearer_token(guarded_client: TestClient) -> None:
    _log_in(guarded_client, TOKEN)
    assert guarded_client.get("/jobs").status_code == 401  # the dashboard's cookie opens nothing else
    assert guarded_client.get("/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert guarded_client.get("/docs").status_code == 200 and guarded_client.get("/healthz").status_code == 200


def test_docs_and_redoc_load_their_assets_from_the_app(client: TestClient) -> None:
    for path in ["/docs", "/redoc"]:
        html = client.get(path).text
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    swagger = client.get("/docs").text
    for asset in ["/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"]:
        assert asset in swagger and client.get(asset).status_code == 200
    assert client.get("/docs-assets/redoc.standalone.js").status_code == 200
    assert "/dashboard" not in str(client.get("/openapi.json").json()["paths"])
