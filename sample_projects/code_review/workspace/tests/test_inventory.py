"""Tests for the inventory package. Run from this folder: python -m pytest tests"""

import pytest
from inventory import Inventory, OutOfStock, line_total, low_stock_report, order_total

OPENING_STOCK = {"MUG-BLUE": 12, "TEE-M": 2, "TEE-L": 40}


def test_add_and_remove():
    inv = Inventory(OPENING_STOCK)
    inv.add("MUG-BLUE", 2)
    inv.remove("MUG-BLUE", 10)
    assert inv.on_hand("MUG-BLUE") == 4


def test_remove_more_than_on_hand():
    inv = Inventory(OPENING_STOCK)
    with pytest.raises(OutOfStock):
        inv.remove("TEE-M", 3)


def test_new_inventory_is_empty():
    inv = Inventory()
    assert inv.on_hand("MUG-BLUE") == 0
    assert inv.needs_reorder() == []


def test_reorder_list():
    inv = Inventory(OPENING_STOCK, reorder_at=5)
    assert inv.needs_reorder() == ["TEE-M"]


def test_low_stock_report():
    inv = Inventory({"TEE-M": 2, "TEE-L": 40}, reorder_at=5)
    assert low_stock_report(inv).splitlines()[1].split() == ["TEE-M", "2"]


def test_bulk_discount_from_ten_units():
    assert line_total(250, 9) == 2250
    assert line_total(250, 10) == 2375


def test_order_total_with_tax():
    # 2 x $12.00 + 10 x $2.50 less the 5% bulk discount = $47.75; 8.25% tax = $3.94
    assert order_total([(1200, 2), (250, 10)], tax_bp=825) == 5169
