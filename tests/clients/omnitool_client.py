"""Runs a recipe through the REST API described in Omnitool's "Run Recipe via REST API" page, and nothing else.

Written from that page alone: a JWT (from `/generateJwtToken exec Workflow <ms>`) goes in `Authorization:
Bearer`, `POST /api/v1/workflow/exec` takes `{"workflow": "<recipe_id>", "args": {...}}` and answers
`{"result": {"status": "JOB_STARTED", "jobId", "sender"}}`, and "once a job is finished"
`GET /api/v1/workflow/results?jobId=<job_id>` gives its results. The page does not say how to tell a finished
job, so this client asks for the results until it gets them (a 2xx answer that is not 202 Accepted, or, as
some servers say "not yet", a 404), within a deadline.

    python omnitool_client.py --url http://127.0.0.1:1688 --token <jwt> --recipe <recipe_id> --text "A horse"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx


def run_recipe(
    url: str, token: str, recipe_id: str, args: dict[str, Any], *, poll_s: float = 0.5, timeout_s: float = 120.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Starts the recipe and waits for its results; returns (the start answer, the results)."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
        started = http.post("/api/v1/workflow/exec", json={"workflow": recipe_id, "args": args})
        started.raise_for_status()
        start: dict[str, Any] = started.json()
        if start.get("result", {}).get("status") != "JOB_STARTED":
            raise RuntimeError(f"the recipe did not start: {start}")
        job_id = start["result"]["jobId"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = http.get("/api/v1/workflow/results", params={"jobId": job_id})
            if answer.status_code not in (202, 404):
                answer.raise_for_status()
                results: dict[str, Any] = answer.json()
                return start, results
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id} gave no results within {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:1688", help="The server (the page's default).")
    parser.add_argument("--token", required=True, help="A JWT from /generateJwtToken exec Workflow <ms>.")
    parser.add_argument("--recipe", required=True, help="The recipe id.")
    parser.add_argument("--text", help="args.text")
    parser.add_argument("--images", action="append", help="args.images: an image URL (repeatable).")
    parser.add_argument("--poll", type=float, default=0.5, help="Seconds between asks for the results.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds to wait for the results.")
    options = parser.parse_args(argv)
    args: dict[str, Any] = {}
    if options.text is not None:
        args["text"] = options.text
    if options.images:
        args["images"] = options.images
    try:
        start, results = run_recipe(
            options.url, options.token, options.recipe, args, poll_s=options.poll, timeout_s=options.timeout
        )
    except (httpx.HTTPError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("job start", json.dumps(start))
    print("results", json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
