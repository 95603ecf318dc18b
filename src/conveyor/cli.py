"""The `conveyor` command: serve, worker, migrate, run, recipes, users, token, keys; `models` is `cli_models`."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import typer

from conveyor.cli_models import models_app
from conveyor.cli_support import check_secret, console, err_console, load_settings, print_error, with_runtime
from conveyor.errors import ConveyorError
from conveyor.settings import Settings

app = typer.Typer(help="Conveyor: runs AI recipes as durable jobs behind a REST API.", no_args_is_help=True)
recipes_app = typer.Typer(help="Manage recipes in the store.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
users_app = typer.Typer(help="Manage users.", no_args_is_help=True)
app.add_typer(users_app, name="users")
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")


@app.command()
def migrate() -> None:
    """Brings the database schema to the newest revision."""
    from conveyor.store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.database_url)
    console.print(f"database at {_redact(settings.database_url)} is up to date")


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to bind (CONVEYOR_HOST, default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (CONVEYOR_PORT, default 1688)."),
    data_dir: Path | None = typer.Option(None, help="Data directory (CONVEYOR_DATA_DIR, default ./.conveyor)."),
    executor: str | None = typer.Option(
        None,
        help="`local` (run jobs in this process) or `celery` (send them to `conveyor worker`s); "
        "CONVEYOR_EXECUTOR__KIND, default local.",
    ),
) -> None:
    """Migrates, seeds the demo recipes on first start, and serves the API."""
    import uvicorn

    from conveyor.app import create_app

    settings = load_settings(host=host, port=port, data_dir=data_dir)
    if executor is not None:
        settings = _with_executor(settings, executor)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_secret(settings)
    _migrate_in_child(settings.database_url)
    where = "Celery workers" if settings.executor.kind == "celery" else "this process"
    console.print(
        f"Conveyor serving on http://{settings.host}:{settings.port} (data in {settings.data_dir}; jobs run in {where})"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=settings.access_log,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )


def _with_executor(settings: Settings, kind: str) -> Settings:
    if kind not in ("local", "celery"):
        print_error(f"--executor must be local or celery, not {kind!r}")
        raise typer.Exit(2)
    return settings.model_copy(update={"executor": settings.executor.model_copy(update={"kind": kind})})


@app.command()
def worker(
    queues: str | None = typer.Option(
        None, help="Comma-separated queues to take jobs from (CONVEYOR_CELERY__QUEUES, default conveyor,conveyor.high)."
    ),
    concurrency: int | None = typer.Option(
        None, min=1, max=1000, help="Jobs run at once (CONVEYOR_CELERY__CONCURRENCY, default 8)."
    ),
    grace_s: float = typer.Option(
        10.0, "--grace", min=0, max=3600, help="On SIGTERM, seconds running jobs get before they go back to the queue."
    ),
) -> None:
    """Runs jobs that `conveyor serve --executor celery` sends, from the broker in CONVEYOR_CELERY__BROKER_URL."""
    from conveyor.executors.celery import run_worker

    settings = load_settings()
    settings = _with_executor(settings, "celery")
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else settings.celery.queues
    if not chosen:
        print_error("--queues names no queue")
        raise typer.Exit(2)
    check_secret(settings)
    _migrate_in_child(settings.database_url)
    console.print(
        f"Conveyor worker taking jobs from {', '.join(chosen)} "
        f"(database {_redact(settings.database_url)}, broker {_redact(settings.celery.broker_url.get_secret_value())})"
    )
    run_worker(settings, queues=chosen, concurrency=concurrency or settings.celery.concurrency, grace_s=grace_s)


def _migrate_in_child(database_url: str) -> None:
    """Migrates in a child process: Alembic stays out of the server's memory (about 10 MB of RSS)."""
    import subprocess
    import sys

    env = {**os.environ, "CONVEYOR_DATABASE__URL": database_url}
    done = subprocess.run([sys.executable, "-m", "conveyor", "migrate"], env=env, check=False)
    if done.returncode != 0:
        print_error("migrating the database failed; the server was not started")
        raise typer.Exit(done.returncode)


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def _read_recipe_file(path: Path) -> Any:
    from conveyor.recipes.model import parse_recipe_text

    kind = "application/yaml" if path.suffix.lower() in (".yaml", ".yml") else "application/json"
    return parse_recipe_text(path.read_bytes(), kind)


