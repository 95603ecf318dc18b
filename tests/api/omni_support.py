"""What the Omni AI job tests share: a small real data model, Omni's published schemas, and polling helpers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
from tests.llm.scripted_openai import MODEL, ScriptedOpenAI, completion

# Omni's public OpenAPI document (the AI-jobs and models subset), kept with the tests so CI checks every answer
# against it field for field.
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "omni-openapi-subset.json"
SPEC: dict[str, Any] = orjson.loads(REFERENCE.read_bytes())
FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER

VIEW = """
table: sales
description: One row per sale.
dimensions:
  sale_id: {type: number}
  region: {type: string, description: Sales region}
  sold_on: {type: date, label: Sale date}
measures:
  revenue: {aggregate: sum, sql: amount, description: Revenue}
  sale_count: {aggregate: count}
"""
TOPIC = """
base_view: sales
label: Sales
description: Sales by region and date.
ai_context: Revenue is the sum of amounts.
sample_questions: ["Revenue by region"]
"""
REGIONAL = """
base_view: sales
label: Regional
description: The same sales, for regional managers.
"""
MODEL_FILES = {"sales.view": VIEW, "sales.topic": TOPIC, "regional.topic": REGIONAL}


def build_sales_database(path: Path) -> None:
    """A small SQLite file: 3 regions, 12 sales over two years."""
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sales (sale_id INTEGER PRIMARY KEY, region TEXT, sold_on TEXT, amount REAL)")
        rows = [
            (i, ("North", "South", "West")[i % 3], f"202{5 + i % 2}-0{1 + i % 9}-15", 10.0 * (i + 1)) for i in range(12)
        ]
        conn.executemany("INSERT INTO sales VALUES (?, ?, ?, ?)", rows)


async def make_model(runtime: Any, data_dir: Path, name: str = "shop") -> str:
    """A shared model on a real SQLite file, registered through the model store; returns its id."""
    from conveyor.analytics.store import ModelService

    path = data_dir / f"{name}.sqlite"
    build_sales_database(path)
    models = ModelService(runtime.db)
    connection = await models.add_connection(f"{name}-db", "sqlite", str(path))
    row = await models.create_model(name, connection["id"], files=MODEL_FILES)
    return str(row["id"])


def schema(name: str) -> dict[str, Any]:
    """A component schema of Omni's subset, resolvable on its own (the components ride along for `$ref`s)."""
    return {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}


def conforms(body: Any, name: str, *, strict: bool = True) -> None:
    """`body` validates against Omni's schema `name` (types, required fields, enums, uuid formats) and, when
    `strict`, has no property the schema does not name."""
    jsonschema.Draft202012Validator(schema(name), format_checker=FORMATS).validate(body)
    if strict:
        properties = SPEC["components"]["schemas"][name].get("properties", {})
        extra = set(body) - set(properties)
        assert not extra, f"{name} has fields Omni's schema does not: {sorted(extra)}"


def response_schema(path: str, method: str, status: int) -> str | None:
    """The component name of a documented response, e.g. `AiJobStatusResponse` for GET /api/v1/ai/jobs/{jobId}."""
    answer = SPEC["paths"][path][method]["responses"].get(str(status))
    if answer is None:
        return None
    ref = answer["content"].get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] or None


def assert_omni_error(response: httpx.Response, status: int, path: str, method: str) -> dict[str, Any]:
    """An error in Omni's documented shape for that path and status."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    name = response_schema(path, method, status) or f"ApiError{status}"
    if name in SPEC["components"]["schemas"]:
        conforms(body, name)
    assert body["status"] == status and body["detail"]
    return body


async def wait_state(
    client: httpx.AsyncClient, job_id: str, states: set[str], timeout_s: float = 30.0
) -> dict[str, Any]:
    """Polls a job's status (bounded) until its state is one of `states`; returns the status body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    body: dict[str, Any] = {}
    while loop.time() < deadline:
        response = await client.get(f"/api/v1/ai/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["state"] in states:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {body.get('state')} (wanted {states})")


def llm_settings(scripted: ScriptedOpenAI) -> dict[str, Any]:
    return {"provider": "openai", "base_url": scripted.base_url, "model": MODEL, "max_retries": 0}


def answer(
    scripted: ScriptedOpenAI, summary: str | None, fields: list[str] | None = None, *, stall_s: float = 0.0
) -> None:
    """Scripts one job on the `sales` topic: the structured query (after `stall_s`), then the headline (none: a
    job cancelled while it waits for the query)."""
    query = completion(orjson.dumps({"fields": fields or ["sales.region", "sales.revenue"]}).decode())
    query.stall_s = stall_s
    scripted.script(query, *([completion(summary)] if summary is not None else []))
