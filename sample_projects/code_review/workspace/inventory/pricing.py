"""Order pricing in whole cents: line totals with a bulk discount, then sales tax."""

from __future__ import annotations

BULK_UNITS = 10  # lines of this many units or more get the bulk discount
BULK_DISCOUNT_PCT = 5


def line_total(unit_cents: int, units: int) -> int:
    """Price of one order line in cents, after the bulk discount (rounded down)."""
    gross = unit_cents * units
    if units >= BULK_UNITS:
        gross -= gross * BULK_DISCOUNT_PCT // 100
    return gross


def order_total(lines: list[tuple[int, int]], tax_bp: int) -> int:
    subtotal = sum(line_total(unit_cents, units) for unit_cents, units in lines)
    tax = (subtotal * tax_bp + 5_000) // 10_000
    return subtotal + tax
