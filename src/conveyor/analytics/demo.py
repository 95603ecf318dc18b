"""The demo data model: a generated DuckDB database of orders, and its semantic layer (views and two topics).

The data is made by a seeded `random.Random` and nothing else (no clock, no hash seeds), so every build holds
the same rows. Orders run from `FIRST_DAY` (2023-01-01) to `LAST_DAY` (2026-10-31): the calendar years
2023-2025 in full and 2026 up to October, so "the past year" has data whether it means calendar 2025 or the
twelve months before November 2026 (when this was written). Revenue grows year on year at a different pace per
region and peaks in November-December, so trends by region and month are there to find.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Sequence
from pathlib import Path

FIRST_DAY = dt.date(2023, 1, 1)
LAST_DAY = dt.date(2026, 10, 31)
SEED = 20260101
N_CUSTOMERS = 2000
N_ORDERS = 40_000

_REGIONS = [
    # id, name, country, yearly growth, size weight
    (1, "North America", "United States", 0.12, 5.0),
    (2, "Europe", "Germany", 0.06, 4.0),
    (3, "United Kingdom", "United Kingdom", 0.02, 2.0),
    (4, "Asia Pacific", "Japan", 0.22, 3.0),
    (5, "Latin America", "Brazil", 0.15, 1.5),
    (6, "Middle East & Africa", "South Africa", 0.09, 1.0),
]
_CATEGORIES = {
    "Electronics": ["Headphones", "Speaker", "Monitor", "Keyboard", "Webcam", "Charger"],
    "Furniture": ["Desk", "Chair", "Bookshelf", "Lamp", "Cabinet"],
    "Office Supplies": ["Notebook", "Pen Set", "Stapler", "Binder", "Paper Pack", "Planner"],
    "Outdoor": ["Tent", "Backpack", "Water Bottle", "Jacket", "Hiking Boots"],
}
_PRICE = {"Electronics": (25, 400), "Furniture": (40, 600), "Office Supplies": (3, 40), "Outdoor": (15, 300)}
_ADJECTIVES = ["Basic", "Pro", "Plus"]
_SEGMENTS = [("Consumer", 0.6), ("Corporate", 0.3), ("Small Business", 0.1)]
_FIRST = (
    "Ada Ben Chloe Dev Elif Farid Grace Hugo Iris Jonas Kemi Liam Mei Nora Omar Priya Quinn Rosa Sven Tariq".split()
)
_LAST = ["Alvarez", "Brown", "Chen", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen", "Kowalski",
         "Lopez", "Müller", "Nakamura", "Okafor", "Patel", "Rossi", "Silva", "Tanaka", "Weber"]  # fmt: skip
_SEASON = [0.8, 0.8, 0.9, 0.95, 1.0, 1.0, 0.95, 0.95, 1.05, 1.1, 1.35, 1.6]  # January .. December


def build_demo_database(path: Path) -> None:
    """Writes the demo DuckDB database at `path` (replacing it): regions, customers, products, orders."""
    import duckdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (path, path.with_name(path.name + ".wal")):
        leftover.unlink(missing_ok=True)
    rng = random.Random(SEED)
    regions = [(rid, name, country) for rid, name, country, _, _ in _REGIONS]
    products = _products(rng)
    customers = _customers(rng)
    orders = _orders(rng, customers, products)
    conn = duckdb.connect(str(path))
    try:
        conn.execute("CREATE TABLE regions (region_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, country VARCHAR)")
        conn.execute(
            "CREATE TABLE products (product_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, category VARCHAR NOT NULL,"
            " unit_price DECIMAL(10, 2) NOT NULL, unit_cost DECIMAL(10, 2) NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, segment VARCHAR NOT NULL,"
            " region_id INTEGER NOT NULL, signup_date DATE NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE orders (order_id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL, product_id INTEGER"
            " NOT NULL, order_date DATE NOT NULL, quantity INTEGER NOT NULL, unit_price DECIMAL(10, 2) NOT NULL,"
            " discount DECIMAL(4, 2) NOT NULL, amount DECIMAL(12, 2) NOT NULL, status VARCHAR NOT NULL)"
        )
        _insert_columns(conn, "regions", regions)
        _insert_columns(conn, "products", products)
        _insert_columns(conn, "customers", customers)
        _insert_columns(conn, "orders", orders)
        conn.execute("CHECKPOINT")
    finally:
        conn.close()


def _insert_columns(conn: object, table: str, rows: Sequence[tuple[object, ...]]) -> None:
    """One INSERT per table: the rows go in as one list per column, unnested side by side (fast, no per-row calls)."""
    columns = [list(col) for col in zip(*rows, strict=True)]
    unnests = ", ".join(f"UNNEST(${i + 1})" for i in range(len(columns)))
    conn.execute(f"INSERT INTO {table} SELECT {unnests}", columns)  # type: ignore[attr-defined]


def _products(rng: random.Random) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for category, items in _CATEGORIES.items():
        low, high = _PRICE[category]
        for item in items:
            for adjective in _ADJECTIVES:
                price = round(rng.uniform(low, high) * (1.0 if adjective == "Basic" else 1.4), 2)
                cost = round(price * rng.uniform(0.45, 0.75), 2)
                out.append((len(out) + 1, f"{item} {adjective}", category, _money(price), _money(cost)))
    return out


def _customers(rng: random.Random) -> list[tuple[object, ...]]:
    weights = [w for *_, w in _REGIONS]
    span = (LAST_DAY - FIRST_DAY).days
    out: list[tuple[object, ...]] = []
    for customer_id in range(1, N_CUSTOMERS + 1):
        region = rng.choices(_REGIONS, weights)[0][0]
        segment = rng.choices([s for s, _ in _SEGMENTS], [w for _, w in _SEGMENTS])[0]
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        signup = FIRST_DAY + dt.timedelta(days=int(span * rng.random() ** 1.5) - 60)
        out.append((customer_id, name, segment, region, signup))
    return out


def _orders(
    rng: random.Random, customers: list[tuple[object, ...]], products: list[tuple[object, ...]]
) -> list[tuple[object, ...]]:
    growth = {rid: g for rid, _, _, g, _ in _REGIONS}
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range((LAST_DAY - FIRST_DAY).days + 1)]
    by_region: dict[object, list[tuple[object, ...]]] = {}
    for c in customers:
        by_region.setdefault(c[3], []).append(c)
    region_ids = [rid for rid, *_ in _REGIONS]
    # Each day's weight per region: seasonality times compound growth since the first day.
    day_weights = [[_SEASON[d.month - 1] * (1 + growth[r]) ** ((d - FIRST_DAY).days / 365) for d in days]
                   for r in region_ids]  # fmt: skip
    day_cum = [list(itertools.accumulate(w)) for w in day_weights]
    region_weights = [sum(w) * weight for w, (*_, weight) in zip(day_weights, _REGIONS, strict=True)]
    out: list[tuple[object, ...]] = []
    for order_id in range(1, N_ORDERS + 1):
        r_index = rng.choices(range(len(region_ids)), region_weights)[0]
        day = rng.choices(days, cum_weights=day_cum[r_index])[0]
        customer = rng.choice(by_region[region_ids[r_index]])
        product = rng.choice(products)
        quantity = rng.choices([1, 2, 3, 4, 5, 10], [50, 20, 12, 8, 6, 4])[0]
        discount = rng.choices([0.0, 0.05, 0.1, 0.2], [70, 15, 10, 5])[0]
        unit_price = float(str(product[3]))
        amount = round(quantity * unit_price * (1 - discount), 2)
        status = rng.choices(["completed", "returned", "cancelled"], [88, 7, 5])[0]
        out.append((order_id, customer[0], product[0], day, quantity, product[3], _money(discount), _money(amount),
                    status))  # fmt: skip
    return out


def _money(value: float) -> str:
    """Decimals go in as exact text (`'12.50'`), so the stored values never depend on float rounding."""
    return f"{value:.2f}"


# --- the semantic layer --------------------------------------------------------------------------------

_ORDERS_VIEW = """\
table: orders
label: Orders
description: One row per order (one product, a quantity, a price and a status), from 2023-01-01 to 2026-10-31.
dimensions:
  order_id: {type: number, label: Order ID}
  order_date: {type: date, label: Order date, description: The day the order was placed.}
  status:
    type: string
    description: "completed, returned or cancelled; revenue questions mean completed orders."
  quantity: {type: number, description: Units ordered.}
  discount: {type: number, description: "Discount rate, 0 to 0.2."}
  customer_id: {type: number}
  product_id: {type: number}
