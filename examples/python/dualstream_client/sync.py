"""Blocking facades: the asyncio clients run on a private event loop in a background thread.

For training loops that are not asyncio. The loop thread also keeps the connection alive (pings)
while the caller's thread is busy with a long step.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Iterable, Iterator, Mapping, Optional, TypeVar

from .producer import Producer
from .trainer import Batch, Trainer

__all__ = ["SyncProducer", "SyncTrainer", "SyncBatch"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread; `run` executes a coroutine on it and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, awaitable: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Runs `awaitable` on the loop; raises what it raises (`TimeoutError` past `timeout`)."""

        async def wrapper() -> T:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None
        except BaseException:
            # KeyboardInterrupt in the caller's thread: stop the coroutine too
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncProducer:
    """`Producer` with blocking calls (same arguments)::

        with SyncProducer("ws://127.0.0.1:8787/ingest", token) as producer:
            producer.send(rollouts)  # returns once every rollout is durable, or raises Rejected
    """

    def __init__(self, url: str, token: Optional[str] = None, **options: Any) -> None:
        self._thread = _LoopThread("dualstream-producer")
        self._producer = Producer(url, token, **options)
        try:
            self._thread.run(self._producer.open())
        except BaseException:
            self._thread.stop()
            raise

    def send(self, rollouts: Iterable[Mapping[str, Any]], timeout: Optional[float] = None) -> None:
        """Blocks until every rollout is acknowledged; raises `Rejected` etc. as `Producer.send`.

        Safe to call from several threads at once.
        """
        self._thread.run(self._producer.send(list(rollouts)), timeout)

    def wait_for_trainer_version(self, version: int, timeout: Optional[float] = None) -> int:
        return self._thread.run(self._producer.wait_for_trainer_version(version), timeout)

    @property
    def producer(self) -> Producer:
        """The asyncio producer underneath (its counters: `acked`, `resent`, `connections`)."""
        return self._producer

    @property
    def credit(self) -> Optional[int]:
        return self._producer.credit

    @property
    def trainer_version(self) -> Optional[int]:
        return self._producer.trainer_version

    @property
    def min_policy_version(self) -> Optional[int]:
        return self._producer.min_policy_version

    def close(self) -> None:
        if not self._thread.loop.is_closed():
            self._thread.run(self._producer.close())
            self._thread.stop()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class SyncBatch:
    """A `Batch` whose `ack()` blocks; every other attribute is the batch's."""

    def __init__(self, batch: Batch, thread: _LoopThread) -> None:
        self.batch = batch
        self._thread = thread

    def ack(self, policy_version: Optional[int] = None, state: Any = None) -> None:
        """Persists then acknowledges the step (see `Batch.ack`)."""
        self._thread.run(self.batch.ack(policy_version, state))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batch, name)

    def __repr__(self) -> str:
        return f"Sync{self.batch!r}"


class SyncTrainer:
    """`Trainer` with blocking calls (same arguments)::

        with SyncTrainer(url, token, state_path="trainer.json") as trainer:
            for batch in trainer:
                path = train_step(batch)
                batch.ack(policy_version=batch.step, state={"checkpoint": path})
    """

    def __init__(self, url: str, token: Optional[str] = None, **options: Any) -> None:
        self._thread = _LoopThread("dualstream-trainer")

        async def make() -> Trainer:
            # asyncio objects belong to the loop they are made on
            return await Trainer(url, token, **options).open()

        try:
            self._trainer = self._thread.run(make())
        except BaseException:
            self._thread.stop()
            raise

    def next_batch(self, timeout: Optional[float] = None) -> Optional[SyncBatch]:
        """The next batch, or None when none came within `timeout` seconds."""
        batch = self._thread.run(self._trainer.next_batch(timeout))
        return None if batch is None else SyncBatch(batch, self._thread)

    def __iter__(self) -> Iterator[SyncBatch]:
        while True:
            batch = self.next_batch()
            assert batch is not None
            yield batch

    @property
    def trainer(self) -> Trainer:
        """The asyncio trainer underneath (`last_step`, `skipped`, `connections`)."""
        return self._trainer

    @property
    def state(self) -> Any:
        return self._trainer.state

    @property
    def last_step(self) -> int:
        return self._trainer.last_step

    @property
    def policy_version(self) -> Optional[int]:
        return self._trainer.policy_version

    def close(self) -> None:
        if not self._thread.loop.is_closed():
            self._thread.run(self._trainer.close())
            self._thread.stop()

    def __enter__(self) -> SyncTrainer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
