"""A real Celery worker inside the test process, for the distributed variant of the `server` fixture.

Celery's own embedded-worker machinery (`celery.contrib.testing.worker`) consumes from the real broker in a
thread, with the thread pool `conveyor worker` uses; our task runs each job on a `WorkerHost` — a runtime of its
own (its own database connections, executor and loop thread), exactly as in a worker process. Starting it in
process costs a fraction of a second where a worker subprocess costs seconds, which keeps a suite that runs
every API test on both deployments within its time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from conveyor.executors.celery import celery_app, register_task, worker_host
from conveyor.settings import Settings


@contextlib.contextmanager
def in_process_worker(settings: Settings, *, concurrency: int = 8) -> Iterator[None]:
    """Runs a worker on `settings` (its broker, database and files) until the block ends."""
    from celery.contrib.testing.worker import start_worker

    app = celery_app(settings)
    register_task(app)
    with (
        worker_host(settings),
        start_worker(
            app,
            concurrency=concurrency,
            pool="threads",
            perform_ping_check=False,
            shutdown_timeout=30.0,
            queues=settings.celery.queues,
            loglevel="WARNING",
        ),
    ):
        yield
