"""The docs stay complete: every setting, block, route and part is documented, one test case each."""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

import conveyor
from conveyor.app import create_app
from conveyor.blocks import default_registry
from conveyor.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
UNDOCUMENTED_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def setting_env_names(model: type[BaseModel] = Settings, prefix: str = "CONVEYOR_") -> list[str]:
    """The environment variable of every setting, walking nested sections: `CONVEYOR_LIMITS__MAX_PENDING_JOBS`."""
    names = []
    for field_name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(setting_env_names(annotation, f"{prefix}{field_name.upper()}__"))
        else:
            names.append(f"{prefix}{field_name.upper()}")
    return names


def block_names() -> list[str]:
    return default_registry().names()


def route_labels() -> list[str]:
    """`METHOD path` for every API route of the app (built without its lifespan, so nothing is opened).

    FastAPI 0.165 keeps included routers unflattened in `app.routes`, so the routes are read from the OpenAPI
    schema it generates from them; `APIRoute`s found directly in `app.routes` (older FastAPI flattens them
    there, and they may be hidden from the schema) are added too.
    """
    app = create_app()
    labels = {
        f"{method.upper()} {path}"
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method.upper() in HTTP_METHODS
    }
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path not in UNDOCUMENTED_ROUTES:
            labels.update(f"{method} {route.path}" for method in (route.methods or set()) & HTTP_METHODS)
    return sorted(labels)


def subpackages() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(conveyor.__path__) if info.ispkg)


def cli_commands() -> list[str]:
    """Every leaf command of the `conveyor` CLI, as typed: `conveyor recipes import`."""
    import typer

    from conveyor.cli import app

    def walk(command: Any, path: str) -> list[str]:
        # Typer vendors its own click, so groups are recognised by their `commands`, not by class.
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            return [path]
        return [leaf for name, sub in subcommands.items() for leaf in walk(sub, f"{path} {name}")]

    return sorted(walk(typer.main.get_command(app), "conveyor"))


def test_the_walks_find_what_they_should() -> None:
    """Guards the walks below: an empty or wrong list would make every documentation test pass vacuously."""
    assert "CONVEYOR_HOST" in setting_env_names()
    assert "CONVEYOR_LIMITS__MAX_PENDING_JOBS" in setting_env_names()
    assert "CONVEYOR_LIMITS" not in setting_env_names()
    assert {"chat_input", "recipe_output", "text_template"} <= set(block_names())
    assert {"POST /api/v1/jobs", "GET /api/v1/jobs/{job_id}/events"} <= set(route_labels())
    assert {"api", "blocks", "engine", "jobs", "recipes", "store"} <= set(subpackages())
    assert {"conveyor serve", "conveyor recipes import"} <= set(cli_commands())


@pytest.mark.parametrize("env_name", setting_env_names())
def test_setting_is_documented(env_name: str) -> None:
    assert f"`{env_name}`" in _read("settings.md"), f"{env_name} is not in docs/settings.md"


@pytest.mark.parametrize("name", block_names())
def test_block_is_documented(name: str) -> None:
    headings = re.findall(r"^### (\S+)\s*$", _read("blocks.md"), flags=re.MULTILINE)
    assert name in headings, f"docs/blocks.md has no '### {name}' section"


@pytest.mark.parametrize("label", route_labels())
def test_route_is_documented(label: str) -> None:
    assert f"`{label}`" in _read("api.md"), f"`{label}` is not in docs/api.md"


@pytest.mark.parametrize("package", subpackages())
def test_part_is_on_the_architecture_map(package: str) -> None:
    assert f"`{package}/`" in _read("architecture.md"), f"docs/architecture.md does not mention `{package}/`"


@pytest.mark.parametrize("page", ["architecture.md", "recipes.md", "blocks.md", "settings.md", "api.md"])
def test_relative_links_point_at_existing_pages(page: str) -> None:
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", _read(page)):
        assert (DOCS / target).is_file(), f"docs/{page} links to missing {target}"


@pytest.mark.parametrize("command", cli_commands())
def test_cli_command_is_documented(command: str) -> None:
    assert f"`{command}" in _read("api.md"), f"`{command}` is not in docs/api.md"


def test_documented_blocks_exist() -> None:
    headings = re.findall(r"^### (\S+)\s*$", _read("blocks.md"), flags=re.MULTILINE)
    assert sorted(set(headings) - set(block_names())) == []


def test_documented_routes_exist() -> None:
    documented = re.findall(r"`((?:GET|POST|PUT|PATCH|DELETE) /api/\S+)`", _read("api.md"))
    assert sorted(set(documented) - set(route_labels())) == []


def test_documented_settings_exist() -> None:
    documented = set(re.findall(r"`(CONVEYOR_[A-Z0-9_]*[A-Z0-9])`", _read("settings.md")))
    assert sorted(documented - set(setting_env_names()) - {"CONVEYOR_URL"}) == []
