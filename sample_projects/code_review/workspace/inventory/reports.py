"""Plain-text reports over an Inventory, for the shop's morning printout."""

from __future__ import annotations

from inventory.stock import Inventory


def low_stock_report(inventory: Inventory) -> str:
    """One line per SKU at or below the reorder level, or a line saying there is none."""
    lines = [f"Low stock (reorder at {inventory.reorder_at} or fewer):"]
    for sku in inventory.needs_reorder():
        lines.append(f"  {sku:<12} {inventory.on_hand(sku):>4}")
    if len(lines) == 1:
        lines.append("  nothing to reorder")
    return "\n".join(lines)
