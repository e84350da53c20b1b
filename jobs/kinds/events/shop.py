"""The shop's events, handlers and projections (the shipped example domain).

- ``user_registered`` -> the org projection (``org_stats``): user count, time of the latest user.
- ``order_created`` -> the product projection (``products``): inventory down by the quantity, sales
  count up; an order beyond the inventory fails that handler for good and leaves the product as it was.
- Products (the product projection's initial rows) are created and read here too.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, cast

import pydantic
from sqlalchemy import CursorResult, case, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from jobs import db, errors, store
from jobs.kinds.events import errors as event_errors
from jobs.kinds.events import models as event_models
from jobs.kinds.events import outbox as events
from jobs.kinds.events import projections

_products = event_models.Product.__table__
_orgs = event_models.OrgStats.__table__

#: Ledger names of the shipped handlers (stable: renaming one would re-apply every event).
ORG_HANDLER = "org_stats"
PRODUCT_HANDLER = "product_inventory"


#: An org, user or order key: a non-empty string.
_Key = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=100)]


@events.event_type("user_registered", public=True)
class UserRegistered(pydantic.BaseModel):
    """A user joined an org."""

    model_config = pydantic.ConfigDict(extra="forbid")

    org_id: _Key
    user_id: _Key
    #: Checked only for its shape (something@something): the projection does not use it.
    email: str = pydantic.Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


@events.event_type("order_created", public=True)
class OrderCreated(pydantic.BaseModel):
    """An order for some quantity of one product."""

    model_config = pydantic.ConfigDict(extra="forbid")

    order_id: _Key
    product_id: uuid.UUID
    quantity: int = pydantic.Field(gt=0, le=1_000_000)


# --- handlers -----------------------------------------------------------------------------------


@events.on("user_registered", name=ORG_HANDLER)
def count_org_user(session: Session, event: events.StoredEvent) -> None:
    """One more user in the org; ``last_user_at`` is the latest event time seen (a max, so arrival
    order does not matter). One upsert: concurrent events of one org queue on its row lock."""
    payload: UserRegistered = event.payload
    statement = events.dialect_insert(session, _orgs).values(
        org_id=payload.org_id, user_count=1, last_user_at=event.created_at
    )
    excluded = statement.excluded
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["org_id"],
            set_={
                "user_count": _orgs.c.user_count + 1,
                "last_user_at": case(
                    (_orgs.c.last_user_at.is_(None), excluded.last_user_at),
                    (excluded.last_user_at > _orgs.c.last_user_at, excluded.last_user_at),
                    else_=_orgs.c.last_user_at,
                ),
            },
        )
    )


@events.on("order_created", name=PRODUCT_HANDLER)
def take_inventory(session: Session, event: events.StoredEvent) -> None:
    """Take the order's quantity from the product's inventory and count the sale, in one
    conditional UPDATE (it applies only while the inventory suffices).

    Raises:
        NotEnoughInventory: it does not; the product is untouched.
        PermanentError: there is no such product.
    """
    payload: OrderCreated = event.payload
    # Session.execute is typed Result; a DML statement's is a CursorResult, which has the rowcount.
    taken = cast(
        "CursorResult[Any]",
        session.execute(
            update(_products)
            .where(_products.c.id == payload.product_id, _products.c.inventory >= payload.quantity)
            .values(inventory=_products.c.inventory - payload.quantity, sales_count=_products.c.sales_count + 1)
        ),
    ).rowcount
    if taken == 1:
        return
    inventory = session.scalar(select(_products.c.inventory).where(_products.c.id == payload.product_id))
    if inventory is None:
        raise errors.PermanentError(f"order {payload.order_id}: no product {payload.product_id}")
    raise event_errors.NotEnoughInventory(
        f"order {payload.order_id} wants {payload.quantity} of product {payload.product_id}, which has {inventory}"
    )


# --- projections --------------------------------------------------------------------------------


@projections.projection("orgs", table=_orgs, key="org_id", delete_extra=True)
def recompute_orgs(session: Session) -> dict[Any, dict[str, Any]]:
    """Each org's user count and latest user time, from the ``user_registered`` events applied."""
    orgs: dict[Any, dict[str, Any]] = {}
    for row in events.applied_events(session, ORG_HANDLER):
        org = orgs.setdefault(row.payload["org_id"], {"user_count": 0, "last_user_at": None})
        org["user_count"] += 1
        if org["last_user_at"] is None or row.created_at > org["last_user_at"]:
            org["last_user_at"] = row.created_at
    return orgs


@projections.projection("products", table=_products, key="id")
def recompute_products(session: Session) -> dict[Any, dict[str, Any]]:
    """Each product's starting inventory less the orders applied to it, and their count."""
    products = {
        row.id: {"inventory": row.initial_inventory, "sales_count": 0}
        for row in session.execute(select(_products.c.id, _products.c.initial_inventory))
    }
    for row in events.applied_events(session, PRODUCT_HANDLER):
        product = products.get(uuid.UUID(row.payload["product_id"]))
        if product is not None:
            product["inventory"] -= row.payload["quantity"]
            product["sales_count"] += 1
    return products


# --- products (the projection's initial rows) -----------------------------------------------------


def create_product(session: Session, *, sku: str, inventory: int) -> event_models.Product:
    """Add a product with its starting inventory.

    Raises:
        DuplicateSku: one with ``sku`` exists already.
    """
    product = event_models.Product(
        id=uuid.uuid4(),
        sku=sku,
        initial_inventory=inventory,
        inventory=inventory,
        sales_count=0,
        created_at=store.utcnow(),
    )
    try:
        # A SAVEPOINT, so that losing a race for the SKU leaves the caller's transaction usable.
        with session.begin_nested():
            session.add(product)
    except sa_exc.IntegrityError as exc:
        raise event_errors.DuplicateSku(f"a product with SKU {sku!r} exists already") from exc
    return product


def get_product(session: Session, product_id: uuid.UUID) -> event_models.Product:
    """A product.

    Raises:
        ProductNotFound: there is none.
    """
    return db.get_or_raise(session, event_models.Product, product_id, event_errors.ProductNotFound, what="product")


def get_org_stats(session: Session, org_id: str) -> event_models.OrgStats:
    """An org's projection; an org no event has touched yet has no users (not an error)."""
    stats = session.get(event_models.OrgStats, org_id)
    return stats or event_models.OrgStats(org_id=org_id, user_count=0, last_user_at=None)
