"""Job notices between two processes' worth of `JobNotices`, over a real Valkey: wake-ups, cancel requests and
"deliveries written" cross; a process's own notices do not come back to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.executors.relay import RedisNoticeRelay
from conveyor.jobs.notices import JobNotices, wait_for_notice


@pytest.fixture
async def pair(fresh_broker: str) -> AsyncIterator[tuple[RedisNoticeRelay, RedisNoticeRelay]]:
    first = RedisNoticeRelay(fresh_broker, JobNotices())
    second = RedisNoticeRelay(fresh_broker, JobNotices())
    await first.start()
    await second.start()
    try:
        for relay in (first, second):
            await asyncio.wait_for(relay.subscribed.wait(), 10)
        yield first, second
    finally:
        await first.stop()
        await second.stop()


async def test_an_end_published_in_one_process_wakes_a_waiter_in_another(pair: tuple[RedisNoticeRelay, ...]) -> None:
    first, second = pair
    with second.notices.watch("job-1", ends_only=True) as ended, second.notices.watch("job-1") as changed:
        first.notices.publish(["job-1"])  # progress: wakes the plain watcher only
        assert await wait_for_notice(changed, 5.0)
        assert not ended.is_set()
        first.notices.publish(["job-1"], ended=True)
        assert await wait_for_notice(ended, 5.0)


async def test_a_process_does_not_hear_itself_twice(pair: tuple[RedisNoticeRelay, ...]) -> None:
    first, second = pair
    woken = 0

    with first.notices.watch("job-2") as changed:
        first.notices.publish(["job-2"])
        assert changed.is_set()  # delivered locally at once
        changed.clear()
        # A notice from the other side proves the channel carried everything sent before it.
        with first.notices.watch("marker") as marker:
            second.notices.publish(["marker"])
            assert await wait_for_notice(marker, 5.0)
        woken = changed.is_set()
    assert not woken


async def test_cancel_requests_and_deliveries_reach_the_other_side(pair: tuple[RedisNoticeRelay, ...]) -> None:
    first, second = pair
    cancelled: list[str] = []
    delivered = asyncio.Event()
    second.on_cancel = cancelled.append
    second.on_deliveries = delivered.set
    first.request_cancel("job-3")
    first.announce_deliveries()
    await asyncio.wait_for(delivered.wait(), 5.0)
    for _ in range(100):  # published in order: the cancel came before the deliveries notice, so at most a tick
        if cancelled:
            break
        await asyncio.sleep(0.01)
    assert cancelled == ["job-3"]
