"""Engine overhead per block, in process: a 100-block chain and a 100-block fan-out of a no-op block.

The no-op block is a real block (name, config model, ports, async run) that hands its input on, so what is
timed is the engine's own work per node: scheduling, the block context, the timeout scope, the events.
Runs under uvloop (as the server does) and under plain asyncio. Prints µs per block = time per graph run
divided by the 100 no-op blocks (the start and output nodes' cost is charged to them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from common import CpuWatch, json_out, percentile, table
from conveyor.blocks import builtin_blocks
from conveyor.blocks.base import BlockConfig, BlockContext, BlockRegistry, Port, Ports, PortType
from conveyor.engine.runner import Engine
from conveyor.recipes.graph import RecipeGraph, compile_recipe
from conveyor.settings import LimitsSettings
from load import new_event_loop

BLOCKS = 100
TARGET_US = 20.0


class NoOp:
    """Hands its `value` input on as its `value` output."""

    name: ClassVar[str] = "bench_noop"

    class Config(BlockConfig):
        pass

    def ports(self, config: Config, wired: Iterable[str]) -> tuple[Ports, Ports]:
        return {"value": Port(PortType.ANY)}, {"value": Port(PortType.ANY)}

    async def run(self, ctx: BlockContext, config: Config, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"value": inputs.get("value")}


START = {"block": "chat_input", "config": {"fields": {"text": {"type": "text"}}}}


def chain(blocks: int) -> dict[str, Any]:
    """start → n0 → n1 → … → n{blocks-1} → out."""
    nodes: dict[str, Any] = {"start": START}
    previous = "start.text"
    for i in range(blocks):
        nodes[f"n{i}"] = {"block": NoOp.name, "inputs": {"value": previous}}
        previous = f"n{i}.value"
    nodes["out"] = {"block": "recipe_output", "inputs": {"value": previous}}
    return {"name": "chain", "nodes": nodes}


def fan_out(blocks: int) -> dict[str, Any]:
    """start → n0 … n{blocks-1} in parallel → out, which takes all of them."""
    nodes: dict[str, Any] = {"start": START}
    for i in range(blocks):
        nodes[f"n{i}"] = {"block": NoOp.name, "inputs": {"value": "start.text"}}
    nodes["out"] = {"block": "recipe_output", "inputs": {f"v{i}": f"n{i}.value" for i in range(blocks)}}
    return {"name": "fan-out", "nodes": nodes}


async def time_runs(graph: RecipeGraph, warmup: int, runs: int) -> list[float]:
    """Seconds per graph run, one figure per run after `warmup` untimed runs."""
    engine = Engine(files=None, http=None, limits=LimitsSettings())  # type: ignore[arg-type]
    inputs = {"text": "bench"}
    events: list[tuple[str, str, dict[str, Any]]] = []

    def emit(kind: str, node: str, data: dict[str, Any]) -> None:
        events.append((kind, node, data))  # as the executor's emit does: buffer now, write later

    times: list[float] = []
    for i in range(warmup + runs):
        events.clear()
        started = time.perf_counter()
        outputs = await engine.run(graph, inputs, job_id="bench", emit=emit)
        elapsed = time.perf_counter() - started
        if i >= warmup:
            times.append(elapsed)
    if outputs.get("value", outputs.get("v0")) != "bench":
        raise RuntimeError(f"the graph produced {outputs!r}")
    return times


def measure(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], graph: RecipeGraph, warmup: int, runs: int
) -> list[float]:
    gc.collect()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(time_runs(graph, warmup, runs))


def run(runs: int = 2000, warmup: int = 200) -> dict[str, Any]:
    """Times both graphs on both loops; returns µs per block (median, p90) for each."""
    registry = BlockRegistry([*builtin_blocks(), NoOp()])
    graphs = {"chain": compile_recipe(chain(BLOCKS), registry), "fan-out": compile_recipe(fan_out(BLOCKS), registry)}
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "uvloop": new_event_loop,
        "asyncio": asyncio.new_event_loop,
    }
    figures: dict[str, Any] = {"blocks": BLOCKS, "runs": runs, "target_us": TARGET_US, "results": []}
    for loop_name, factory in loops.items():
        for graph_name, graph in graphs.items():
            watch = CpuWatch().start()
            times = measure(factory, graph, warmup, runs)
            cpu = watch.stop()
            figures["results"].append(
                {
                    "loop": loop_name,
                    "graph": graph_name,
                    "run_ms_median": statistics.median(times) * 1e3,
                    "us_per_block_median": statistics.median(times) / BLOCKS * 1e6,
                    "us_per_block_p90": percentile(times, 90) / BLOCKS * 1e6,
                    "others_cpu": cpu["others_s"] / cpu["wall_s"],
                }
            )
    return figures


def render(figures: dict[str, Any]) -> str:
    rows = [
        (
            r["loop"],
            r["graph"],
            f"{r['run_ms_median']:.2f}",
            f"{r['us_per_block_median']:.1f}",
            f"{r['us_per_block_p90']:.1f}",
            f"{r['others_cpu']:.0%}",
        )
        for r in figures["results"]
    ]
    header = (
        "loop",
        f"graph ({figures['blocks']} no-op blocks)",
        "ms per run",
        "µs/block median",
        "µs/block p90",
        "others' CPU",
    )
    return table(f"Engine overhead per block (median of {figures['runs']} runs)", rows, header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(runs=args.runs)
    print(render(figures))
    json_out(args.json, figures)


if __name__ == "__main__":
    main()
