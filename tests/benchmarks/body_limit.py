"""Oversized JSON bodies against a real ``jobctl api`` (uvicorn, 1 process): time to the answer and
the API's memory.

For each size (default 20 MB and 1 GB) and each way of announcing it (``declared``: a
Content-Length; ``chunked``: Transfer-Encoding chunked, so the server must count), a raw socket
sends ``POST /jobs`` with a valid JSON body of that size (``--shape string``:
``{"kind":"fail","args":{"message":"xxx…"}}``; ``--shape array``: ``…"message":[1,1,1,…]}}``)
in 64 KiB writes from one thread while the main thread waits for the answer. It reports the status,
the time from the first byte sent to the first byte of the answer, how much of the body had been
sent by then, and the API's peak RSS while it lasted (sampled every 5 ms from /proc, and VmHWM).
One more request without the token (``JOBRUNNER_API_TOKEN`` is set) shows the 401 comes before the
body is read.

``--root DIR`` runs the API from another checkout (e.g. one without the limit, for the before
figures; give it ``--sizes 20`` there: without a limit a 1 GB body is parsed whole). It never asserts.

Run from the project root (a redis-server of its own and a SQLite file in a temporary directory;
both removed at exit)::

    .venv/bin/python tests/benchmarks/body_limit.py [--sizes 20,1024] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks import common

TOKEN = "bench-token"
WRITE_BYTES = 64 * 1024
#: The bodies' shapes: one long string, or an array of millions of small numbers (costlier to parse).
SHAPES = {
    "string": (b'{"kind":"fail","args":{"message":"', b"x", b'"}}'),
    "array": (b'{"kind":"fail","args":{"message":[', b"1,", b"1]}}"),
}


def _body_writes(size: int, chunked: bool, shape: str) -> Iterator[bytes]:
    """The body's writes (framed as chunks when ``chunked``)."""
    head, unit, tail = SHAPES[shape]
    filler = unit * (WRITE_BYTES // len(unit))
    remaining = size - len(head) - len(tail)
    remaining -= remaining % len(unit)
    pieces = [head]
    while remaining > 0:
        pieces.append(filler[: min(remaining, len(filler))])
        remaining -= len(pieces[-1])
        yield from _framed(pieces, chunked)
        pieces = []
    yield from _framed([*pieces, tail], chunked)
    if chunked:
        yield b"0\r\n\r\n"


def _framed(pieces: list[bytes], chunked: bool) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece


def _request_head(size: int, chunked: bool, token: str | None) -> bytes:
    lines = ["POST /jobs HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Connection: close"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def measure(
    port: int, api_pid: int, size: int, *, chunked: bool, shape: str = "string", token: str | None = TOKEN
) -> dict[str, object]:
    """One oversized request: status, seconds to the answer, bytes sent by then, peak RSS (MiB)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=600)
    answered = threading.Event()
    sent = 0
    peak = common.rss_mb(api_pid) or 0.0

    def send_body() -> None:
        nonlocal sent
        try:
            sock.sendall(_request_head(size, chunked, token))
            for write in _body_writes(size, chunked, shape):
                if answered.is_set():
                    return
                sock.sendall(write)
                sent += len(write)
        except OSError:
            return  # the server closed the connection: it will not read more

    def sample() -> None:
        nonlocal peak
        while not answered.is_set():
            peak = max(peak, common.rss_mb(api_pid) or 0.0)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    elapsed = time.monotonic() - start
    sent_then = sent
    answered.set()
    # The rest of the answer (for its size), then close.
    try:
        while chunk := sock.recv(65536):
            received += chunk
            if len(received) > 64 * 1024 * 1024:
                break
    except OSError:
        pass
    sock.close()
    sender.join(timeout=60)
    sampler.join(timeout=5)
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else None
    return {
        "status": status,
        "seconds": elapsed,
        "sent_mb": sent_then / 1e6,
        "answer_bytes": len(received),
        "peak_rss_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20,1024", help="body sizes in MB (1e6 bytes), comma-separated")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="string", help="the body's shape")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose API runs")
    args = parser.parse_args()
    sizes = [int(float(s) * 1_000_000) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-body-"))
    port = common.free_port()
    env = {
        **os.environ,
        "JOBRUNNER_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "JOBRUNNER_BROKER_URL": common.redis_url(0),
        "JOBRUNNER_STORAGE_DIR": str(work / "uploads"),
        "JOBRUNNER_API_TOKEN": TOKEN,
        "PYTHONPATH": str(args.root),
    }
    log = work / "api.log"
    api = common.spawn(
        [sys.executable, "-m", "worker", "api", "--port", str(port)], env=env, log_path=log, cwd=args.root
    )
    try:
        common.wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=api, log_path=log)
        print(f"API {api.pid} from {args.root}: RSS at rest {common.rss_mb(api.pid):.0f} MiB")
        for size in sizes:
            for chunked in (False, True):
                result = measure(port, api.pid, size, chunked=chunked, shape=args.shape)
                how = "chunked " if chunked else "declared"
                print(
                    f"  {size / 1e6:>6.0f} MB {how}: {result['status']} after {result['seconds']:.3f} s, "
                    f"{result['sent_mb']:.1f} MB sent by then, answer {result['answer_bytes']} bytes, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MiB (VmHWM {common.rss_mb(api.pid, 'VmHWM'):.0f} MiB)",
                    flush=True,
                )
        result = measure(port, api.pid, sizes[0], chunked=False, shape=args.shape, token=None)
        print(
            f"  {sizes[0] / 1e6:>6.0f} MB without the token: {result['status']} after {result['seconds']:.3f} s, "
            f"{result['sent_mb']:.1f} MB sent by then, peak RSS {result['peak_rss_mb']:.0f} MiB"
        )
    finally:
        common.stop(api)


if __name__ == "__main__":
    main()
