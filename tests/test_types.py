"""The types shared by every layer (``mqlogging._types``)."""

from __future__ import annotations

import dataclasses

from mqlogging._types import Delivery, new_delivery


class TestNewDelivery:
    def test_same_object_as_the_constructor(self) -> None:
        """``new_delivery`` (the per-record constructor of the unpacking consumer) makes the
        very object ``Delivery(...)`` makes: every field set, equal, same hash. A field added
        to ``Delivery`` without a setter in ``new_delivery`` fails here."""
        tag = object()
        args = ("id-1", b"{}", tag, {"content-type": "application/json"}, True)
        made = new_delivery(*args)
        expected = Delivery(*args)
        for field in dataclasses.fields(Delivery):
            assert getattr(expected, field.name) is getattr(made, field.name), field.name
        assert type(made) is Delivery
        assert expected == made
        assert hash(Delivery("id-1", b"{}", 1, (), False)) == hash(
            new_delivery("id-1", b"{}", 1, (), False)
        )
