"""Runs one job's recipe graph on asyncio.

Independent branches run in parallel (a task per ready node); a lone ready node with nothing else running is
awaited inline, so a chain costs no task switches. Each node has a timeout and a retry policy; a failure
cancels the rest and fails the job naming the node. Nodes already finished in an earlier run (`completed`)
are not run again: that is how an interrupted job resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.blocks.base import BlockContext, BlockError, FileStore, HttpClient, ModelResolver, UsageMeter
from conveyor.errors import ConveyorError
from conveyor.recipes.graph import CompiledNode, RecipeGraph

if TYPE_CHECKING:
    from conveyor.llm.models import LanguageModels

# Receives node events as they happen: (kind, node, data), kind one of started, finished, failed, retried, skipped,
# and `progress` (a block's own steps, through `BlockContext.progress`).
EventSink = Callable[[str, str, dict[str, Any]], None]


class NodeFailedError(Exception):
    """A node failed after its last try; the job fails naming it."""

    def __init__(self, node: str, block: str, cause: BaseException) -> None:
        message = str(cause) or type(cause).__name__
        super().__init__(f"node {node!r} ({block}) failed: {message}")
        self.node = node
        self.block = block
        self.message = message
        self.error_type = type(cause).__name__


class JobTimeoutError(Exception):
    """The whole job ran past its timeout."""


GraphLoader = Callable[[str, str | None], Awaitable[RecipeGraph]]  # (recipe id or name, viewing user)


@dataclass(slots=True)
class NodeBudget:
    """How many more node runs one job may make, its sub-recipes included (each try counts)."""

    left: int

    def take(self) -> None:
        if self.left <= 0:
            raise BlockError("the job ran more nodes than CONVEYOR_LIMITS__MAX_NODE_RUNS allows", retryable=False)
        self.left -= 1


@dataclass(slots=True)
class RunContext:
    """What one job run shares between its nodes (and with the sub-recipes it runs)."""

    job_id: str
    user_id: str | None
    emit: EventSink
    usage: UsageMeter
    budget: NodeBudget
    depth: int = 0
    files: FileStore | None = None  # the job's view: files it makes belong to its user and job


def _no_events(kind: str, node: str, data: dict[str, Any]) -> None:
    return None


class Engine:
    """Runs recipe graphs. One per process; holds what blocks get on their context."""

    def __init__(
        self,
        *,
        files: FileStore,
        http: HttpClient,
        limits: Any,
        load_graph: GraphLoader | None = None,
        logger: logging.Logger | None = None,
        llm: LanguageModels | None = None,
        analytics: ModelResolver | None = None,
    ) -> None:
        self.files = files
        self.llm = llm  # what language-model blocks ask (`BlockContext.llm`)
        self.analytics = analytics  # data models for `ask_data` (`BlockContext.analytics`)
        self.http = http
        self.limits = limits
        self.load_graph = load_graph
        self.logger = logger or logging.getLogger("conveyor.engine")
        self.block_timeout_s: float = float(limits.block_timeout_s)
        self.max_depth: int = int(limits.max_recipe_depth)
        # Depth alone does not bound a recipe that runs itself ten times per level: 10^5 runs at depth 5.
        self.max_node_runs: int = int(limits.max_node_runs)

    async def run(
        self,
        graph: RecipeGraph,
        inputs: Mapping[str, Any],
        *,
        job_id: str,
        user_id: str | None = None,
        emit: EventSink = _no_events,
        usage: UsageMeter | None = None,
        completed: Mapping[str, dict[str, Any]] | None = None,
        timeout_s: float | None = None,
        depth: int = 0,
    ) -> dict[str, Any]:
        """Runs `graph` with the job's `inputs`; returns the output node's values."""
        budget = NodeBudget(self.max_node_runs)
        files = self.files.bind(user_id=user_id, job_id=job_id) if self.files is not None else None
        run = RunContext(job_id, user_id, emit, usage if usage is not None else UsageMeter(), budget, depth, files)
        if timeout_s is None:
            results = await self._run_graph(graph, inputs, run, completed or {})
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    results = await self._run_graph(graph, inputs, run, completed or {})
            except TimeoutError:
                raise JobTimeoutError(f"job timed out after {timeout_s:g} s") from None
        return results.get(graph.output, {})

    async def _run_graph(
        self,
        graph: RecipeGraph,
        job_inputs: Mapping[str, Any],
        run: RunContext,
        completed: Mapping[str, dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        nodes = graph.nodes
        results: dict[str, dict[str, Any]] = {n: dict(v) for n, v in completed.items() if n in nodes}
        waiting = {
            node_id: len({src for src, _ in node.sources.values() if src not in results})
            for node_id, node in nodes.items()
            if node_id not in results
        }
        ready = deque(node_id for node_id in graph.order if waiting.get(node_id) == 0)
        running: set[asyncio.Task[tuple[str, dict[str, Any]]]] = set()
        done: asyncio.Queue[asyncio.Task[tuple[str, dict[str, Any]]]] = asyncio.Queue()

        def finish(node_id: str, outputs: dict[str, Any]) -> None:
            results[node_id] = outputs
            for dependent in nodes[node_id].dependents:
                if dependent in waiting:
                    waiting[dependent] -= 1
                    if waiting[dependent] == 0:
                        ready.append(dependent)

        try:
            while ready or running:
                while ready:
                    node = nodes[ready.popleft()]
                    node_inputs = job_inputs if node.id == graph.start else _gather(node, results)
                    if not ready and not running:
                        finish(node.id, await self._run_node(node, node_inputs, run))
                    else:
                        task = asyncio.create_task(self._run_node_named(node, node_inputs, run))
                        task.add_done_callback(done.put_nowait)
                        running.add(task)
                if running:
                    task = await done.get()
                    running.discard(task)
                    node_id, outputs = task.result()
                    finish(node_id, outputs)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
        return results

    async def _run_node_named(
        self, node: CompiledNode, inputs: dict[str, Any] | Mapping[str, Any], run: RunContext
    ) -> tuple[str, dict[str, Any]]:
        return node.id, await self._run_node(node, inputs, run)

    async def _run_node(
        self, node: CompiledNode, inputs: dict[str, Any] | Mapping[str, Any], run: RunContext
    ) -> dict[str, Any]:
        if not node.enabled:
            run.emit("skipped", node.id, {})
            return {}
        ctx = BlockContext(
            job_id=run.job_id,
            node_id=node.id,
            files=run.files,  # type: ignore[arg-type]  # None only in engine tests that run no file blocks
            http=self.http,
            usage=run.usage,
            logger=self.logger,
            limits=self.limits,
            depth=run.depth,
            run_recipe=self._sub_runner(run),
            user_id=run.user_id,
            llm=self.llm,
            analytics=self.analytics,
            emit=run.emit,
        )
        timeout_s = node.timeout_s or self.block_timeout_s
        instant = getattr(node.block, "instant", False)  # never awaits: a timeout could not interrupt it
        attempts = node.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                run.budget.take()
            except BlockError as exc:
                raise NodeFailedError(node.id, node.block.name, exc) from None
            run.emit("started", node.id, {"attempt": attempt})
            started = time.perf_counter()
            try:
                if instant:
                    outputs = await node.block.run(ctx, node.config, dict(inputs))
                else:
                    async with asyncio.timeout(timeout_s):
                        outputs = await node.block.run(ctx, node.config, dict(inputs))
            except TimeoutError:
                error: BaseException = BlockError(f"timed out after {timeout_s:g} s")
            except Exception as exc:
                error = exc
            else:
                duration_ms = (time.perf_counter() - started) * 1000
                run.emit("finished", node.id, {"attempt": attempt, "duration_ms": duration_ms, "outputs": outputs})
                return outputs
            duration_ms = (time.perf_counter() - started) * 1000
            retryable = getattr(error, "retryable", True)
            if retryable and attempt < attempts:
                delay = node.retry.backoff_s * (2 ** (attempt - 1))
                run.emit(
                    "retried",
                    node.id,
                    {"attempt": attempt, "duration_ms": duration_ms, "error": _describe(error), "delay_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            run.emit("failed", node.id, {"attempt": attempt, "duration_ms": duration_ms, "error": _describe(error)})
            if not isinstance(error, BlockError):
                self.logger.warning("block %s of node %s raised", node.block.name, node.id, exc_info=error)
            raise NodeFailedError(node.id, node.block.name, error)
        raise AssertionError("unreachable: attempts >= 1")

    def _sub_runner(self, run: RunContext) -> Callable[[str, Mapping[str, Any], int], Awaitable[dict[str, Any]]]:
        async def run_sub_recipe(recipe: str, inputs: Mapping[str, Any], depth: int) -> dict[str, Any]:
            if depth > self.max_depth:
                raise BlockError(f"recipes nest deeper than {self.max_depth} levels", retryable=False)
            if self.load_graph is None:
                raise BlockError("sub-recipes are not available here", retryable=False)
            try:
                graph = await self.load_graph(recipe, run.user_id)  # only recipes the job's user may see
            except ConveyorError as exc:  # unknown or invalid sub-recipe: trying again will not help
                raise BlockError(f"sub-recipe {recipe!r}: {exc.message}", retryable=False) from exc

            def emit(kind: str, node: str, data: dict[str, Any]) -> None:
                return None  # a sub-recipe's node events stay inside its run_recipe node

            sub = RunContext(run.job_id, run.user_id, emit, run.usage, run.budget, depth, run.files)
            results = await self._run_graph(graph, inputs, sub, {})
            return results.get(graph.output, {})

        return run_sub_recipe


def _gather(node: CompiledNode, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A node's input values from its sources' outputs; a single value feeding a list port is wrapped."""
    values: dict[str, Any] = {}
    for port, (source, source_port) in node.sources.items():
        produced = results.get(source)
        if produced is None or source_port not in produced:
            continue
        value = produced[source_port]
        spec = node.inputs.get(port)
        if spec is not None and spec.many and value is not None and not isinstance(value, list):
            value = [value]
        values[port] = value
    return values


def _describe(error: BaseException) -> dict[str, Any]:
    return {"type": type(error).__name__, "message": str(error) or type(error).__name__}
