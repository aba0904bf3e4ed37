"""Stock levels: how many units of each SKU are on hand, and what needs reordering."""

from __future__ import annotations


class OutOfStock(Exception):
    """Raised when more units are taken than are on hand."""


class Inventory:
    """Units on hand per SKU, with one reorder level for the whole shop."""

    def __init__(self, levels: dict[str, int] | None = None, reorder_at: int = 5) -> None:
        self.levels = levels or {}
        self.reorder_at = reorder_at

    def add(self, sku: str, units: int) -> None:
        """Receive `units` of `sku` into stock."""
        if units <= 0:
            raise ValueError("units must be positive")
        self.levels[sku] = self.levels.get(sku, 0) + units

    def remove(self, sku: str, units: int) -> None:
        """Take `units` of `sku` out of stock; raises OutOfStock if there are not enough."""
        if units <= 0:
            raise ValueError("units must be positive")
        on_hand = self.levels.get(sku, 0)
        if units > on_hand:
            raise OutOfStock(f"{sku}: asked for {units}, only {on_hand} on hand")
        self.levels[sku] = on_hand - units

    def on_hand(self, sku: str) -> int:
        """Units of `sku` in stock (0 for an unknown SKU)."""
        return self.levels.get(sku, 0)

    def needs_reorder(self) -> list[str]:
        """SKUs at or below the reorder level, sorted."""
        return sorted(sku for sku, units in self.levels.items() if units <= self.reorder_at)
