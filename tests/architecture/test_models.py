"""What the models' type declarations promise, checked on the real mappers."""

from __future__ import annotations

import importlib
import pkgutil

from sqlalchemy import Table

import jobs.kinds
from jobs import models


def test_every_model_is_mapped_to_a_table():
    # models.Base tells the type checker that __table__ is a Table (insert() and update() take no
    # other FromClause): true while every model is declared with __tablename__.
    for info in pkgutil.walk_packages(jobs.kinds.__path__, "jobs.kinds."):
        importlib.import_module(info.name)
    mapped = {mapper.class_: mapper.class_.__table__ for mapper in models.Base.registry.mappers}
    assert models.Job in mapped and len(mapped) > 2  # the check sees the models
    assert {cls.__name__ for cls, table in mapped.items() if not isinstance(table, Table)} == set()
