"""Every command the README (and the Procfile) shows exists and its options parse: each ``jobctl``
line is parsed by jobctl's own Click command tree, each script runs with ``--help``, each Makefile
target exists. (What the commands *do* is tested elsewhere: test_cli.py runs them.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from typing import Any

import pytest
import typer

from tests.acceptance.conftest import REPO_ROOT
from worker.cli import app

README = (REPO_ROOT / "README.md").read_text()
#: Stand-ins for the README's placeholders.
PLACEHOLDERS = {
    "ID": str(uuid.uuid4()),
    "K": "noop",
    "T": "builtins.ValueError",
    "TEXT": "disk full",
    "N": "5",
    "...": "2h",
}


def _code_lines() -> list[str]:
    """Lines of the README's shell blocks, without their comments, leading ``NAME=value`` settings
    and a trailing ``&``."""
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [re.sub(r"^(\w+=\S+ +)+(?=jobctl )", "", line).removesuffix("&").strip() for line in lines if line]


def _inline_jobctl() -> list[str]:
    """Inline ``jobctl ...`` commands of the prose, each optional ``[...]`` part included and each
    ``a|b`` alternative taken in turn."""
    commands = []
    for text in re.findall(r"`(jobctl [^`]+)`", README.replace("\n", " ")):
        if text.rstrip().endswith("..."):
            continue  # "jobctl replay ..." is a mention, not a command line
        text = re.sub(r"\[([^\]]*)\]", r"\1", text)
        alternatives = re.findall(r"(\S+\|\S+)", text)
        variants = [text]
        for alternative in alternatives:
            variants = [v.replace(alternative, option) for v in variants for option in alternative.split("|")]
        commands += variants
    return commands


def _readme_jobctl_commands() -> list[str]:
    procfile = (REPO_ROOT / "Procfile").read_text()
    from_procfile = [
        re.sub(r"\$\{\w+:-(\w+)\}", r"\1", line.split(":", 1)[1].strip()) for line in procfile.splitlines()
    ]
    return [line for line in _code_lines() if line.startswith("jobctl ")] + _inline_jobctl() + from_procfile


def _parse(argv: list[str]) -> None:
    """Parse ``argv`` as jobctl would, down to the leaf command, without running anything.
    (Typer brings its own copy of Click, so groups are recognised by what they can do.)"""
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("jobctl", list(argv), resilient_parsing=False)
    while hasattr(command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # as Group.invoke does
        name, command, rest = command.resolve_command(ctx, rest)
        assert command is not None, f"no command {name!r}"
        ctx = command.make_context(name, rest, parent=ctx)


def test_the_readme_shows_the_commands_this_test_checks():
    commands = _readme_jobctl_commands()
    for expected in (
        "jobctl db upgrade",
        "jobctl worker --processes 2 --threads 8",
        "jobctl events rebuild products",
        "jobctl worker --processes 1 --threads 4",  # after JOBRUNNER_JOB_MODULES=shopapp.kinds
    ):
        assert any(c.startswith(expected) for c in commands), expected
    assert "make test" in _code_lines() and "make demo" in _code_lines()


@pytest.mark.parametrize("line", _readme_jobctl_commands())
def test_each_jobctl_command_of_the_readme_parses(line: str):
    argv = [PLACEHOLDERS.get(token, token) for token in shlex.split(line)[1:]]
    _parse(argv)


@pytest.mark.parametrize("argv", [["jobs", "list", "--colour", "red"], ["nonsense"], ["jobs", "list", "--status", "x"]])
def test_a_wrong_command_or_option_does_not_parse(argv: list[str]):
    with pytest.raises(Exception) as raised:
        _parse(argv)
    assert "UsageError" in {cls.__name__ for cls in type(raised.value).__mro__}


def test_each_make_target_of_the_readme_exists():
    targets = {line.split()[1] for line in _code_lines() if line.startswith("make ")}
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert targets and all(re.search(rf"^{t}:", makefile, flags=re.M) for t in targets)


def test_each_benchmark_the_readme_names_runs_with_help():
    named = re.findall(r"`(?:\.venv/bin/python tests/benchmarks/)?(\w+\.py)`", README.split("Benchmarks", 1)[1])
    assert {"throughput.py", "ingest.py", "events.py", "batch.py"} <= set(named)
    for script in sorted(set(named)):
        result = subprocess.run(
            [sys.executable, f"tests/benchmarks/{script}", "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr


def test_each_honcho_process_of_the_readme_is_in_the_procfile():
    started = [line.split()[2:] for line in _code_lines() if line.startswith("honcho start ")]
    procfile = {line.split(":", 1)[0] for line in (REPO_ROOT / "Procfile").read_text().splitlines() if line}
    assert started and all(names and set(names) <= procfile for names in started), (started, procfile)
