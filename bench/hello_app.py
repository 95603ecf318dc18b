"""Hello world on Conveyor's HTTP stack: FastAPI on uvicorn with uvloop, httptools and no access log.

`python bench/hello_app.py PORT` serves on 127.0.0.1:PORT
  - `GET /hello`: `{"hello": "world"}`, the hello-world baseline;
  - `POST /echo`: a body shaped like a job submission, validated by a pydantic model like Conveyor's, answered
    with 202 and a small JSON document: the framework's own floor for a submit, with no database behind it.
The HTTP benchmark compares Conveyor's figures with these, measured by the same tool in the same run.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

# The same FastAPI options as Conveyor's app (native telemetry off, as `CONVEYOR_TELEMETRY` defaults).
app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False})


class Submission(BaseModel):
    """The shape of `POST /api/v1/jobs`'s body."""

    model_config = ConfigDict(extra="forbid")

    recipe: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict)
    revision: int | None = Field(default=None, ge=1)
    priority: int = Field(default=0, ge=-100, le=100)


@app.get("/hello")
async def hello() -> dict[str, Any]:
    return {"hello": "world"}


@app.post("/echo", status_code=202)
async def echo(body: Submission, idempotency_key: str | None = Header(default=None, max_length=255)) -> JSONResponse:
    return JSONResponse({"recipe": body.recipe, "state": "pending", "priority": body.priority}, status_code=202)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