measures:
  revenue: {aggregate: sum, sql: amount, label: Revenue, description: "Net sales amount (after discount)."}
  order_count: {aggregate: count, label: Orders, description: Number of orders.}
  units_sold: {aggregate: sum, sql: quantity, label: Units sold}
  average_order_value: {aggregate: avg, sql: amount, label: Average order value}
  buyer_count: {aggregate: count_distinct, sql: customer_id, label: Buyers, description: Distinct buyers.}
  first_order_date: {aggregate: min, sql: order_date, type: date, label: First order}
  last_order_date: {aggregate: max, sql: order_date, type: date, label: Last order}
"""

_CUSTOMERS_VIEW = """\
table: customers
label: Customers
description: People and companies who buy from us, each in one region.
dimensions:
  customer_id: {type: number, label: Customer ID}
  name: {type: string, label: Customer name}
  segment: {type: string, description: "Consumer, Corporate or Small Business."}
  region_id: {type: number}
  signup_date: {type: date, label: Signup date}
measures:
  customer_count: {aggregate: count_distinct, sql: customer_id, label: Customers}
"""

_PRODUCTS_VIEW = """\
table: products
label: Products
description: What we sell, by category.
dimensions:
  product_id: {type: number, label: Product ID}
  name: {type: string, label: Product name}
  category: {type: string, description: "Electronics, Furniture, Office Supplies or Outdoor."}
  unit_price: {type: number, label: List price}
