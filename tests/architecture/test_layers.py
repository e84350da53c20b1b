"""The layering the code relies on: ``jobs`` knows no web or queue framework, ``worker`` and ``api``
depend on ``jobs`` and never the reverse, no import cycle, and the API process loads no worker
runtime. Checked on the real imports (a fresh interpreter) and on the source (the import graph)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "worker", "api")
#: The worker runtime: what only a worker process needs.
WORKER_RUNTIME = (
    "worker.middleware",
    "worker.lifecycle",
    "worker.heartbeat",
    "worker.sweeper",
    "worker.broker",
    "worker.actors",
    "worker.state",
    "worker.entry",
    "worker.cli",
)


def _modules_after(code: str) -> set[str]:
    """The modules loaded by a fresh interpreter after running ``code``."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_importing_the_api_loads_no_worker_runtime():
    modules = _modules_after("import api.app, api.main")
    assert "api.app" in modules and "worker.producer" in modules  # the check sees what it looks for
    assert _loaded(modules, WORKER_RUNTIME) == []
    # Dramatiq's package imports its own middleware modules when its broker is imported, but the
    # API never builds a TimeLimit: its broker has no middleware (checked in test_producer.py).


def test_jobs_loads_no_web_or_queue_framework():
    code = (
        "import importlib, pkgutil, jobs\n"
        "for info in pkgutil.walk_packages(jobs.__path__, 'jobs.'):\n"
        "    if '.migrations' not in info.name:\n"
        "        importlib.import_module(info.name)\n"
    )
    modules = _modules_after(code)
    assert "jobs.kinds.events.handlers" in modules and "jobs.store.running" in modules
    assert _loaded(modules, ("fastapi", "starlette", "dramatiq", "redis", "uvicorn", "typer", "worker", "api")) == []


def _import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports (anywhere in its source)."""
    files = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                ]
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def test_jobs_imports_neither_worker_nor_api():
    graph = _import_graph()
    assert "jobs.store.running" in graph
    wrong = {
        (m, t)
        for m, targets in graph.items()
        if m.startswith("jobs")
        for t in targets
        if t.split(".")[0] in ("worker", "api")
    }
    assert wrong == set()


def test_api_and_worker_do_not_import_each_other_but_through_the_producer():
    graph = _import_graph()
    wrong = {
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if (m.startswith("api") and t.startswith("worker") and t != "worker.producer")
        or (m.startswith("worker") and t.startswith("api"))
    }
    assert wrong == set()


def test_no_import_cycle():
    graph = _import_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    # A package's __init__ importing its own submodules is how a package exposes them, not a cycle.
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert real == []
