"""Publishing a batch under a slow loop: the confirmed prefix and the adaptive batch size.

Confirm timeout. The channel hands messages to the socket one at a time, so on a slow or
saturated loop the last of a batch waits seconds before it is even written. A deadline per
message from the start of the batch counted that wait and timed out the tail of every batch.
The publisher's ``publish_timeout_s`` therefore bounds how long the confirmed prefix may go
without growing: the confirms are awaited in outbox order and each one restarts the clock
(``confirmed_prefix``). A clock per message from its hand-off would be as good, but the
hand-off happens inside aiormq's ``basic_publish``, which also awaits the confirm, so it
cannot be observed from here. A dead or hung broker still fails a batch
``publish_timeout_s`` after its start or its last confirm.

Adaptive batch. After a confirm timeout the next batch asks for only as many events as were
confirmed (at least ``min_batch_size``); each full batch that is confirmed whole doubles it
again, up to ``batch_size`` (``next_batch_size``). A timed-out batch that confirmed some
events is progress, not an outage: the publisher counts and logs it (``event_publish_slow``)
and goes on at once. A batch that confirmed nothing, or a broker or connection error, backs
off as an outage.
"""

from __future__ import annotations

import asyncio


def next_batch_size(
    current: int, *, sent: int, confirmed: int, timed_out: bool, floor: int, ceiling: int
) -> int:
    """How many events the next batch asks for, after one that asked for ``current``.

    ``sent`` events were in it and its first ``confirmed`` were confirmed. A confirm timeout
    shrinks the batch to what was confirmed in time (not below ``floor``); a full batch
    confirmed whole doubles it (not above ``ceiling``); anything else leaves it as it is: a
    short batch says nothing about a bigger one, a broker error nothing about its speed.
    """
    if timed_out:
        return max(floor, min(confirmed, current))
    if confirmed == sent == current:
        return min(ceiling, current * 2)
    return current


async def confirmed_prefix(
    tasks: list[asyncio.Task[object]], timeout_s: float
) -> tuple[list[object], BaseException | None, bool]:
    """Await the publishes in outbox order, until one fails or the confirms stall.

    Returns the results of the confirmed prefix, the error that ended it (if any) and
    whether that was a confirm timeout (``timeout_s`` without a confirm). The unfinished
    rest is cancelled, never sent if it was still queued for the channel; what was sent is
    published again later.
    """
    loop = asyncio.get_running_loop()
    results: list[object] = []
    stall = asyncio.timeout(timeout_s)
    try:
        async with stall:
            for task in tasks:
                # wait(), not ``await task``: a publish that failed or was cancelled ends
                # the prefix; its cancellation must not look like ours.
                if not task.done():
                    await asyncio.wait([task])
                if task.cancelled() or task.exception() is not None:
                    break
                results.append(task.result())
                stall.reschedule(loop.time() + timeout_s)
    except TimeoutError as exc:
        return results, exc, True
    finally:
        rest = tasks[len(results) :]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
    if len(results) == len(tasks):
        return results, None, False
    failed = tasks[len(results)]
    if failed.cancelled():
        return results, asyncio.CancelledError("publish cancelled"), False
    return results, failed.exception(), False
