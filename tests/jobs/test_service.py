"""The job lifecycle in the store, on SQLite and PostgreSQL: submit, claim, finish, cancel, recover."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from conveyor.errors import IllegalTransitionError, QueueFullError
from conveyor.jobs import queries as q
from conveyor.jobs.service import JobService
from conveyor.jobs.states import ALLOWED_FROM, TERMINAL, JobState, can_move
from conveyor.settings import Settings
from conveyor.store.blobs import LocalBlobStore
from conveyor.store.db import Database
from conveyor.store.files import FileService
from conveyor.store.recipes import create_recipe

OWNER = "testhost:1:abc"


@pytest.fixture
async def db(db: Database) -> Database:
    """The store, with the recipe the jobs name."""
    await create_recipe(db, name="r", body={"name": "r", "nodes": {}}, recipe_id="r1")
    return db


@pytest.fixture
def jobs(db: Database, tmp_path: Any) -> JobService:
    settings = Settings(data_dir=tmp_path)
    files = FileService(db, LocalBlobStore(tmp_path / "files"), None, settings.limits)
    return JobService(db, files, max_pending=5, inline_max=1024)


def claimed_states(jobs: JobService) -> list[str]:
    """The state events a claim writes itself: the runner emits `running` where the claim cannot (SQLite)."""
    return ["running"] if q.claim_writes_running_event(jobs.db.dialect) else []


async def submit(jobs: JobService, **kw: Any) -> dict[str, Any]:
    row, _ = await jobs.submit(recipe_id="r1", revision=1, inputs=kw.pop("inputs", {"text": "x"}), timeout_s=60, **kw)
    return dict(row)


async def test_submit_claim_finish(jobs: JobService) -> None:
    job = await submit(jobs)
    assert job["state"] == "pending"
    claimed = await jobs.claim(OWNER, 10, 30_000)
    assert [c.id for c in claimed] == [job["id"]] and claimed[0].inputs == {"text": "x"}
    assert await jobs.claim("other:2:x", 10, 30_000) == []  # never claimed twice
    ok = await jobs.finish(job["id"], OWNER, JobState.SUCCEEDED, outputs={"text": "done"}, error=None, usage={})
    assert ok
    row = await jobs.get(job["id"])
    assert row["state"] == "succeeded" and await jobs.outputs(row) == {"text": "done"}
    kinds = [(e["kind"], orjson.loads(e["data"]).get("state")) for e in await jobs.events(job["id"])]
    assert kinds == [("state", "pending"), *(("state", s) for s in claimed_states(jobs)), ("state", "succeeded")]
    assert claimed[0].running_event_written == bool(claimed_states(jobs))


async def test_claim_one_takes_a_pending_job_once(jobs: JobService) -> None:
    """A Celery task delivered twice claims its job once; the duplicate writes nothing, not even an event."""
    job = await submit(jobs)
    first = await jobs.claim_one(job["id"], OWNER, 30_000)
    again = await jobs.claim_one(job["id"], "other:2:x", 30_000)
    assert first is not None and first.id == job["id"] and first.attempts == 1 and again is None
    events = await jobs.events(job["id"])
    assert [orjson.loads(e["data"]).get("state") for e in events] == ["pending", *claimed_states(jobs)]
    if claimed_states(jobs):  # written by the store as the runner would have emitted it
        assert orjson.loads(events[-1]["data"]) == {"state": "running", "attempt": 1}
        assert events[-1]["node"] is None and events[-1]["at"] >= job["created_at"]


async def test_a_finish_writes_its_events_in_order_after_the_move(jobs: JobService) -> None:
    job = await submit(jobs)
    await jobs.claim(OWNER, 1, 30_000)
    node_events = [
        (job["id"], kind, f"n{i}", orjson.dumps({"i": i}).decode(), 1000 + i)
        for i, kind in enumerate(["started", "finished"] * 30)
    ]
    done = JobState.SUCCEEDED
    ours = await jobs.finish(job["id"], OWNER, done, outputs={}, error=None, usage=None, events=node_events)
    assert ours
    events = await jobs.events(job["id"])
    written = [(e["kind"], e["node"], orjson.loads(e["data"]).get("i")) for e in events if e["kind"] != "state"]
    assert written == [(kind, node, i) for i, (_, kind, node, *_rest) in enumerate(node_events)]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert orjson.loads(events[-1]["data"]) == {"state": "succeeded"} and events[-1]["node"] is None


async def test_a_finish_by_someone_who_lost_the_lease_changes_nothing(jobs: JobService) -> None:
    job = await submit(jobs)
    await jobs.claim(OWNER, 1, 30_000)
    node_event = (job["id"], "finished", "n1", '{"outputs":{}}', 1)
    ours = await jobs.finish(
        job["id"], "thief:9:x", JobState.SUCCEEDED, outputs={}, error=None, usage=None, events=[node_event]
    )
    assert not ours
    assert (await jobs.get(job["id"]))["state"] == "running"
    # a refused finish leaves no event behind: streams stop at the first terminal one, resumes read `finished`
    states = [orjson.loads(e["data"]).get("state") for e in await jobs.events(job["id"])]
    assert states == ["pending", *claimed_states(jobs)]


async def test_idempotency_key_returns_the_first_job(jobs: JobService) -> None:
    first, created = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, idempotency_key="k1")
    again, created_again = await jobs.submit(recipe_id="r1", revision=1, inputs={}, timeout_s=60, idempotency_key="k1")
    assert created and not created_again and again["id"] == first["id"]
    other, _ = await jobs.submit(
        recipe_id="r1", revision=1, inputs={}, timeout_s=60, idempotency_key="k1", user_id="u2"
    )
    assert other["id"] != first["id"]  # keys are scoped per user


async def test_a_full_queue_refuses_with_retry_after(jobs: JobService) -> None:
    for _ in range(5):
        await submit(jobs)
    with pytest.raises(QueueFullError) as caught:
        await submit(jobs)
    assert caught.value.status == 429 and caught.value.retry_after_s >= 1
    _, total = await jobs.list(limit=100)
    assert total == 5


async def test_cancel_pending_and_running_and_finished(jobs: JobService) -> None:
    pending = await submit(jobs)
    row = await jobs.cancel(pending["id"])
    assert row["state"] == "cancelled"
    running = await submit(jobs)
    await jobs.claim(OWNER, 1, 30_000)
    row = await jobs.cancel(running["id"])
    assert row["state"] == "running" and row["cancel_requested"] == 1
    held = await jobs.renew(OWNER, [running["id"]], 30_000)
    assert held == {running["id"]: True}
    events = [orjson.loads(e["data"]) for e in await jobs.events(pending["id"])]
    assert [e["state"] for e in events] == ["pending", "cancelled"]  # the stream of a cancelled job ends
    with pytest.raises(IllegalTransitionError):
        await jobs.cancel(pending["id"])


async def test_recover_fails_or_requeues_lapsed_jobs(jobs: JobService, db: Database) -> None:
    fail = await submit(jobs)
    resume = await submit(jobs, on_interrupt="resume")
    await jobs.claim("deadhost:1:x", 10, -1)  # a lease that has already lapsed
    counts = await jobs.recover(local_owners="testhost:%", is_dead=lambda owner: True)
    assert counts == {"failed": 1, "resumed": 1}
    failed = await jobs.get(fail["id"])
    assert failed["state"] == "failed" and orjson.loads(failed["error"])["code"] == "interrupted"
    assert (await jobs.get(resume["id"]))["state"] == "pending"
    claimed = await jobs.claim(OWNER, 10, 30_000)
    assert [c.id for c in claimed] == [resume["id"]] and claimed[0].attempts == 2


async def test_live_owner_on_this_host_is_left_alone(jobs: JobService) -> None:
    job = await submit(jobs)
    await jobs.claim("testhost:1:live", 1, 60_000)
    counts = await jobs.recover(local_owners="testhost:%", is_dead=lambda owner: False)
    assert counts == {"failed": 0, "resumed": 0}
    assert (await jobs.get(job["id"]))["state"] == "running"


async def test_large_inputs_are_spilled_to_files(jobs: JobService, db: Database) -> None:
    big = "x" * 5000
    job = await submit(jobs, inputs={"text": big, "small": 1})
    raw = await db.fetch_val("SELECT inputs FROM jobs WHERE id = $1", job["id"])
    assert len(raw) < 500 and "$spilled" in raw
    claimed = await jobs.claim(OWNER, 1, 30_000)
    assert await jobs.read_inputs(claimed[0]) == {"text": big, "small": 1}


def test_state_table_is_closed_and_terminal_states_are_final() -> None:
    for target, sources in ALLOWED_FROM.items():
        for source in sources:
            assert source not in TERMINAL, (source, target)
    for terminal in TERMINAL:
        assert not any(can_move(terminal, target) for target in JobState)


async def test_a_job_that_keeps_crashing_is_resumed_at_most_max_resumes_times(jobs: JobService) -> None:
    job = await submit(jobs, on_interrupt="resume")
    outcomes = []
    for _ in range(4):
        claimed = await jobs.claim("deadhost:1:x", 1, -1)
        if not claimed:
            break
        outcomes.append(await jobs.recover(local_owners="testhost:%", is_dead=lambda owner: True, max_resumes=2))
    assert outcomes == [{"failed": 0, "resumed": 1}, {"failed": 0, "resumed": 1}, {"failed": 1, "resumed": 0}]
    assert (await jobs.get(job["id"]))["state"] == "failed"


def test_job_ids_are_version_7_uuids_in_time_order() -> None:
    import time
    import uuid

    from conveyor.jobs.service import uuid7

    ids = []
    for _ in range(5):
        ids.append(uuid7())
        time.sleep(0.002)
    parsed = [uuid.UUID(value) for value in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert abs((parsed[-1].int >> 80) - time.time() * 1000) < 5000


async def test_a_lapsed_lease_is_recovered_even_if_its_owner_looks_alive(jobs: JobService) -> None:
    """A live runner renews what it runs; a lapsed lease of a 'live' pid is a reused pid or a lost job."""
    job = await submit(jobs)
    await jobs.claim("testhost:1:old", 1, -1)
    counts = await jobs.recover(local_owners="testhost:%", is_dead=lambda owner: False)
    assert counts == {"failed": 1, "resumed": 0}
    assert (await jobs.get(job["id"]))["state"] == "failed"


async def test_renew_extends_only_the_jobs_still_run_and_reports_lost_ones(jobs: JobService, db: Database) -> None:
    kept, dropped = await submit(jobs), await submit(jobs)
    await jobs.claim(OWNER, 2, 1_000)
    held = await jobs.renew(OWNER, [kept["id"]], 60_000)
    assert set(held) == {kept["id"], dropped["id"]}
    leases = {
        row["id"]: row["lease_expires_at"]
        for row in await db.fetch_all("SELECT id, lease_expires_at FROM jobs WHERE state = 'running'")
    }
    assert leases[kept["id"]] > leases[dropped["id"]] + 30_000  # the job no runner tracks is left to lapse
    assert await jobs.renew("other:2:y", [kept["id"]], 60_000) == {}


async def test_two_recoveries_of_one_job_write_one_event(jobs: JobService) -> None:
    job = await submit(jobs)
    await jobs.claim("deadhost:1:x", 1, -1)
    first, second = await asyncio.gather(
        jobs.recover(local_owners="testhost:%", is_dead=lambda owner: True),
        jobs.recover(local_owners="testhost:%", is_dead=lambda owner: True),
    )
    assert first["failed"] + second["failed"] == 1
    states = [orjson.loads(e["data"]).get("state") for e in await jobs.events(job["id"])]
    assert states == ["pending", *claimed_states(jobs), "failed"]


def test_owners_name_one_pid_namespace_of_one_boot() -> None:
    """Hostnames that share their start (a Deployment's pods) still give different host parts; and the LIKE
    pattern of this host's owners takes `_` and `%` literally."""
    import socket

    from conveyor.leases import host_identity, local_owners_pattern, new_owner

    host = host_identity()
    assert host.startswith(socket.gethostname()[:24] + "-") and len(host) <= 35
    owner = new_owner()
    assert owner.startswith(host + ":") and len(owner) <= 64
    assert local_owners_pattern() == host.replace("_", "\\_").replace("%", "\\%") + ":%"