@recipes_app.command("import")
def recipes_import(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Omnitool files: import unsupported nodes disabled instead of refusing."
    ),
) -> None:
    """Saves recipe files (YAML or JSON, or Omnitool recipe JSON); a recipe whose id exists gets a new revision."""

    async def work(rt: Any) -> None:
        from conveyor.recipes.omnitool import is_omnitool_recipe, read_omnitool
        from conveyor.store.recipes import recipe_exists_any

        for path in files:
            data = _read_recipe_file(path)
            if is_omnitool_recipe(data):
                imported = read_omnitool(
                    data, rt.registry, allow_missing=allow_missing, max_nodes=rt.settings.limits.max_recipe_nodes
                )
                data = imported.doc
                for warning in imported.warnings:
                    where = f"node {warning['node']} ({warning['name']})" if warning["node"] else "recipe"
                    err_console.print(f"[yellow]warning:[/yellow] {path}: {where}: {warning['message']}")
            ident = data.get("id") if isinstance(data, dict) else None
            if ident and await recipe_exists_any(rt.db, ident):
                row = await rt.recipes.update(ident, data)
            else:
                row = await rt.recipes.create(data)
            console.print(f"{path}: {row['name']} ({row['id']}) revision {row['latest_revision']}")

    with_runtime(work)


@recipes_app.command("list")
def recipes_list() -> None:
    """Lists the recipes."""
    from rich.table import Table

    async def work(rt: Any) -> None:
        from conveyor.store.recipes import read_recipes

        table = Table("id", "name", "revision")
        for row in await read_recipes(rt.db, limit=500):
            table.add_row(row["id"], row["name"], str(row["latest_revision"]))
        console.print(table)

    with_runtime(work)


@recipes_app.command("show")
def recipes_show(recipe: str) -> None:
    """Prints a recipe's newest revision (by id or name) as JSON."""

    async def work(rt: Any) -> None:
        row = await rt.recipes.get(recipe)
        body = await rt.recipes.body(row["id"], row["latest_revision"])
        console.print_json(json.dumps({"id": row["id"], "revision": row["latest_revision"], **body}))

    with_runtime(work)


@recipes_app.command("export")
def recipes_export(
    recipe: str = typer.Argument(..., help="Recipe id or name."),
    export_format: str = typer.Option("native", "--format", help="`native` (our document) or `omnitool` (its JSON)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: standard output)."),
) -> None:
    """Writes a recipe's newest revision as a native document (JSON, or YAML for a .yaml/.yml file) or Omnitool JSON."""
    if export_format not in ("native", "omnitool"):
        print_error(f"--format must be native or omnitool, not {export_format!r}")
        raise typer.Exit(2)

    async def work(rt: Any) -> str:
        from conveyor.recipes.omnitool import export_omnitool

        row = await rt.recipes.get(recipe)
        doc = {"id": row["id"], **await rt.recipes.body(row["id"], row["latest_revision"])}
        if export_format == "omnitool":
            return json.dumps(export_omnitool(doc), indent=2, ensure_ascii=False) + "\n"
        if output is not None and output.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"

    text = with_runtime(work)
    if output is None:
        import sys

        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")


