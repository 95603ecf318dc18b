"""End to end with real processes: `conveyor serve`, `conveyor run`, two servers on one data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.processes import ServerProcess, wait_for

pytestmark = pytest.mark.timeout(120)


def conveyor(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_run_greeting_prints_hello_world(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("run", "Greeting", "--input", "text=world", env=server.env)
        assert done.returncode == 0, done.stderr
        assert "Hello, world!" in done.stdout
        assert "greet" in done.stdout  # live node progress was shown


def test_run_uploads_a_file_input(tmp_path: Path) -> None:
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (800, 400), "blue").save(photo)
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("run", "Image to WebP", "--input", f"images=@{photo}", env=server.env)
        assert done.returncode == 0, done.stderr
        assert "image/webp" in done.stdout


def test_run_reports_bad_input_and_unknown_recipe(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("run", "Greeting", "--input", "colour=red", env=server.env)
        assert done.returncode == 1 and "colour" in done.stderr
        done = conveyor("run", "No such recipe", env=server.env)
        assert done.returncode == 1 and "not found" in done.stderr


def test_recipes_commands(tmp_path: Path) -> None:
    recipe = tmp_path / "shout.yaml"
    recipe.write_text(
        "id: shout\nname: Shout\nnodes:\n"
        "  start: {block: chat_input, config: {fields: {text: {type: text, required: true}}}}\n"
        "  up: {block: text_template, config: {template: '{{ text | upper }}!'}, inputs: {text: start.text}}\n"
        "  out: {block: recipe_output, inputs: {text: up.text}}\n"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: Broken\nnodes:\n  start: {block: nope}\n")
    env = {**ServerProcess(tmp_path / "data").env}
    assert conveyor("recipes", "validate", str(recipe), env=env).returncode == 0
    invalid = conveyor("recipes", "validate", str(broken), env=env)
    assert invalid.returncode == 1 and "unknown block" in invalid.stderr
    imported = conveyor("recipes", "import", str(recipe), env=env)
    assert imported.returncode == 0 and "revision 1" in imported.stdout, imported.stderr
    again = conveyor("recipes", "import", str(recipe), env=env)
    assert "revision 2" in again.stdout
    assert "Shout" in conveyor("recipes", "list", env=env).stdout
    assert "upper" in conveyor("recipes", "show", "shout", env=env).stdout
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("run", "shout", "--input", "text=hey", env=server.env)
        assert "HEY!" in done.stdout, done.stderr


def test_two_servers_on_one_data_directory_answer_for_each_others_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as first, ServerProcess(data) as second:
        with first.client() as one, second.client() as two:
            ids = [
                one.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": f"n{i}"}}).json()["id"]
                for i in range(5)
            ]
            ids += [
                two.post("/api/v1/jobs", json={"recipe": "greeting", "inputs": {"text": f"m{i}"}}).json()["id"]
                for i in range(5)
            ]
            for job_id in ids:
                for client in (one, two):
                    result = wait_for(
                        lambda c=client, j=job_id: (
                            (r := c.get(f"/api/v1/jobs/{j}/result")).status_code == 200 and r.json()
                        )
                    )
                    assert result["state"] == "succeeded"
            assert one.get("/api/v1/jobs").json()["total"] == two.get("/api/v1/jobs").json()["total"] == 10
            assert len({r["name"] for r in one.get("/api/v1/recipes").json()["items"]}) == 4  # seeded once


def test_serve_honours_host_port_and_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    with ServerProcess(data) as server, server.client() as client:
        assert client.get("/api/v1/health").json()["status"] == "ok"
        assert (data / "conveyor.db").exists()
        assert client.get("/docs").status_code == 200
        assert "/api/v1/jobs" in client.get("/openapi.json").json()["paths"]


def test_run_reports_an_unparseable_input_value_without_a_traceback(tmp_path: Path) -> None:
    recipe = tmp_path / "count.yaml"
    recipe.write_text(
        "id: count\nname: Count\nnodes:\n"
        "  start: {block: chat_input, config: {fields: {n: {type: number, required: true}}}}\n"
        "  out: {block: recipe_output, inputs: {objects: start.n}}\n"
    )
    env = {**ServerProcess(tmp_path / "data").env}
    assert conveyor("recipes", "import", str(recipe), env=env).returncode == 0
    with ServerProcess(tmp_path / "data") as server:
        done = conveyor("run", "json-reshape", "-i", "json={bad", env=server.env)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "--input json: not valid JSON" in done.stderr
        done = conveyor("run", "count", "-i", "n=many", env=server.env)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "--input n: not a number" in done.stderr