measures:
  product_count: {aggregate: count_distinct, sql: product_id, label: Products}
  average_list_price: {aggregate: avg, sql: unit_price, label: Average list price}
"""

_REGIONS_VIEW = """\
table: regions
label: Regions
description: Sales regions.
dimensions:
  region_id: {type: number}
  name:
    type: string
    label: Region
    description: "North America, Europe, United Kingdom, Asia Pacific, Latin America, Middle East & Africa."
  country: {type: string, description: The region's main country.}
"""

_SALES_TOPIC = """\
base_view: orders
label: Sales
description: Orders with their customer, product and region — revenue, order counts and units over time.
ai_context: >-
  Use this topic for revenue, sales, orders and trends. "Sales" and "revenue" mean orders.revenue.
  Regions are regions.name; product categories are products.category. For trends over time select
  orders.order_date with a time_grain (month for a year, week for a quarter). Only completed orders count
  unless the question asks about returns or cancellations. Data runs from 2023-01-01 to 2026-10-31.
joins:
  customers: {sql_on: "orders.customer_id = customers.customer_id", relationship: many_to_one}
  products: {sql_on: "orders.product_id = products.product_id", relationship: many_to_one}
  regions: {sql_on: "customers.region_id = regions.region_id", relationship: many_to_one}
default_filters:
  orders.status: completed
sample_questions:
  - Analyze sales trends by region for the past year
  - What was revenue by month in 2025?
  - Which product categories sell the most units?
  - Top 10 customers by revenue
"""

_CUSTOMERS_TOPIC = """\
base_view: customers
label: Customers
description: Customers by region, segment and signup date.
ai_context: >-
  Use this topic to count customers or list them by region (regions.name), segment or signup date.
  For money or orders use the sales topic instead.
joins:
  regions: {sql_on: "customers.region_id = regions.region_id", relationship: many_to_one}
sample_questions:
  - How many customers do we have in each region?
  - How many customers signed up each month in 2025?
"""

_MODEL = """\
description: A demo shop, generated; orders from 2023-01-01 to 2026-10-31.
ai_context: Money is in US dollars.
"""


def demo_model_files() -> dict[str, str]:
    """The demo model's YAML files keyed by file name: four views, two topics and the model file."""
    return {
        "model": _MODEL,
        "orders.view": _ORDERS_VIEW,
        "customers.view": _CUSTOMERS_VIEW,
        "products.view": _PRODUCTS_VIEW,
        "regions.view": _REGIONS_VIEW,
        "sales.topic": _SALES_TOPIC,
        "customers.topic": _CUSTOMERS_TOPIC,
    }
