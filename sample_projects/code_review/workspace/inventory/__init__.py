"""A small shop's inventory: stock levels, order pricing and a low-stock report."""

from inventory.pricing import line_total, order_total
from inventory.reports import low_stock_report
from inventory.stock import Inventory, OutOfStock

__all__ = ["Inventory", "OutOfStock", "line_total", "low_stock_report", "order_total"]
