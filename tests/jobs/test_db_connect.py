"""PostgreSQL connections give up on a server that does not answer instead of waiting for TCP."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jobs import db

pytestmark = pytest.mark.postgres_only


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 whose kernel accepts TCP connections that nothing ever answers (as a
    server cut off mid-handshake or frozen looks to a client); closed afterwards."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_a_connection_to_a_server_that_never_answers_gives_up(silent_server):
    engine = db.make_engine(f"postgresql://postgres@127.0.0.1:{silent_server}/x?connect_timeout=1")
    try:
        with pytest.raises(sa_exc.OperationalError, match="timeout"), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_connections_get_a_connect_timeout_and_keepalives_unless_the_url_sets_them():
    defaults = db._postgres_connect_args(make_url("postgresql://h/d"), "app")
    assert defaults == {"application_name": "app", **db.POSTGRES_CONNECT_DEFAULTS}
    assert defaults["connect_timeout"] == 10
    own = db._postgres_connect_args(make_url("postgresql://h/d?connect_timeout=3&keepalives=0"), "app")
    assert "connect_timeout" not in own and "keepalives" not in own  # the URL's own reach libpq
    assert own["keepalives_idle"] == 30
