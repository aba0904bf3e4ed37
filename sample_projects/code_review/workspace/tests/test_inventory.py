"""Tests for the inventory package, with the standard library's unittest (no pytest needed).

Run them from the workspace folder (the one holding inventory/ and tests/):
    python -m unittest discover -s tests
or one test on its own:
    python -m unittest discover -s tests -k test_reorder_list
"""

import unittest

from inventory import Inventory, OutOfStock, line_total, low_stock_report, order_total

OPENING_STOCK = {"MUG-BLUE": 12, "TEE-M": 2, "TEE-L": 40}


class InventoryTests(unittest.TestCase):
    # unittest runs these in alphabetical order: test_add_and_remove comes first.

    def test_add_and_remove(self):
        inv = Inventory(OPENING_STOCK)
        inv.add("MUG-BLUE", 2)
        inv.remove("MUG-BLUE", 10)
        self.assertEqual(inv.on_hand("MUG-BLUE"), 4)

    def test_remove_more_than_on_hand(self):
        inv = Inventory(OPENING_STOCK)
        with self.assertRaises(OutOfStock):
            inv.remove("TEE-M", 3)

    def test_new_inventory_is_empty(self):
        inv = Inventory()
        self.assertEqual(inv.on_hand("MUG-BLUE"), 0)
        self.assertEqual(inv.needs_reorder(), [])

    def test_reorder_list(self):
        inv = Inventory(OPENING_STOCK, reorder_at=5)
        self.assertEqual(inv.needs_reorder(), ["TEE-M"])

    def test_low_stock_report(self):
        inv = Inventory({"TEE-M": 2, "TEE-L": 40}, reorder_at=5)
        self.assertEqual(low_stock_report(inv).splitlines()[1].split(), ["TEE-M", "2"])

    def test_bulk_discount_from_ten_units(self):
        self.assertEqual(line_total(250, 9), 2250)
        self.assertEqual(line_total(250, 10), 2375)

    def test_order_total_with_tax(self):
        # 2 x $12.00 + 10 x $2.50 less the 5% bulk discount = $47.75; 8.25% tax = $3.94
        self.assertEqual(order_total([(1200, 2), (250, 10)], tax_bp=825), 5169)


if __name__ == "__main__":
    unittest.main()
