"""Job notices: a waiter on a job wakes when that job is published, not for others, and leaves nothing behind."""

from __future__ import annotations

import asyncio

from conveyor.jobs.notices import JobNotices, wait_for_notice


async def test_a_waiter_wakes_for_its_job_only() -> None:
    notices = JobNotices()
    with notices.watch("a") as a, notices.watch("b") as b:
        notices.publish(["a"])
        assert a.is_set()
        assert not b.is_set()
        assert await wait_for_notice(a, 0.0)
        assert not await wait_for_notice(b, 0.01)


async def test_a_publish_while_waiting_ends_the_wait() -> None:
    notices = JobNotices()
    with notices.watch("job") as changed:
        waiting = asyncio.create_task(wait_for_notice(changed, 30.0))
        await asyncio.sleep(0)
        notices.publish(["job"])
        assert await asyncio.wait_for(waiting, 5.0)


async def test_watches_are_forgotten_when_they_end() -> None:
    notices = JobNotices()
    with notices.watch("job"), notices.watch("job"):
        assert notices.watched == 1
    assert notices.watched == 0
    notices.publish(["job"])  # nobody waits: nothing to wake, nothing kept


async def test_the_relay_gets_published_ids_and_delivered_ones_stay_local() -> None:
    notices = JobNotices()
    relayed: list[tuple[list[str], bool]] = []
    notices.relay = lambda ids, ended: relayed.append((ids, ended))
    with notices.watch("x") as changed:
        notices.deliver(["x"])  # another process's change: wakes here, is not sent back out
        assert changed.is_set()
    notices.publish(["y", "z"])
    notices.publish(["y"], ended=True)
    assert relayed == [(["y", "z"], False), (["y"], True)]


async def test_an_ends_only_waiter_sleeps_through_progress() -> None:
    notices = JobNotices()
    with notices.watch("job", ends_only=True) as ended, notices.watch("job") as changed:
        notices.publish(["job"])  # events written: progress, not an end
        assert changed.is_set()
        assert not ended.is_set()
        notices.publish(["job"], ended=True)
        assert ended.is_set()
