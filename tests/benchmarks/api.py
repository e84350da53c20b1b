"""``POST /jobs`` requests/s: jobrunner's API beside a naive FastAPI route doing the same work.

    .venv/bin/python tests/benchmarks/api.py [--requests N] [--clients K] [--repeat R] [--baseline-code DIR]

Scenarios, alternated ``--repeat`` times in one run, each on an empty ``jobs`` table and Redis db:

- ``full``: ``jobctl api`` (uvicorn, 1 process); ``POST /jobs {"kind": "noop"}`` validates the kind
  and its args, inserts the row, commits, then sends the ID to Redis.
- ``naive``: a FastAPI app of a few lines served by the same uvicorn command line: a ``def`` route
  that opens an ORM ``Session`` per request (a ``get_db`` dependency), adds a ``Job`` row, commits,
  and sends the ID with Dramatiq's ``broker.enqueue``, as a typical service writes it.
- ``baseline`` (with ``--baseline-code DIR``): ``full`` with the project imported from ``DIR`` (an
  export of an earlier commit, say ``git archive main | tar -x -C DIR``), to compare two versions in
  one run.

``K`` client threads post ``N`` requests in all over keep-alive connections (raw sockets, the request
pre-encoded: see :func:`post_jobs`); requests/s = N / wall time. Prints each run, the medians, the
ratio full/naive (the performance issue's target: >= 2) and the machine's load. The clients run on
the same machine, so they take CPU from both servers alike.
Uses a database and a Redis of its own (see tests/benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx
import redis
from sqlalchemy import create_engine, text

from tests.benchmarks import common

NAIVE_APP = """
import datetime as dt
import os
import uuid

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from jobs.models import Job

engine = create_engine(os.environ["JOBRUNNER_DATABASE_URL"], pool_size=10)
SessionLocal = sessionmaker(engine)
broker = RedisBroker(url=os.environ["JOBRUNNER_BROKER_URL"])
app = FastAPI()


class JobIn(BaseModel):
    kind: str
    args: dict = {}


def get_db():
    with SessionLocal() as session:
        yield session


@app.post("/jobs", status_code=202)
def create(body: JobIn, session: Session = Depends(get_db)):
    now = dt.datetime.now(dt.timezone.utc)
    job = Job(id=uuid.uuid4(), kind=body.kind, queue="default", args=body.args, status="queued",
              attempts=0, max_attempts=3, created_at=now, enqueued_at=now, replay_count=0)
    session.add(job)
    session.commit()
    broker.enqueue(dramatiq.Message(queue_name="default", actor_name="jobrunner.run", args=(str(job.id),),
                                    kwargs={}, options={}))
    return {"job_id": str(job.id), "status": job.status}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5_000, help="requests per run (default 5,000)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client threads (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each scenario, alternated (default 3)")
    parser.add_argument("--baseline-code", type=Path, help="also run the API imported from this directory")
    return parser.parse_args(argv)


def uvicorn_argv(module: str, port: int) -> list[str]:
    """The command line ``jobctl api`` execs, for ``module``'s ``app``."""
    return [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", "127.0.0.1", "--port", str(port)]


#: One ``POST /jobs {"kind": "noop"}``, as bytes: the clients send it as it is.
REQUEST = (
    b"POST /jobs HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n"
    b'{"kind": "noop"}'
)


def post_jobs(port: int, count: int) -> list[int]:
    """Send ``count`` requests one after the other on one keep-alive connection; their status codes.

    A raw socket and a minimal reader of the answers (status line, Content-Length, body): a few
    tens of microseconds of the client's CPU a request, where an HTTP client library takes about a
    millisecond. The clients share the machine with the servers: a heavy client would flatten every
    ratio towards 1.
    """
    codes = []
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = b""
        for _ in range(count):
            sock.sendall(REQUEST)
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                buffer += _receive(sock)
            head, buffer = buffer[:end], buffer[end + 4 :]
            codes.append(int(head[9:12]))
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(buffer) < length:
                buffer += _receive(sock)
            buffer = buffer[length:]
    return codes


def _receive(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def run(scenario: str, args: argparse.Namespace, url: str, redis_url: str, workdir: Path) -> float:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE jobs CASCADE"))
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    port = common.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRUNNER_")}
    # The working directory comes first on uvicorn's sys.path (python -m), then PYTHONPATH.
    code = args.baseline_code if scenario == "baseline" else common.ROOT
    env.update(JOBRUNNER_DATABASE_URL=url, JOBRUNNER_BROKER_URL=redis_url, PYTHONPATH=f"{workdir}:{code}")
    module = "naive_app" if scenario == "naive" else "api.main"
    log_path = workdir / f"{scenario}.log"
    proc = common.spawn(uvicorn_argv(module, port), env=env, log_path=log_path, cwd=code)
    base = f"http://127.0.0.1:{port}"
    try:
        common.wait_for_http(f"{base}/healthz", proc=proc, log_path=log_path)
        with httpx.Client(base_url=base) as warm:
            for _ in range(50):
                warm.post("/jobs", json={"kind": "noop"}).raise_for_status()
        codes: list[int] = []

        def post(count: int) -> None:
            codes.extend(post_jobs(port, count))

        shares = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(post, shares))
        seconds = time.perf_counter() - started
    finally:
        common.stop(proc)
    if set(codes) != {202}:
        raise SystemExit(f"{scenario}: answers {sorted(set(codes))}:\n{common.log_tail(log_path)}")
    return args.requests / seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = common.recreate_database("jobrunner_bench_api")
    redis_url = common.redis_url(11)
    print(f"{args.requests:,} POST /jobs per run, {args.clients} clients, load average {os.getloadavg()[0]:.1f}")
    results: dict[str, list[float]] = {"full": [], "naive": []}
    if args.baseline_code is not None:
        results["baseline"] = []
    with tempfile.TemporaryDirectory(prefix="jobrunner-api-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "naive_app.py").write_text(textwrap.dedent(NAIVE_APP))
        try:
            for index in range(args.repeat):
                for scenario in results:
                    rate = run(scenario, args, url, redis_url, workdir)
                    results[scenario].append(rate)
                    load = os.getloadavg()[0]
                    print(f"  run {index + 1} {scenario:8} {rate:8,.0f} requests/s (load {load:.1f})", flush=True)
        finally:
            common.stop_all()
    full, naive = statistics.median(results["full"]), statistics.median(results["naive"])
    print(
        f"median full {full:,.0f} requests/s, naive {naive:,.0f} requests/s: full/naive {full / naive:.2f} (target 2.0)"
    )
    if args.baseline_code is not None:
        baseline = statistics.median(results["baseline"])
        print(
            f"baseline ({args.baseline_code}) {baseline:,.0f} requests/s: baseline/naive {baseline / naive:.2f}; "
            f"full/baseline {full / baseline:.2f}"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
