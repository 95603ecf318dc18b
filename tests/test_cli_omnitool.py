"""`conveyor recipes import` of Omnitool JSON and `conveyor recipes export`, as real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.processes import ServerProcess
from tests.test_cli import conveyor

pytestmark = pytest.mark.timeout(120)

RECIPES = Path(__file__).resolve().parent / "recipes" / "omnitool"
GREETING_ID = "6f1c2a4e-0b7d-4a51-9d3e-2c8f00a1b001"


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def test_import_omnitool_files_and_export_them_back(tmp_path: Path) -> None:
    env = {**ServerProcess(tmp_path / "data").env}
    done = conveyor("recipes", "import", str(RECIPES / "greeting.json"), env=env)
    assert done.returncode == 0, done.stderr
    assert f"Greeting Card ({GREETING_ID}) revision 1" in flat(done.stdout)
    again = conveyor("recipes", "import", str(RECIPES / "greeting.json"), env=env)
    assert again.returncode == 0 and "revision 2" in again.stdout, again.stderr

    out = tmp_path / "greeting.omnitool.json"
    done = conveyor("recipes", "export", GREETING_ID, "--format", "omnitool", "--output", str(out), env=env)
    assert done.returncode == 0, done.stderr
    original = json.loads((RECIPES / "greeting.json").read_text(encoding="utf-8"))
    assert json.loads(out.read_text(encoding="utf-8"))["rete"] == original["rete"]

    native = conveyor("recipes", "export", "Greeting Card", env=env)
    assert native.returncode == 0, native.stderr
    doc = json.loads(native.stdout)
    assert doc["id"] == GREETING_ID and doc["nodes"]["7-topic"]["block"] == "input_text"
    as_yaml = tmp_path / "greeting.yaml"
    assert conveyor("recipes", "export", GREETING_ID, "-o", str(as_yaml), env=env).returncode == 0
    assert yaml.safe_load(as_yaml.read_text(encoding="utf-8")) == doc

    shout = tmp_path / "shout.yaml"
    shout.write_text(
        "id: shout\nname: Shout\nnodes:\n"
        "  start: {block: chat_input}\n"
        "  up: {block: text_template, config: {template: '{{ text | upper }}'}, inputs: {text: start.text}}\n"
        "  out: {block: recipe_output, inputs: {text: up.text}}\n"
    )
    assert conveyor("recipes", "import", str(shout), env=env).returncode == 0
    refused = conveyor("recipes", "export", "shout", "--format", "omnitool", env=env)
    assert refused.returncode == 1 and "up (text_template)" in flat(refused.stderr)
    assert "Traceback" not in refused.stderr
    bad = conveyor("recipes", "export", GREETING_ID, "--format", "xml", env=env)
    assert bad.returncode == 2 and "native or omnitool" in flat(bad.stderr)


def test_import_lists_every_problem_then_allow_missing_imports_them_disabled(tmp_path: Path) -> None:
    env = {**ServerProcess(tmp_path / "data").env}
    refused = conveyor("recipes", "import", str(RECIPES / "unknown.json"), env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "3 problems" in refused.stderr
    for node in (
        "2 (omnitool.number_input)",
        "3 (omni-core-replicate:run.stability-ai/sdxl)",
        "4 (omnitool.text_splitter)",
    ):
        assert node in flat(refused.stderr), refused.stderr
    assert "Poster Maker" not in conveyor("recipes", "list", env=env).stdout

    done = conveyor("recipes", "import", "--allow-missing", str(RECIPES / "unknown.json"), env=env)
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "node 3 (omni-core-replicate:run.stability-ai/sdxl)" in flat(done.stderr)
    with ServerProcess(tmp_path / "data") as server:
        run = conveyor("run", "Poster Maker", "--input", "text=a lighthouse", env=server.env)
        assert run.returncode == 0, run.stderr
        assert "Prompt: a lighthouse" in run.stdout


def test_malformed_omnitool_file_fails_cleanly(tmp_path: Path) -> None:
    env = {**ServerProcess(tmp_path / "data").env}
    broken = tmp_path / "broken.json"
    recipe = json.loads((RECIPES / "greeting.json").read_text(encoding="utf-8"))
    recipe["rete"]["nodes"]["9"]["inputs"]["text"]["connections"].append({"node": 404, "output": "text"})
    broken.write_text(json.dumps(recipe), encoding="utf-8")
    done = conveyor("recipes", "import", str(broken), env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "9 (omnitool.recipe_output): input 'text' is connected to node 404" in flat(done.stderr)
