"""AI jobs: the bundled local model's speed, one Omni AI job end to end, and the AI pipeline's own overhead.

1. Local model (in process): `conveyor.llm.local.LocalModel` on the bundled SmolLM2-135M (llama-cpp-python). The
   load is timed with a one-token answer; then N short completions (`max_tokens` 128, temperature 0), streamed so
   the time to the first token is known: completion tokens/s = tokens after the first ÷ time after the first;
   prompt tokens/s = prompt tokens ÷ time to the first token, on prompts that differ from their first words so
   llama.cpp's prefix cache cannot skip them.
2. An AI job end to end: a real `conveyor serve` (SQLite in a fresh data directory, local executor, demo model
   seeded, `CONVEYOR_LLM__PROVIDER=local`), the demo model's id from `GET /api/v1/models`, then `POST
   /api/v1/ai/jobs` ("Analyze sales trends by region for the past year") and `GET /api/v1/ai/jobs/{id}` polled
   until the job is terminal, then `GET .../result`, which must hold actions and a Markdown table. The first job
   is shown on its own (it loads the model and builds the demo database); p50 over the next ones; then one
   follow-up in the same conversation, which must reach `COMPLETE` too.
3. Pipeline overhead (in process): `conveyor.analytics.ask.ask` on the demo DuckDB file and model, with a
   `ChatModel` defined here that answers at once (a valid structured query for the `sales` topic, checked against
   the request's schema as a provider does, and a one-sentence headline). Overhead = the time of `ask` minus the
   time spent inside the model's calls, after a warm-up. The split is read from `ask`'s progress calls and the
   model's call times; compile, guard and the read-only query are also timed alone on the same inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import io
import pstats
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from common import CpuWatch, conveyor_server, json_out, percentile, request, table
from conveyor.analytics.ask import Answer, ask
from conveyor.analytics.connect import ConnectionSpec, duckdb_read_only, run_read_only
from conveyor.analytics.demo import LAST_DAY, build_demo_database, demo_model_files
from conveyor.analytics.guard import guard_sql
from conveyor.analytics.query import StructuredQuery, compile_query
from conveyor.analytics.semantic import SemanticModel, load_model, topic_tables
from conveyor.llm.base import ChatMessage, ChatRequest, ChatResult, ChatStream, Usage, structured_problem
from load import new_event_loop

TARGET_OVERHEAD_MS = 20.0
QUESTION = "Analyze sales trends by region for the past year"
FOLLOW_UP = "And only for Europe?"
# `ask` resolves "the past year" against this day: the demo data ends on `LAST_DAY`, so pinning the day keeps the
# in-process figure's query (and its row count) the same whatever the calendar says.
TODAY = LAST_DAY + dt.timedelta(days=1)
# The instant model's answers: what a good model answers for the question (code's hints merge into it anyway).
QUERY_ANSWER: dict[str, Any] = {
    "fields": ["orders.order_date", "regions.name", "orders.revenue"],
    "time_grain": "month",
    "sorts": [{"column_name": "orders.order_date", "sort_descending": False}],
}
HEADLINE = "Revenue grew in every region over the past year, with North America the largest."
COMPLETION_TOKENS = 128
PROMPT_TEXT = "Write a short paragraph on what this data model lets a shop learn about its sales by region."
POLL_S = 0.1  # a job takes seconds; polling faster would take CPU from the model it waits for
FIRST_JOB_TIMEOUT_S = 300.0  # the model's load and the demo database's build are in it
JOB_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 30.0


# --- 1. the local model ------------------------------------------------------------------------------------------


async def _timed_stream(model: Any, req: ChatRequest) -> tuple[float, float, ChatResult]:
    """Seconds to the first delta, seconds in all, and the result of one streamed answer."""
    started = time.perf_counter()
    first = 0.0
    async with model.stream(req) as deltas:
        async for _delta in deltas:
            if not first:
                first = time.perf_counter() - started
        result = deltas.result
    assert result is not None
    return first, time.perf_counter() - started, result


def _context() -> str:
    """A prompt's bulk like the pipeline's (a view and a topic of the demo model, ~450 tokens)."""
    files = demo_model_files()
    return f"Data model:\n{files['orders.view']}\n{files['sales.topic']}"


async def local_model(completions: int) -> dict[str, Any]:
    """Load time, then completion and prompt tokens/s of `completions` short answers (see the module docstring)."""
    from conveyor.llm.local import LocalModel, bundled_model_path

    model = LocalModel()
    cpu = CpuWatch().start()
    started = time.perf_counter()
    await model.chat(ChatRequest(messages=(ChatMessage("user", "Hi"),), temperature=0.0, max_tokens=1))
    load_s = time.perf_counter() - started
    completion_rates, prompt_rates, answer_s, prompt_tokens, completion_tokens = [], [], [], [], []
    for i in range(completions):
        # The first words differ, so the whole prompt is evaluated each time (no prefix cache hit past them).
        req = ChatRequest(
            messages=(
                ChatMessage("system", f"Answer number {i + 1}. You are a concise writer.\n\n{_context()}"),
                ChatMessage("user", PROMPT_TEXT),
            ),
            temperature=0.0,
            max_tokens=COMPLETION_TOKENS,
        )
        first_s, total_s, result = await _timed_stream(model, req)
        usage = result.usage
        answer_s.append(total_s)
        prompt_tokens.append(usage.prompt_tokens)
        completion_tokens.append(usage.completion_tokens)
        if usage.completion_tokens > 1 and total_s > first_s:
            completion_rates.append((usage.completion_tokens - 1) / (total_s - first_s))
        if first_s > 0:
            prompt_rates.append(usage.prompt_tokens / first_s)
    path = bundled_model_path()
    used = cpu.stop()
    return {
        "others_cpu_s": used["others_s"],
        "wall_s": used["wall_s"],
        "model": f"{path.name if path else '?'} ({model.threads} threads)",
        "load_s": load_s,
        "completions": completions,
        "max_tokens": COMPLETION_TOKENS,
        "prompt_tokens": statistics.median(prompt_tokens),
        "completion_tokens": statistics.median(completion_tokens),
        "answer_p50_s": statistics.median(answer_s),
        "completion_tokens_per_s": statistics.median(completion_rates) if completion_rates else float("nan"),
        "prompt_tokens_per_s": statistics.median(prompt_rates) if prompt_rates else float("nan"),
    }


# --- 2. an AI job end to end on a real server ------------------------------------------------------------------


def _call(port: int, headers: Mapping[str, str], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = orjson.dumps(body) if body is not None else None
    return request(port, method, path, body=raw, timeout_s=REQUEST_TIMEOUT_S, headers=headers)


def demo_model_id(port: int, headers: Mapping[str, str]) -> str:
    status, body = _call(port, headers, "GET", "/api/v1/models?name=Demo%20sales")
    if status != 200 or not body.get("records"):
        raise RuntimeError(f"listing models answered {status}: {body}")
    return str(body["records"][0]["id"])


def run_ai_job(
    port: int, headers: Mapping[str, str], model_id: str, prompt: str, timeout_s: float, conversation: str | None
) -> dict[str, Any]:
    """Submits one AI job, polls its status until it is terminal (bounded), reads its result; its figures."""
    submit: dict[str, Any] = {"modelId": model_id, "prompt": prompt}
    if conversation:
        submit["conversationId"] = conversation
    started = time.perf_counter()
    status, body = _call(port, headers, "POST", "/api/v1/ai/jobs", submit)
    if status != 201:
        raise RuntimeError(f"submitting an AI job answered {status}: {body}")
    job_id, polls = body["jobId"], 0
    deadline = started + timeout_s
    while True:
        status, state = _call(port, headers, "GET", f"/api/v1/ai/jobs/{job_id}")
        polls += 1
        if status != 200:
            raise RuntimeError(f"reading AI job {job_id} answered {status}: {state}")
        if state["state"] in ("COMPLETE", "FAILED", "CANCELLED"):
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"AI job {job_id} not finished after {timeout_s:g} s: {state}")
        time.sleep(POLL_S)
    wall_s = time.perf_counter() - started
    if state["state"] != "COMPLETE":
        raise RuntimeError(f"AI job {job_id} ended {state['state']}: {state.get('error')}")
    status, result = _call(port, headers, "GET", f"/api/v1/ai/jobs/{job_id}/result")
    if status != 200:
        raise RuntimeError(f"reading AI job {job_id}'s result answered {status}: {result}")
    markdown = str(result.get("message") or "")
    has_table = any(line.startswith("|") and set(line) <= set("|-: ") for line in markdown.splitlines())
    if not result.get("actions") or not has_table:
        raise RuntimeError(f"AI job {job_id}'s result has no actions or no Markdown table: {result}")
    _, job = _call(port, headers, "GET", f"/api/v1/jobs/{job_id}")
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    node_ms = 0.0
    for node in (job or {}).get("nodes", {}).values():
        for key in usage:
            usage[key] += int((node.get("usage") or {}).get(key) or 0)
        node_ms = max(node_ms, float(node.get("duration_ms") or 0))
    queries = [a for a in result["actions"] if a.get("type") == "generate_query"]
    return {
        "job_id": job_id,
        "conversation_id": body["conversationId"],
        "wall_s": wall_s,
        "node_s": node_ms / 1000,
        "polls": polls,
        "actions": len(result["actions"]),
        "query_attempts": len(queries),
        "rows": (queries[-1].get("result") or {}).get("totalRowCount") if queries else None,
        "query": (queries[-1].get("result") or {}).get("query") if queries else None,
        "summary": str(result.get("resultSummary") or "")[:400],
        **usage,
    }


def end_to_end(jobs: int) -> dict[str, Any]:
    """The first AI job, `jobs` more (each in a new conversation), then one follow-up in the last conversation."""
    env = {"CONVEYOR_LLM__PROVIDER": "local", "CONVEYOR_SEED_DEMO": "true"}
    with conveyor_server(env) as (server, _data_dir):
        headers = server.headers
        model_id = demo_model_id(server.port, headers)
        cpu = CpuWatch(server.pid).start()
        first = run_ai_job(server.port, headers, model_id, QUESTION, FIRST_JOB_TIMEOUT_S, None)
        runs = [run_ai_job(server.port, headers, model_id, QUESTION, JOB_TIMEOUT_S, None) for _ in range(jobs)]
        last = runs[-1] if runs else first
        follow = run_ai_job(server.port, headers, model_id, FOLLOW_UP, JOB_TIMEOUT_S, last["conversation_id"])
        used = cpu.stop()
        status, conversation = _call(server.port, headers, "GET", f"/api/v1/ai/conversations/{last['conversation_id']}")
    if follow["conversation_id"] != last["conversation_id"]:
        raise RuntimeError(f"the follow-up went to another conversation: {follow}")
    messages = (conversation or {}).get("messages") if status == 200 else None
    walls = [r["wall_s"] for r in runs]
    return {
        "jobs": len(runs),
        "first_s": first["wall_s"],
        "p50_s": statistics.median(walls) if walls else float("nan"),
        "max_s": max(walls) if walls else float("nan"),
        "node_p50_s": statistics.median(r["node_s"] for r in runs or [first]),
        "server_cpu_s": used["server_s"],
        "others_cpu_s": used["others_s"],
        "wall_s": used["wall_s"],
        "follow_up_s": follow["wall_s"],
        "prompt_tokens": statistics.median(r["prompt_tokens"] for r in runs or [first]),
        "completion_tokens": statistics.median(r["completion_tokens"] for r in runs or [first]),
        "actions": last["actions"],
        "rows": last["rows"],
        "summary": last["summary"],
        "follow_up_summary": follow["summary"],
        "follow_up_rows": follow["rows"],
        "query": last["query"],
        "follow_up_query": follow["query"],
        "conversation_messages": len(messages) if isinstance(messages, list) else None,
    }


# --- 3. the pipeline's overhead with a model that answers at once -----------------------------------------------


class InstantModel:
    """A `ChatModel` that answers at once: `{"topic": "sales"}` or `QUERY_ANSWER` for a schema (checked against
    it, as a provider checks structured output), else `HEADLINE`. Records the start and end of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        started = time.perf_counter()
        result = self._answer(request)
        self.calls.append((started, time.perf_counter()))
        return result

    def stream(self, request: ChatRequest) -> ChatStream:
        async def source() -> AsyncGenerator[str | ChatResult, None]:
            result = await self.chat(request)
            yield result.text
            yield result

        return ChatStream(source())

    def _answer(self, request: ChatRequest) -> ChatResult:
        usage = Usage(prompt_tokens=sum(len(m.content) // 4 for m in request.messages), completion_tokens=20)
        schema = request.json_schema
        if schema is None:
            return ChatResult(HEADLINE, "stop", usage, "instant")
        properties = schema.get("properties", {})
        if "topic" in properties:
            value: dict[str, Any] = {"topic": "sales"}
        elif "fields" in properties:
            value = QUERY_ANSWER
        else:
            raise ValueError(f"the instant model has no answer for a schema with {sorted(properties)}")
        text = orjson.dumps(value).decode()
        parsed, problem = structured_problem(text, schema)
        if problem is not None:
            raise ValueError(f"the instant model's answer does not fit the request's schema: {problem}")
        return ChatResult(text, "stop", usage, "instant", parsed=parsed)


class _Timeline:
    """`ask`'s progress calls, timed: (step, status, seconds since the start)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[str, str, float]] = []

    def __call__(self, message: str, data: Mapping[str, Any]) -> None:
        self.marks.append((str(data.get("step")), str(data.get("status", "")), time.perf_counter()))

    def at(self, step: str, status: str = "") -> float:
        return next(t for s, st, t in self.marks if s == step and st == status)


@dataclass(frozen=True, slots=True)
class _Resolved:
    """What `ask` needs of a resolved model (as `ModelService.resolve` gives the block)."""

    semantic: SemanticModel
    spec: ConnectionSpec


async def _one_ask(semantic: SemanticModel, spec: ConnectionSpec, llm: InstantModel) -> tuple[Answer, dict[str, float]]:
    """One `ask` of `QUESTION`; its answer, and its seconds: in all, in the model, and in each part (see `overhead`)."""
    resolved = _Resolved(semantic, spec)
    llm.calls.clear()
    timeline = _Timeline()
    started = time.perf_counter()
    answer = await ask(QUESTION, model=resolved, llm=llm, progress=timeline, now=TODAY)
    ended = time.perf_counter()
    model_s = sum(b - a for a, b in llm.calls)
    query_call, headline_call = llm.calls[-2], llm.calls[-1]  # the structured query, then the headline
    parts = {
        "total": ended - started,
        "model": model_s,
        "overhead": ended - started - model_s,
        # topic pick (code), hints, prompt, the query's JSON schema: up to the model's query call
        "prepare": query_call[0] - started - sum(b - a for a, b in llm.calls[:-2]),
        # validate, apply hints, compile, guard, run read-only: the model's answer → "the query returned N rows"
        "compile_guard_run": timeline.at("generate_query", "success") - query_call[1],
        # headers, facts → the headline call; then the headline's checks and the Markdown answer
        "summarize": (headline_call[0] - timeline.at("generate_query", "success")) + (ended - headline_call[1]),
    }
    return answer, parts


async def _alone(semantic: SemanticModel, spec: ConnectionSpec, runs: int) -> dict[str, float]:
    """Compile, guard and the read-only query alone, on the query `ask` ends up with: median ms each."""
    answer, _ = await _one_ask(semantic, spec, InstantModel())
    asked = {key: value for key, value in answer.query.items() if key not in ("table", "sql")}
    query = StructuredQuery.model_validate({**asked, "topic": answer.topic})
    tables = topic_tables(semantic, semantic.topics[answer.topic])
    compile_s, guard_s, run_s, open_s = [], [], [], []
    for _ in range(runs):
        if spec.kind == "duckdb":  # what each query pays to open its file (no other connection holds it open)
            t = time.perf_counter()
            duckdb_read_only(spec.target).close()
            open_s.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        sql = compile_query(semantic, query, dialect=spec.dialect)
        t1 = time.perf_counter()
        guarded = guard_sql(sql, dialect=spec.dialect, allowed_tables=tables, max_rows=10_000)
        t2 = time.perf_counter()
        await run_read_only(spec, guarded, timeout_s=30, max_rows=200)
        t3 = time.perf_counter()
        compile_s.append(t1 - t0)
        guard_s.append(t2 - t1)
        run_s.append(t3 - t2)
    return {
        "compile_ms": statistics.median(compile_s) * 1000,
        "guard_ms": statistics.median(guard_s) * 1000,
        "run_ms": statistics.median(run_s) * 1000,
        "open_ms": statistics.median(open_s) * 1000 if open_s else float("nan"),
    }


async def overhead(runs: int, warmup: int, profile: bool) -> dict[str, Any]:
    """`ask` with the instant model on the demo database (see the module docstring); p50/p99 and the split."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-ai-") as tmp:
        path = Path(tmp) / "demo.duckdb"
        build_demo_database(path)
        semantic, problems = load_model(demo_model_files())
        if problems:
            raise RuntimeError(f"the demo model has problems: {problems}")
        spec = ConnectionSpec("duckdb", str(path))
        llm = InstantModel()
        for _ in range(warmup):
            answer, _parts = await _one_ask(semantic, spec, llm)
        samples: list[dict[str, float]] = []
        for _ in range(runs):
            answer, parts = await _one_ask(semantic, spec, llm)
            samples.append(parts)
        alone = await _alone(semantic, spec, max(10, runs // 4))
        top = ""
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(max(20, runs // 4)):
                await _one_ask(semantic, spec, llm)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            top = out.getvalue()
    if "|" not in answer.markdown or not answer.actions or not answer.rows:
        raise RuntimeError(f"the instant-model answer has no table, actions or rows: {answer.markdown[:500]}")

    def ms(key: str, pct: float) -> float:
        return percentile([s[key] for s in samples], pct) * 1000

    return {
        "runs": runs,
        "warmup": warmup,
        "target_ms": TARGET_OVERHEAD_MS,
        "overhead_p50_ms": ms("overhead", 50),
        "overhead_p99_ms": ms("overhead", 99),
        "model_p50_ms": ms("model", 50),
        "prepare_p50_ms": ms("prepare", 50),
        "compile_guard_run_p50_ms": ms("compile_guard_run", 50),
        "summarize_p50_ms": ms("summarize", 50),
        **alone,
        "rows": len(answer.rows),
        "fields": list(answer.query.get("fields") or []),
        "passed": ms("overhead", 50) <= TARGET_OVERHEAD_MS,
        "profile": top,
    }


# --- the whole benchmark ------------------------------------------------------------------------------------


def run(
    completions: int = 5, jobs: int = 3, runs: int = 200, warmup: int = 20, profile: bool = False
) -> dict[str, Any]:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        pipeline = runner.run(overhead(runs, warmup, profile))
        local = runner.run(local_model(completions))
    return {"overhead": pipeline, "local": local, "job": end_to_end(jobs)}


def render(figures: dict[str, Any]) -> str:
    local, job, over = figures["local"], figures["job"], figures["overhead"]
    out = table(
        f"Local model {local['model']}: {local['completions']} answers of up to {local['max_tokens']} tokens, "
        "temperature 0",
        [
            ("load (first call, one token)", f"{local['load_s']:.2f} s"),
            ("completion tokens/s, p50", f"{local['completion_tokens_per_s']:.1f}"),
            (
                f"prompt tokens/s, p50 ({local['prompt_tokens']:.0f}-token prompts)",
                f"{local['prompt_tokens_per_s']:.0f}",
            ),
            (
                f"one answer ({local['completion_tokens']:.0f} tokens), p50",
                f"{local['answer_p50_s']:.2f} s",
            ),
            ("others' CPU meanwhile (other processes on this machine)", _others(local)),
        ],
    )
    out += "\n" + table(
        f"Omni AI job end to end with the local model (demo model, {QUESTION!r})",
        [
            ("first job (loads the model, builds the demo database)", f"{job['first_s']:.2f} s"),
            (f"next {job['jobs']} jobs, p50 (max)", f"{job['p50_s']:.2f} s ({job['max_s']:.2f} s)"),
            ("… of which the `ask_data` node, p50", f"{job['node_p50_s']:.2f} s"),
            (f"follow-up in the same conversation ({FOLLOW_UP!r})", f"{job['follow_up_s']:.2f} s"),
            (
                "tokens per job, p50 (prompt + completion)",
                f"{job['prompt_tokens']:.0f} + {job['completion_tokens']:.0f}",
            ),
            ("actions, rows of the answer", f"{job['actions']}, {job['rows']}"),
            ("server CPU; others' CPU meanwhile", f"{job['server_cpu_s']:.1f} s; {_others(job)}"),
        ],
    )
    out += f"\nAnswer: {job['summary']!r}; follow-up: {job['follow_up_summary']!r} ({job['follow_up_rows']} rows).\n"
    out += "\n" + table(
        f"AI pipeline overhead excluding model time: {over['runs']} runs of `ask` with a model that answers at once",
        [
            ("overhead (ask's time minus the model's calls), p50", f"{over['overhead_p50_ms']:.2f} ms"),
            ("overhead, p99", f"{over['overhead_p99_ms']:.2f} ms"),
            ("… topic, hints, prompt, schema (before the query call)", f"{over['prepare_p50_ms']:.2f} ms"),
            ("… check, hints, compile, guard, run the query", f"{over['compile_guard_run_p50_ms']:.2f} ms"),
            ("… facts, headline checks, Markdown", f"{over['summarize_p50_ms']:.2f} ms"),
            (
                "alone: compile / guard / read-only query",
                f"{over['compile_ms']:.2f} / {over['guard_ms']:.2f} / {over['run_ms']:.2f} ms",
            ),
            ("… of the read-only query: opening the DuckDB file (and closing it)", f"{over['open_ms']:.2f} ms"),
            ("the instant model's own calls (schema checks), p50", f"{over['model_p50_ms']:.2f} ms"),
        ],
    )
    verdict = "pass" if over["passed"] else "MISS"
    out += (
        f"\npipeline overhead p50 {over['overhead_p50_ms']:.2f} ms (target ≤ {over['target_ms']:g} ms: {verdict}); "
        f"{over['rows']} rows of {', '.join(over['fields'])}.\n"
    )
    return out


def _others(figures: dict[str, Any]) -> str:
    """Other processes' CPU seconds in a section, and as cores busy on average: the model competes for them."""
    return f"{figures['others_cpu_s']:.1f} s ({figures['others_cpu_s'] / max(figures['wall_s'], 1e-9):.1f} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=5, help="local-model answers timed")
    parser.add_argument("--jobs", type=int, default=3, help="AI jobs timed after the first")
    parser.add_argument("--runs", type=int, default=200, help="`ask` runs with the instant model")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile of `ask`'s runs")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(completions=args.completions, jobs=args.jobs, runs=args.runs, profile=args.profile)
    print(render(figures))
    if figures["overhead"]["profile"]:
        print(figures["overhead"]["profile"])
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