@recipes_app.command("validate")
def recipes_validate(files: list[Path] = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Checks recipe files and lists every problem by node; exits 1 when any is invalid."""
    from conveyor.blocks import default_registry
    from conveyor.recipes.graph import compile_recipe

    registry = default_registry()
    failed = False
    for path in files:
        try:
            compile_recipe(_read_recipe_file(path), registry)
            console.print(f"{path}: valid")
        except ConveyorError as exc:
            failed = True
            print_error(f"{path}: {exc.message}", exc.details)
    if failed:
        raise typer.Exit(1)


@app.command()
def run(
    recipe: str = typer.Argument(..., help="Recipe id or name."),
    inputs: list[str] = typer.Option([], "--input", "-i", help="name=value, or name=@file to upload a file."),
    server: str | None = typer.Option(None, help="Server URL (default http://CONVEYOR_HOST:CONVEYOR_PORT)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the job."),
    token: str | None = typer.Option(
        None, envvar="CONVEYOR_TOKEN", help="Bearer token (default: a 1-hour exec token of the admin, made here)."
    ),
) -> None:
    """Submits a job to a running server, shows node progress live, and prints the outputs."""
    from conveyor.run_client import run_recipe

    settings = load_settings()
    url = server or os.environ.get("CONVEYOR_URL") or f"http://{settings.host}:{settings.port}"
    if not token:
        token = _local_token(settings, timeout)
    try:
        ok = asyncio.run(run_recipe(url, recipe, inputs, token=token, timeout_s=timeout, console=console))
    except httpx.HTTPError as exc:
        print_error(f"cannot reach the server at {url}: {exc}")
        raise typer.Exit(2) from None
    except ConveyorError as exc:
        print_error(exc.message, exc.details)
        raise typer.Exit(1) from None
    if not ok:
        raise typer.Exit(1)


def _local_token(settings: Settings, timeout_s: float) -> str:
    """An exec token of the admin, made from this machine's store (for `run` against a local server)."""
    from conveyor.auth.tokens import make_scope

    async def work(rt: Any) -> str:
        admin = await rt.auth.get_user(settings.auth.admin_name)
        ttl_ms = int(max(timeout_s, 0) * 1000) + 3_600_000
        issued = await rt.auth.issue_token(admin, [make_scope("exec", "Workflow")], ttl_ms)
        return str(issued.token)

    return with_runtime(work)


@users_app.command("create")
def users_create(
    name: str = typer.Argument(..., help="User name (unique)."),
    admin: bool = typer.Option(False, "--admin", help="Make the user an admin."),
    email: str | None = typer.Option(None, help="Email address."),
    org: str | None = typer.Option(None, help="Organization (created if missing)."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
) -> None:
    """Creates a user; without --password-stdin the user can only get tokens from `conveyor token`."""
    import sys

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None

    async def work(rt: Any) -> None:
        row = await rt.auth.create_user(name, password=password, is_admin=admin, email=email, org=org)
        console.print(f"created user {row['name']} ({row['id']})")

    with_runtime(work)


@users_app.command("list")
def users_list() -> None:
    """Lists users."""
    from rich.table import Table

    async def work(rt: Any) -> None:
        table = Table("id", "name", "admin", "disabled", "org", "email")
        for row in await rt.auth.list_users():
            table.add_row(
                row["id"], row["name"], "yes" if row["is_admin"] else "", "yes" if row["disabled"] else "",
                row["org"] or "", row["email"] or "",
            )  # fmt: skip
        console.print(table)

    with_runtime(work)


@users_app.command("disable")
def users_disable(user: str = typer.Argument(..., help="User name or id.")) -> None:
    """Disables a user: every token of theirs stops working at once."""
    with_runtime(lambda rt: _set_disabled(rt, user, True))


@users_app.command("enable")
def users_enable(user: str = typer.Argument(..., help="User name or id.")) -> None:
    """Enables a disabled user again."""
    with_runtime(lambda rt: _set_disabled(rt, user, False))


async def _set_disabled(rt: Any, user: str, disabled: bool) -> None:
    row = await rt.auth.set_disabled(user, disabled)
    console.print(f"user {row['name']} is {'disabled' if row['disabled'] else 'enabled'}")


@app.command()
def token(
    action: str = typer.Argument(..., help="e.g. `exec` to run recipes, `manage` for everything; `revoke` revokes."),
    subject: str = typer.Argument(..., help="e.g. `Workflow` or `all`; for `revoke`, the tokenId."),
    expires_in: int | None = typer.Argument(None, help="Lifetime in milliseconds (as Omnitool's generateJwtToken)."),
    recipes: list[str] | None = typer.Argument(None, help="Recipe ids the token is limited to."),
    user: str | None = typer.Option(None, "--user", help="Issuing user (default: the admin)."),
) -> None:
    """Omnitool's `/generateJwtToken <action> <subject> <expires_in_ms> [recipe_id…]`: prints the JWT last.

    `conveyor token revoke <tokenId>` revokes one.
    """
    if action == "revoke":
        with_runtime(lambda rt: _revoke(rt, subject))
        return
    if expires_in is None:
        print_error("expires_in (milliseconds) is required, e.g. `conveyor token exec Workflow 3600000`")
        raise typer.Exit(2)
    settings = load_settings()

    async def work(rt: Any) -> None:
        from conveyor.auth.tokens import make_scope

        issuer = await rt.auth.get_user(user or settings.auth.admin_name)
        issued = await rt.auth.issue_token(issuer, [make_scope(action, subject, recipes or [])], expires_in)
        err_console.print(f"tokenId {issued.token_id} for {issuer['name']}, expires at {issued.expires_at_ms} ms")
        print(issued.token)  # alone on the last line, for scripts

    with_runtime(work)


async def _revoke(rt: Any, token_id: str) -> None:
    await rt.auth.revoke_token(token_id)
    console.print(f"revoked token {token_id}")


@keys_app.command("create")
def keys_create(
    kind: str = typer.Option(..., "--kind", help="personal, org or recipe."),
    name: str = typer.Option(..., "--name", help="A name to recognise the key by."),
    recipe: str | None = typer.Option(None, "--recipe", help="The recipe (id or name) a recipe key runs."),
    user: str | None = typer.Option(None, "--user", help="Owning user (default: the admin)."),
) -> None:
    """Creates an API key: prints the key alone on the last line, its webhook secret on standard error."""
    settings = load_settings()

    async def work(rt: Any) -> None:
        owner = await rt.auth.get_user(user or settings.auth.admin_name)
        recipe_id = None
        if recipe is not None:
            recipe_id = (await rt.recipes.get(recipe, viewer=None if owner["is_admin"] else owner["id"]))["id"]
        created = await rt.auth.keys.create(owner, kind, name, recipe_id=recipe_id)
        err_console.print(f"key {created.row['id']} ({kind}) for {owner['name']}; webhook secret:")
        err_console.print(created.webhook_secret, highlight=False)
        print(created.key)  # alone on the last line, for scripts; never shown again

    with_runtime(work)


@keys_app.command("list")
def keys_list(user: str | None = typer.Option(None, "--user", help="Only this user's keys (default: all).")) -> None:
    """Lists API keys, one a line, tab-separated (never the keys or their secrets)."""

    async def work(rt: Any) -> None:
        owner = (await rt.auth.get_user(user))["id"] if user else None
        # Plain lines rather than a table: ids and prefixes must not be cut to fit a terminal.
        print("id\tkind\tname\tprefix\tuser_id\trecipe\trevoked")
        for row in await rt.auth.keys.list_keys(owner):
            fields = (row["id"], row["kind"], row["name"], row["prefix"], row["user_id"], row["recipe_id"] or "")
            print("\t".join((*fields, "revoked" if row["revoked_at"] else "")))

    with_runtime(work)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id.")) -> None:
    """Revokes an API key: it stops working at once, on every server process."""

    async def work(rt: Any) -> None:
        await rt.auth.keys.revoke(key_id, user_id=None)
        console.print(f"revoked key {key_id}")

    with_runtime(work)


def main() -> None:
    app()
