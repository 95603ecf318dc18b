"""`conveyor run`: a small client of the native API (upload, submit, follow events, print outputs)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from conveyor.errors import ConveyorError, ValidationError

MEDIA_TYPES = {"images", "audio", "video", "documents"}


def _api_error(response: httpx.Response) -> ConveyorError:
    try:
        error = response.json()["error"]
        exc = ConveyorError(error["message"], details=error.get("details"))
    except (ValueError, KeyError, TypeError):
        exc = ConveyorError(f"server answered {response.status_code}: {response.text[:200]}")
    return exc


def _coerce(name: str, kind: str, raw: str) -> Any:
    """A command-line value as the recipe field's type; `ValidationError` naming the input when it is not one."""
    if kind == "number":
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            number = float(raw)
        except ValueError:
            raise ValidationError(f"--input {name}: not a number: {raw!r}") from None
        if not math.isfinite(number):  # JSON has no infinity or NaN
            raise ValidationError(f"--input {name}: not a finite number: {raw!r}")
        return number
    if kind == "boolean":
        return raw.lower() in ("1", "true", "yes", "on")
    if kind == "json":
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"--input {name}: not valid JSON: {exc}") from None
    return raw


async def _upload(client: httpx.AsyncClient, path: Path) -> str:
    with path.open("rb") as handle:
        response = await client.post("/api/v1/files", files={"file": (path.name, handle)})
    if response.status_code != 201:
        raise _api_error(response)
    fid: str = response.json()["items"][0]["fid"]
    return fid


async def _build_inputs(client: httpx.AsyncClient, fields: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise ValidationError(f"--input {pair!r} is not name=value")
        kind = fields.get(name, {}).get("type", "text")
        if raw.startswith("@"):
            path = Path(raw[1:])
            if not path.is_file():
                raise ValidationError(f"--input {name}: no file {path}")
            value: Any = await _upload(client, path)
        else:
            value = _coerce(name, kind, raw)
        if kind in MEDIA_TYPES:
            inputs.setdefault(name, []).append(value)
        else:
            inputs[name] = value
    return inputs


async def run_recipe(
    url: str, recipe: str, pairs: list[str], *, token: str, timeout_s: float, console: Console
) -> bool:
    """Runs `recipe` on the server at `url`; prints progress and outputs; True when the job succeeded."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, timeout=30.0, headers=headers) as client:
        response = await client.get(f"/api/v1/recipes/{recipe}")
        if response.status_code != 200:
            raise _api_error(response)
        fields = response.json().get("inputs", {})
        inputs = await _build_inputs(client, fields, pairs)
        response = await client.post("/api/v1/jobs", json={"recipe": recipe, "inputs": inputs})
        if response.status_code not in (200, 202):
            raise _api_error(response)
        job_id = response.json()["id"]
        console.print(f"[dim]job {job_id}[/dim]", highlight=False)
        await _follow(client, job_id, timeout_s, console)
        response = await client.get(f"/api/v1/jobs/{job_id}/result")
        result = response.json()
        if result.get("state") != "succeeded":
            error = result.get("error") or {}
            console.print(f"[red]job {result.get('state')}[/red]: {error.get('message', '')}", highlight=False)
            return False
        for name, value in (result.get("outputs") or {}).items():
            if isinstance(value, str):
                console.print(f"[bold]{name}[/bold]:", highlight=False)
                console.print(value, highlight=False, markup=False)
            else:
                console.print(f"[bold]{name}[/bold]: {json.dumps(value)}", highlight=False, markup=False)
        return True


async def _follow(client: httpx.AsyncClient, job_id: str, timeout_s: float, console: Console) -> None:
    """Prints node events from the job's SSE stream until its terminal state (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    timeout = httpx.Timeout(30.0, read=max(1.0, timeout_s))
    async with client.stream("GET", f"/api/v1/jobs/{job_id}/events", timeout=timeout) as response:
        if response.status_code != 200:
            raise _api_error(response)
        async for line in response.aiter_lines():
            if time.monotonic() > deadline:
                break
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            kind, node = event.get("kind"), event.get("node")
            if kind == "finished":
                console.print(f"  [green]✓[/green] {node} ({event.get('duration_ms', 0):.1f} ms)", highlight=False)
            elif kind == "failed":
                message = (event.get("error") or {}).get("message", "")
                console.print(f"  [red]✗[/red] {node}: {message}", highlight=False, markup=False)
            elif kind == "retried":
                console.print(f"  [yellow]↻[/yellow] {node} retrying", highlight=False)
            elif kind == "state" and event.get("state") in ("succeeded", "failed", "cancelled"):
                break
