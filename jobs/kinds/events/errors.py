"""Errors of the events feature."""

from __future__ import annotations

from jobs.errors import Conflict, Invalid, NotFound, PermanentError


class UnknownEventType(Invalid):
    """No event type is registered under that name."""


class InvalidEvent(Invalid):
    """An event does not fit its type (the message names the event's index and the field)."""


class EventNotFound(NotFound):
    """No event has that ID."""


class UnknownProjection(Invalid):
    """No projection is registered under that name."""


class ProductNotFound(NotFound):
    """No product has that ID."""


class DuplicateSku(Conflict):
    """A product with that SKU already exists."""


class NotEnoughInventory(PermanentError):
    """The product has less inventory than the order asks for; retrying cannot change that."""
