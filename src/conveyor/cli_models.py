"""`conveyor models`: data models' connections, YAML, validation and branches (operator only: HTTP cannot add a
connection, because a connection is a path or URL on the server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from conveyor.cli_support import console, print_error, with_runtime

models_app = typer.Typer(help="Manage data models (connections, YAML, branches).", no_args_is_help=True)


def _model_service(rt: Any) -> Any:
    from conveyor.analytics.store import ModelService

    return ModelService(rt.db, check_timeout_s=rt.settings.analytics.check_timeout_s)


def _read_model_dir(directory: Path) -> dict[str, str]:
    """A model's YAML files from a directory: `model`, `*.view` and `*.topic` (other files are left alone)."""
    files = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.name == "model" or path.suffix in (".view", ".topic")):
            files[path.name] = path.read_text(encoding="utf-8")
    return files


@models_app.command("add")
def models_add(
    name: str = typer.Option(..., "--name", help="The model's name; its connection gets the same name."),
    duckdb: Path | None = typer.Option(None, "--duckdb", help="A DuckDB database file (opened read-only)."),
    sqlite: Path | None = typer.Option(None, "--sqlite", help="A SQLite database file (opened read-only)."),
    postgres: str | None = typer.Option(
        None, "--postgres", help="A PostgreSQL URL, or `-` to read it from standard input (keeps a password out of ps)."
    ),
    yaml_dir: Path | None = typer.Option(
        None, "--yaml-dir", exists=True, file_okay=False, help="A directory of `model`, `*.view`, `*.topic` files."
    ),
) -> None:
    """Registers a database as a connection and makes a model on it (operator only: HTTP cannot add connections)."""
    import sys

    targets = [
        (kind, value) for kind, value in (("duckdb", duckdb), ("sqlite", sqlite), ("postgres", postgres)) if value
    ]
    if len(targets) != 1:
        print_error("give exactly one of --duckdb PATH, --sqlite PATH, --postgres URL")
        raise typer.Exit(2)
    kind, value = targets[0]
    target = sys.stdin.readline().strip() if value == "-" else str(value)
    files = _read_model_dir(yaml_dir) if yaml_dir is not None else {}

    async def work(rt: Any) -> None:
        row = await _model_service(rt).add_model(name, kind, target, files=files)
        console.print(f"model {row['name']} on a {kind} connection of that name, with {len(files)} files")
        print(row["id"])  # alone on the last line, for scripts

    with_runtime(work)


@models_app.command("list")
def models_list() -> None:
    """Lists the models with their connection (name and kind, never its target), version and branches."""
    from rich.table import Table

    async def work(rt: Any) -> None:
        models = _model_service(rt)
        connections = {row["id"]: row for row in await models.connections()}
        page = await models.list_models(filters={"modelKind": "SHARED"}, page_size=100)
        branches = await models.branches([row["id"] for row in page.rows])
        table = Table()
        for column in ("name", "connection", "version", "branches"):
            table.add_column(column, overflow="fold")  # folded, never cut: names and ids are what one copies
        table.add_column("id", no_wrap=True, min_width=36)
        for row in page.rows:
            connection = connections.get(row["connection_id"])
            where = f"{connection['name']} ({connection['kind']})" if connection else "?"
            names = ", ".join(b["name"] for b in branches[row["id"]])
            table.add_row(row["name"], where, str(row["version"]), names, row["id"])
        console.print(table)

    with_runtime(work)


@models_app.command("validate")
def models_validate(
    model: str = typer.Argument(..., help="Model id or name."),
    branch: str | None = typer.Option(None, "--branch", help="Validate this branch (name) of the model."),
    database: bool = typer.Option(True, "--database/--no-database", help="Also check tables and columns."),
) -> None:
    """Lists every problem of a model (its YAML, and its tables and columns in the database); exits 1 on errors."""

    async def work(rt: Any) -> bool:
        models = _model_service(rt)
        row = await models.find_model(model)
        branch_id = (await models.branch_by_name(row["id"], branch))["id"] if branch else None
        problems = await models.validate(row["id"], branch_id, check_database=database)
        for problem in problems:
            place = ".".join(p for p in (problem.view, problem.field) if p) or problem.file or "model"
            colour = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{colour}]{problem.severity}[/{colour}] {place}: {problem.message}", highlight=False)
        errors = sum(problem.severity == "error" for problem in problems)
        console.print(f"{row['name']}: {'valid' if not errors else f'{errors} errors'}, {len(problems)} problems")
        return bool(errors == 0)

    if not with_runtime(work):
        raise typer.Exit(1)


@models_app.command("branch")
def models_branch(
    model: str = typer.Argument(..., help="Model id or name."),
    name: str | None = typer.Argument(None, help="Branch name: created unless --delete or --merge (none: list)."),
    delete: bool = typer.Option(False, "--delete", help="Delete the branch."),
    merge: bool = typer.Option(False, "--merge", help="Apply the branch to the model, then delete it."),
) -> None:
    """Lists a model's branches, or creates, deletes or merges one."""
    if ((delete or merge) and name is None) or (delete and merge):
        print_error("--delete and --merge each need a branch name, and not both at once")
        raise typer.Exit(2)

    async def work(rt: Any) -> None:
        models = _model_service(rt)
        row = await models.find_model(model)
        if name is None:
            print("id\tname\tversion")  # plain lines: ids must not be cut to fit a terminal
            for branch in (await models.branches([row["id"]]))[row["id"]]:
                print(f"{branch['id']}\t{branch['name']}\t{branch['version']}")
        elif delete:
            await models.delete_branch(row["id"], name)
            console.print(f"deleted branch {name} of {row['name']}")
        elif merge:
            version = await models.merge_branch(row["id"], name)
            console.print(f"merged branch {name} into {row['name']} (version {version})")
        else:
            branch = await models.create_branch(row["id"], name)
            console.print(f"created branch {name} of {row['name']}")
            print(branch["id"])  # alone on the last line, for scripts

    with_runtime(work)
