"""Fixtures of the observability tests: the worker tests' ``workers`` (real ``jobctl worker`` processes)."""

from tests.worker.conftest import workers

__all__ = ["workers"]
