"""`conveyor models add|list|validate|branch` through the real CLI, and what a running server then serves."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.processes import ServerProcess
from tests.test_cli import conveyor

pytestmark = pytest.mark.timeout(180)

VIEW = """\
table: sales
dimensions:
  region: {type: string}
measures:
  revenue: {aggregate: sum, sql: amount}
"""
TOPIC = "base_view: sales\nlabel: Sales\ndescription: Sales by region.\n"


def _shop(tmp_path: Path) -> tuple[Path, Path]:
    """A SQLite database with a `sales` table, and a directory holding its model's YAML."""
    database = tmp_path / "shop.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE sales (region TEXT, amount REAL)")
        conn.executemany("INSERT INTO sales VALUES (?, ?)", [("North", 10.0), ("South", 5.5)])
    conn.close()
    yaml_dir = tmp_path / "shop-model"
    yaml_dir.mkdir()
    (yaml_dir / "sales.view").write_text(VIEW)
    (yaml_dir / "sales.topic").write_text(TOPIC)
    (yaml_dir / "README.md").write_text("not a model file: left alone")
    return database, yaml_dir


def test_add_list_validate_and_branch_a_model_a_server_then_serves(tmp_path: Path) -> None:
    database, yaml_dir = _shop(tmp_path)
    env = {**ServerProcess(tmp_path / "data").env, "CONVEYOR_SEED_DEMO": "false", "COLUMNS": "200"}
    added = conveyor("models", "add", "--name", "shop", "--sqlite", str(database), "--yaml-dir", str(yaml_dir), env=env)
    assert added.returncode == 0, added.stderr
    model_id = added.stdout.strip().splitlines()[-1]
    assert "with 2 files" in added.stdout
    listing = conveyor("models", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert model_id in listing.stdout and "shop (sqlite)" in listing.stdout
    assert str(database) not in listing.stdout  # the target stays on the server
    valid = conveyor("models", "validate", "shop", env=env)
    assert valid.returncode == 0 and "shop: valid, 0 problems" in valid.stdout, valid.stdout + valid.stderr

    made = conveyor("models", "branch", "shop", "wip", env=env)
    assert made.returncode == 0, made.stderr
    branch_id = made.stdout.strip().splitlines()[-1]
    branches = conveyor("models", "branch", "shop", env=env)
    assert f"{branch_id}\twip\t1" in branches.stdout
    assert conveyor("models", "branch", "shop", "wip", env=env).returncode == 1  # the name is taken

    with ServerProcess(tmp_path / "data", env={"CONVEYOR_SEED_DEMO": "false"}) as server:
        token = conveyor("token", "manage", "all", "600000", env=server.env).stdout.strip().splitlines()[-1]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            (record,) = http.get("/api/v1/models", params={"modelKind": "SHARED"}).json()["records"]
            assert record["id"] == model_id and record["name"] == "shop"
            wrote = http.post(
                f"/api/v1/models/{model_id}/yaml",
                json={"fileName": "ghost.view", "yaml": "table: no_such_table\n", "branchId": branch_id},
            )
            assert wrote.status_code == 200, wrote.text
            on_branch = conveyor("models", "validate", "shop", "--branch", "wip", env=env)
            assert on_branch.returncode == 1 and "ghost" in on_branch.stdout and "no_such_table" in on_branch.stdout
            assert conveyor("models", "validate", "shop", "--branch", "wip", "--no-database", env=env).returncode == 0
            merged = conveyor("models", "branch", "shop", "wip", "--merge", env=env)
            assert merged.returncode == 0 and "version 2" in merged.stdout, merged.stderr
            files = http.get(f"/api/v1/models/{model_id}/yaml").json()
            assert set(files["files"]) == {"ghost.view", "sales.topic", "sales.view"} and files["version"] == 2
            assert http.get(f"/api/v1/models/{model_id}/yaml", params={"branchId": branch_id}).status_code == 404
    assert conveyor("models", "validate", "shop", env=env).returncode == 1  # the merged model has the ghost view
    conveyor("models", "branch", "shop", "gone", env=env)
    assert conveyor("models", "branch", "shop", "gone", "--delete", env=env).returncode == 0
    assert "gone" not in conveyor("models", "branch", "shop", env=env).stdout


def test_a_postgres_url_is_kept_secret_and_bad_input_is_refused(tmp_path: Path) -> None:
    database, yaml_dir = _shop(tmp_path)
    env = {**ServerProcess(tmp_path / "data").env, "CONVEYOR_SEED_DEMO": "false", "COLUMNS": "200"}
    secret_url = "postgresql://analyst:s3cret-pw@127.0.0.1:1/warehouse"  # nothing listens on port 1
    command = ["models", "add", "--name", "wh", "--postgres", "-", "--yaml-dir", str(yaml_dir)]
    added = subprocess.run(
        [sys.executable, "-m", "conveyor", *command],
        input=secret_url + "\n", env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listing = conveyor("models", "list", env=env)
    assert "wh (postgres)" in listing.stdout
    validated = conveyor("models", "validate", "wh", env=env)  # the database cannot be reached: one problem says so
    assert validated.returncode == 1 and "cannot connect to PostgreSQL" in validated.stdout, validated.stdout
    for output in (added, listing, validated):
        assert "s3cret" not in output.stdout + output.stderr

    both = conveyor("models", "add", "--name", "x", "--sqlite", str(database), "--duckdb", str(database), env=env)
    assert both.returncode == 2 and "exactly one" in both.stderr
    missing = conveyor("models", "add", "--name", "x", "--sqlite", str(tmp_path / "nope.sqlite"), env=env)
    assert missing.returncode == 1 and "no sqlite database file" in missing.stderr
    taken = conveyor("models", "add", "--name", "wh", "--sqlite", str(database), env=env)
    assert taken.returncode == 1 and "exists" in taken.stderr
    unknown = conveyor("models", "validate", "nope", env=env)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    assert conveyor("models", "branch", "wh", "--merge", env=env).returncode == 2
