"""``/products`` and ``/orgs/{org_id}/stats``: the projections kept by event handlers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict, Field

from api.deps import SessionDep
from api.responses import errors
from jobs.kinds.events import shop as event_handlers

router = APIRouter(tags=["projections"])


class ProductIn(BaseModel):
    """A new product and its starting inventory."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=100)
    inventory: int = Field(ge=0, le=2_000_000_000)


class ProductOut(BaseModel):
    """A product: its starting inventory, what is left, and how many orders took from it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    sku: str
    initial_inventory: int
    inventory: int
    sales_count: int
    created_at: dt.datetime


class OrgStatsOut(BaseModel):
    """The org projection."""

    model_config = ConfigDict(from_attributes=True)

    org_id: str
    user_count: int
    last_user_at: dt.datetime | None


@router.post(
    "/products", status_code=status.HTTP_201_CREATED, response_model=ProductOut, responses=errors(401, 409, 422)
)
def post_product(request: ProductIn, session: SessionDep) -> ProductOut:
    """Add a product with its starting inventory (orders then take from it)."""
    product = event_handlers.create_product(session, sku=request.sku, inventory=request.inventory)
    session.commit()
    return ProductOut.model_validate(product)


@router.get("/products/{product_id}", response_model=ProductOut, responses=errors(401, 404, 422))
def get_product(product_id: uuid.UUID, session: SessionDep) -> ProductOut:
    """A product and its inventory and sales projection."""
    return ProductOut.model_validate(event_handlers.get_product(session, product_id))


@router.get("/orgs/{org_id}/stats", response_model=OrgStatsOut, responses=errors(401, 422))
def get_org_stats(org_id: Annotated[str, Path(min_length=1, max_length=100)], session: SessionDep) -> OrgStatsOut:
    """An org's user count and the time of its latest user (zero and null before any event)."""
    return OrgStatsOut.model_validate(event_handlers.get_org_stats(session, org_id))
