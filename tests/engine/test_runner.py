"""The graph runner: parallel branches, retries, timeouts, cancellation, resume, usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from pydantic import Field

from conveyor.blocks import builtin_blocks
from conveyor.blocks.base import BlockConfig, BlockContext, BlockError, BlockRegistry, Port, Ports, PortType, UsageMeter
from conveyor.engine.runner import Engine, JobTimeoutError, NodeFailedError
from conveyor.recipes.graph import compile_recipe
from conveyor.settings import LimitsSettings


class Flaky:
    """Test block: fails its first `failures` runs (per job), then echoes its input."""

    name: ClassVar[str] = "test_flaky"
    calls: ClassVar[dict[str, int]] = {}

    class Config(BlockConfig):
        failures: int = 0
        retryable: bool = True
        sleep_s: float = Field(default=0.0, ge=0)
        tokens: int = 0

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return {"value": Port(PortType.ANY)}, {"value": Port(PortType.ANY)}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        key = f"{ctx.job_id}/{ctx.node_id}"
        Flaky.calls[key] = Flaky.calls.get(key, 0) + 1
        if config.sleep_s:
            await asyncio.sleep(config.sleep_s)
        if Flaky.calls[key] <= config.failures:
            raise BlockError(f"failure {Flaky.calls[key]}", retryable=config.retryable)
        if config.tokens:
            ctx.meter(prompt_tokens=config.tokens, completion_tokens=1, cost=0.5)
        return {"value": inputs.get("value")}


def make_engine() -> Engine:
    return Engine(files=None, http=None, limits=LimitsSettings(block_timeout_s=5))  # type: ignore[arg-type]


def graph_of(nodes: dict[str, Any], **extra: Any) -> Any:
    registry = BlockRegistry([*builtin_blocks(), Flaky()])
    base = {
        "start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}},
    }
    return compile_recipe({"name": "t", "nodes": base | nodes, **extra}, registry)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, node: str, data: dict[str, Any]) -> None:
        self.events.append((kind, node, data))

    def kinds(self, node: str) -> list[str]:
        return [kind for kind, n, _ in self.events if n == node]


async def test_chain_runs_and_returns_outputs() -> None:
    graph = graph_of(
        {
            "greet": {
                "block": "text_template",
                "config": {"template": "Hello, {{ text }}!"},
                "inputs": {"text": "start.text"},
            },
            "out": {"block": "recipe_output", "inputs": {"text": "greet.text"}},
        }
    )
    rec = Recorder()
    outputs = await make_engine().run(graph, {"text": "world"}, job_id="j1", emit=rec)
    assert outputs == {"text": "Hello, world!"}
    assert rec.kinds("greet") == ["started", "finished"]
    finished = next(d for k, n, d in rec.events if k == "finished" and n == "greet")
    assert finished["outputs"] == {"text": "Hello, world!"} and finished["duration_ms"] >= 0


async def test_independent_branches_run_in_parallel() -> None:
    graph = graph_of(
        {
            "a": {"block": "test_flaky", "config": {"sleep_s": 0.3}, "inputs": {"value": "start.text"}},
            "b": {"block": "test_flaky", "config": {"sleep_s": 0.3}, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"a": "a.value", "b": "b.value"}},
        }
    )
    rec = Recorder()
    await make_engine().run(graph, {"text": "x"}, job_id="par", emit=rec)
    order = [(k, n) for k, n, _ in rec.events if n in ("a", "b")]
    # both started before either finished: they overlapped
    assert order[:2] == [("started", "a"), ("started", "b")]


async def test_retry_then_success_emits_retried_events() -> None:
    graph = graph_of(
        {
            "f": {
                "block": "test_flaky",
                "config": {"failures": 2},
                "inputs": {"value": "start.text"},
                "retry": {"attempts": 3, "backoff_s": 0.01},
            },
            "out": {"block": "recipe_output", "inputs": {"v": "f.value"}},
        }
    )
    rec = Recorder()
    outputs = await make_engine().run(graph, {"text": "ok"}, job_id="retry1", emit=rec)
    assert outputs == {"v": "ok"}
    assert rec.kinds("f") == ["started", "retried", "started", "retried", "started", "finished"]


async def test_non_retryable_error_is_not_retried() -> None:
    graph = graph_of(
        {
            "f": {
                "block": "test_flaky",
                "config": {"failures": 5, "retryable": False},
                "inputs": {"value": "start.text"},
                "retry": {"attempts": 3},
            },
            "out": {"block": "recipe_output", "inputs": {"v": "f.value"}},
        }
    )
    rec = Recorder()
    with pytest.raises(NodeFailedError) as caught:
        await make_engine().run(graph, {"text": "x"}, job_id="nr", emit=rec)
    assert caught.value.node == "f" and "failure 1" in caught.value.message
    assert rec.kinds("f") == ["started", "failed"]


async def test_block_timeout_fails_the_node() -> None:
    graph = graph_of(
        {
            "slow": {"block": "delay", "config": {"seconds": 5}, "timeout_s": 0.05, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"v": "slow.value"}},
        }
    )
    with pytest.raises(NodeFailedError) as caught:
        await make_engine().run(graph, {"text": "x"}, job_id="bt")
    assert caught.value.node == "slow" and "timed out" in caught.value.message


async def test_job_timeout_stops_everything() -> None:
    graph = graph_of(
        {
            "slow": {"block": "delay", "config": {"seconds": 5}, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"v": "slow.value"}},
        }
    )
    with pytest.raises(JobTimeoutError):
        await make_engine().run(graph, {"text": "x"}, job_id="jt", timeout_s=0.1)


async def test_failure_in_one_branch_cancels_the_other() -> None:
    graph = graph_of(
        {
            "slow": {"block": "delay", "config": {"seconds": 5}, "inputs": {"value": "start.text"}},
            "bad": {
                "block": "test_flaky",
                "config": {"failures": 1, "sleep_s": 0.05},
                "inputs": {"value": "start.text"},
            },
            "out": {"block": "recipe_output", "inputs": {"a": "slow.value", "b": "bad.value"}},
        }
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NodeFailedError):
        await make_engine().run(graph, {"text": "x"}, job_id="fail-par")
    assert loop.time() - started < 4  # the 5 s delay did not run to its end


async def test_cancellation_stops_running_blocks() -> None:
    graph = graph_of(
        {
            "a": {"block": "delay", "config": {"seconds": 10}, "inputs": {"value": "start.text"}},
            "b": {"block": "delay", "config": {"seconds": 10}, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"a": "a.value", "b": "b.value"}},
        }
    )
    task = asyncio.create_task(make_engine().run(graph, {"text": "x"}, job_id="cancel"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not [t for t in leftover if "_run_node" in repr(t.get_coro())]


async def test_resume_skips_completed_nodes() -> None:
    graph = graph_of(
        {
            "first": {"block": "test_flaky", "inputs": {"value": "start.text"}},
            "second": {"block": "test_flaky", "inputs": {"value": "first.value"}},
            "out": {"block": "recipe_output", "inputs": {"v": "second.value"}},
        }
    )
    rec = Recorder()
    completed = {"start": {"text": "kept"}, "first": {"value": "from before"}}
    outputs = await make_engine().run(graph, {"text": "new"}, job_id="resume1", emit=rec, completed=completed)
    assert outputs == {"v": "from before"}
    assert rec.kinds("first") == [] and rec.kinds("start") == []
    assert Flaky.calls.get("resume1/first") is None and Flaky.calls["resume1/second"] == 1


async def test_usage_is_metered_per_node_and_summed() -> None:
    graph = graph_of(
        {
            "a": {"block": "test_flaky", "config": {"tokens": 10}, "inputs": {"value": "start.text"}},
            "b": {"block": "test_flaky", "config": {"tokens": 5}, "inputs": {"value": "a.value"}},
            "out": {"block": "recipe_output", "inputs": {"v": "b.value"}},
        }
    )
    usage = UsageMeter()
    await make_engine().run(graph, {"text": "x"}, job_id="usage", usage=usage)
    assert usage.by_node["a"]["prompt_tokens"] == 10
    assert usage.totals() == {"prompt_tokens": 15, "completion_tokens": 2, "total_tokens": 17, "cost": 1.0}


async def test_disabled_node_is_skipped() -> None:
    graph = graph_of(
        {
            "off": {"block": "test_flaky", "enabled": False, "inputs": {"value": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"v": "off.value"}},
        }
    )
    rec = Recorder()
    outputs = await make_engine().run(graph, {"text": "x"}, job_id="skip", emit=rec)
    assert outputs == {} and rec.kinds("off") == ["skipped"]


async def test_unexpected_exception_fails_the_job_naming_the_node(caplog: pytest.LogCaptureFixture) -> None:
    graph = graph_of(
        {
            "parse": {"block": "text_to_json", "inputs": {"text": "start.text"}},
            "out": {"block": "recipe_output", "inputs": {"v": "parse.json"}},
        }
    )
    caplog.set_level(logging.WARNING)
    with pytest.raises(NodeFailedError) as caught:
        await make_engine().run(graph, {"text": "{not json"}, job_id="bad-json")
    assert caught.value.node == "parse"


async def test_a_recipe_that_runs_itself_many_times_is_stopped_by_the_node_budget() -> None:
    """Regression: depth alone allowed 10 runs of itself per level, 10^5 sub-runs that froze the server."""
    registry = BlockRegistry([*builtin_blocks(), Flaky()])
    nodes: dict[str, Any] = {"start": {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}}}
    for i in range(10):
        nodes[f"r{i}"] = {"block": "run_recipe", "config": {"recipe": "fan"}, "inputs": {"text": "start.text"}}
    nodes["out"] = {"block": "recipe_output", "inputs": {f"o{i}": f"r{i}.text" for i in range(10)}}
    fan = compile_recipe({"name": "fan", "nodes": nodes}, registry)

    async def load(ref: str, viewer: str | None) -> Any:
        return fan

    limits = LimitsSettings(max_node_runs=300, max_recipe_depth=5)
    engine = Engine(files=None, http=None, limits=limits, load_graph=load)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NodeFailedError) as caught:
        await engine.run(fan, {"text": "x"}, job_id="fan", timeout_s=30)
    assert loop.time() - started < 10
    assert "MAX_NODE_RUNS" in str(caught.value)
