"""What the `conveyor` commands share: settings, the consoles, errors printed plainly, a runtime to work in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from conveyor.errors import ConveyorError
from conveyor.settings import Settings

console = Console()
err_console = Console(stderr=True)
T = TypeVar("T")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `.env`), with the options given on the command line over them."""
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)


def check_secret(settings: Settings) -> None:
    """Stops with a clear message, not a traceback, when the JWT signing secret cannot be used."""
    from conveyor.auth.secret import SecretConfigError, load_signing_secret

    try:
        load_signing_secret(settings.auth.jwt_secret.get_secret_value(), settings.data_dir)
    except SecretConfigError as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None


def with_runtime(work: Callable[[Any], Awaitable[T]]) -> T:
    """Runs `work` on a migrated store's runtime (no executor); a `ConveyorError` is printed and exits 1."""
    from conveyor.runtime import open_runtime
    from conveyor.store.migrate import upgrade

    settings = load_settings()
    check_secret(settings)
    upgrade(settings.database_url)

    async def main() -> T:
        async with open_runtime(settings, run_executor=False) as rt:
            return await work(rt)

    try:
        return asyncio.run(main())
    except ConveyorError as exc:
        print_error(exc.message, exc.details)
        raise typer.Exit(1) from None


def print_error(message: str, details: Any = None) -> None:
    """An error on standard error, with each problem of `details` (a list of dicts) on a line of its own."""
    err_console.print(f"[red]error:[/red] {message}")
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict):
                where = item.get("node") or item.get("field") or ".".join(map(str, item.get("loc", []))) or "recipe"
                if item.get("node") and item.get("name"):  # an Omnitool import names the node's block too
                    where = f"{where} ({item['name']})"
                err_console.print(f"  - {where}: {item.get('message')}")
