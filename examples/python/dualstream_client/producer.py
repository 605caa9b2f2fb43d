"""The producer client: streams rollouts to `/ingest` within the engine's credit.

Every frame the producer sends gets exactly one answer, in the order sent (streams/PROTOCOL.md,
"Answers, in order"): an `ack` (preceded by one `rejected` when some items were refused), or an
`error` for the whole frame. So frames are matched to answers first-in first-out: a `rejected`
names items of the oldest unanswered frame by index, and its `ack` or `error` completes it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from typing import Any, Callable, Deque, Iterable, Mapping, Optional

import msgpack
import websockets.exceptions

from ._wire import DEFAULT_MAX_SIZE, TRANSIENT, Backoff, Connection, Frame, close_code, decode, encode, is_fatal, open_connection, token_from_env
from .errors import DualstreamError, Disconnected, ItemError, Rejected, error_from_frame

__all__ = ["Producer"]

log = logging.getLogger("dualstream_client")

# error codes that log nothing of a frame and clear up by themselves: its rollouts are sent again
# (`disk-full` once credit returns, `engine` after the server restarts)
RESEND_CODES = frozenset({"disk-full", "engine"})
# the engine reports at most this many refused items per frame (`truncated` counts the rest)
UNNAMED_REFUSAL = "refused; not named in the rejected frame (the engine names at most 1,000 items per frame)"


class _Call:
    """One `send()`: its future resolves when every one of its rollouts is answered."""

    __slots__ = ("future", "remaining", "errors", "acked", "failure")

    def __init__(self, future: asyncio.Future[None], size: int) -> None:
        self.future = future
        self.remaining = size
        self.errors: list[ItemError] = []
        self.acked: list[str] = []
        self.failure: Optional[DualstreamError] = None


class _Entry:
    """A rollout of a call, until the engine acknowledges or refuses it."""

    __slots__ = ("call", "index", "rollout", "id", "done", "cap")

    def __init__(self, call: _Call, index: int, rollout: Any) -> None:
        self.call = call
        self.index = index
        self.rollout = rollout
        rollout_id = rollout.get("id") if isinstance(rollout, Mapping) else None
        self.id: Optional[str] = rollout_id if isinstance(rollout_id, str) else None
        self.done = False
        # most rollouts in a frame with this one, once a frame holding it was too large
        self.cap: Optional[int] = None


class _Frame:
    """A `rollouts` frame sent and not yet answered; `refused` collects its `rejected` items by index."""

    __slots__ = ("entries", "refused", "size")

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.refused: dict[int, Mapping[str, Any]] = {}
        self.size = 0  # bytes, once encoded


class Producer:
    """Sends rollouts to a `dualstream serve` engine (`/ingest`), asyncio.

    ::

        async with Producer("ws://127.0.0.1:8787/ingest", token) as producer:
            await producer.send(rollouts)  # returns once every rollout is durable

    `send()` returns when every rollout given is acknowledged (on the engine's disk), or raises
    `Rejected` listing the refused ones (the others are acknowledged all the same). Several
    `send()` calls may run concurrently; their rollouts share the connection's frames.

    The producer never has more than the engine's credit unanswered (``credit_aware``; without
    it the engine stops reading the socket until answers bring it back within), sends at most
    ``max_frame`` rollouts per frame, and after a dropped connection reconnects with backoff
    and sends every unacknowledged rollout again — the engine acknowledges a duplicate id
    without logging it twice. ``max_retries`` consecutive failed attempts (None = no limit)
    end in `Disconnected`; a refused token raises `Unauthorized` at once.

    For a ``wss://`` URL (``serve --tls-cert``), ``ssl_context`` says which certificates to trust,
    e.g. ``ssl.create_default_context(cafile="cert.pem")``; None = the system's CAs.

    The token defaults to ``$DUALSTREAM_PRODUCER_TOKEN``. `credit`, `trainer_version` and
    `min_policy_version` follow the engine's `credit` frames: with ``maxAsync`` in the run's
    config, a rollout sampled by a policy version below `min_policy_version` is refused as
    stale, so sync the weights first (`wait_for_trainer_version`).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        credit_aware: bool = True,
        max_frame: int = 1000,
        reconnect: bool = True,
        max_retries: Optional[int] = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        open_timeout: float = 10.0,
        max_size: Optional[int] = DEFAULT_MAX_SIZE,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        if not 1 <= max_frame <= 10_000:
            raise ValueError(f"max_frame must be in 1..10000 (the engine takes at most 10,000 rollouts per frame), got {max_frame}")
        self.url = url
        self.credit_aware = credit_aware
        self.max_frame = max_frame
        self.reconnect = reconnect
        self._token = token_from_env(token, "DUALSTREAM_PRODUCER_TOKEN")
        self._backoff = Backoff(backoff_initial, backoff_max, max_retries)
        self._open_timeout = open_timeout
        self._max_size = max_size
        self._ssl_context = ssl_context
        self._credit: Optional[int] = None
        self._trainer_version: Optional[int] = None
        self._min_policy_version: Optional[int] = None
        # rollouts to send: `_retry` (sent before, answered by a drop or a transient error) goes first
        self._queue: Deque[_Entry] = collections.deque()
        self._retry: Deque[_Entry] = collections.deque()
        # frames of the current connection not yet answered, oldest first
        self._inflight: Deque[_Frame] = collections.deque()
        self._unanswered = 0
        self._calls: set[_Call] = set()
        self._watchers: list[asyncio.Future[None]] = []
        self._ws: Optional[Connection] = None
        self._runner: Optional[asyncio.Task[None]] = None
        self._failure: Optional[DualstreamError] = None
        self._closed = False
        self.connections = 0
        """Connections opened so far (1 + reconnections)."""
        self.acked = 0
        """Rollouts acknowledged so far (duplicates included: the engine acknowledges them too)."""
        self.resent = 0
        """Rollouts sent again after a dropped connection or a `disk-full`/`engine` answer."""
        self.engine_errors: list[Frame] = []
        """The `error` frames the engine answered with (those resent included), oldest first."""

    # -- state -------------------------------------------------------------------------------

    @property
    def credit(self) -> Optional[int]:
        """Rollouts the engine lets this producer have unanswered (None before the first credit frame)."""
        return self._credit

    @property
    def trainer_version(self) -> Optional[int]:
        """The last policy version the trainer reported (None while none was)."""
        return self._trainer_version

    @property
    def min_policy_version(self) -> Optional[int]:
        """The oldest policy version whose rollouts the engine admits (``maxAsync``; else None)."""
        return self._min_policy_version

    @property
    def unanswered(self) -> int:
        """Rollouts sent on this connection and not yet answered (never above `credit`)."""
        return self._unanswered

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Producer:
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> Producer:
        """Connects and waits for the engine's first credit frame.

        Raises `Unauthorized` on a refused token, `Disconnected` when the server stays out of reach.
        """
        if self._runner is not None:
            raise DualstreamError("this producer is already open")
        ws = await self._connect()
        self._runner = asyncio.create_task(self._run(ws))
        await self._wait_until(lambda: self._credit is not None or self._failure is not None)
        if self._failure is not None:
            raise self._failure
        return self

    async def close(self) -> None:
        """Closes the connection; `send()` calls still waiting raise `Disconnected`."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self._fail(Disconnected("the producer was closed"), remember=False)

    # -- sending -----------------------------------------------------------------------------

    async def send(self, rollouts: Iterable[Mapping[str, Any]]) -> None:
        """Sends rollouts; returns once the engine has acknowledged every one of them.

        Raises `Rejected` when some were refused (``.errors``: index into `rollouts`, id, field,
        reason; the others are acknowledged). A rollout too large for the server's frames is one
        of them (reason ``too-large: …``): frames are split in halves until it goes alone.
        Raises `EngineError` when the engine refuses a frame as a whole for another reason, and
        `Disconnected` / `Unauthorized` when the connection is lost for good. Cancelling a
        `send()` stops sending its rollouts that were not sent yet.
        """
        if self._failure is not None:
            raise self._failure
        if self._runner is None or self._closed:
            raise DualstreamError("the producer is not open: use `async with Producer(...)` or `await producer.open()`")
        items = list(rollouts)
        if not items:
            return
        call = _Call(asyncio.get_running_loop().create_future(), len(items))
        self._calls.add(call)
        self._queue.extend(_Entry(call, index, rollout) for index, rollout in enumerate(items))
        self._notify()
        try:
            await call.future
        finally:
            # cancelled: the entries not yet sent are skipped (see _take_frame)
            self._calls.discard(call)

    async def wait_for_credit(self, rollouts: int = 1, timeout: Optional[float] = None) -> int:
        """Waits until the engine's credit leaves room for `rollouts` more rollouts; returns the room.

        The room is the credit less what is sent and not answered and what `send` calls have
        queued. Use it to generate just in time: a worker that samples only when the engine
        can take the result keeps its rollouts fresh (the credit shrinks while the trainer lags).
        """

        def room() -> int:
            return (self._credit or 0) - self._unanswered - len(self._queue) - len(self._retry)

        await asyncio.wait_for(self._wait_until(lambda: self._failure is not None or room() >= rollouts), timeout)
        if self._failure is not None:
            raise self._failure
        return room()

    async def wait_for_trainer_version(self, version: int, timeout: Optional[float] = None) -> int:
        """Waits until the trainer has reported a policy version >= `version`; returns it."""

        def reached() -> bool:
            return self._failure is not None or (self._trainer_version is not None and self._trainer_version >= version)

        await asyncio.wait_for(self._wait_until(reached), timeout)
        if self._failure is not None:
            raise self._failure
        assert self._trainer_version is not None
        return self._trainer_version

    # -- the connection ----------------------------------------------------------------------

    async def _connect(self) -> Connection:
        """Opens a connection, retrying transient failures with backoff."""
        while True:
            try:
                # a producer beyond its credit is not read by the engine: its pings would go unanswered
                ws = await open_connection(
                    self.url,
                    self._token,
                    max_size=self._max_size,
                    open_timeout=self._open_timeout,
                    ping_interval=20 if self.credit_aware else None,
                    ssl_context=self._ssl_context,
                )
                self.connections += 1
                return ws
            except Exception as error:
                if is_fatal(error):
                    raise
                if not self.reconnect:
                    raise Disconnected(f"producer {self.url}: cannot connect: {error}") from error
                await self._backoff.wait(error, f"producer {self.url}")

    async def _run(self, ws: Connection) -> None:
        """Runs sessions until closed; reconnects after drops."""
        try:
            while True:
                error = await self._session(ws)
                if close_code(error) == 1009 and self._inflight:
                    # a frame over twice the server's limit is not read: the connection is closed with 1009
                    # ("message too big"). The largest frame in flight is at least as large as that one.
                    largest = max(self._inflight, key=lambda frame: frame.size)
                    self._inflight.remove(largest)
                    self._unanswered -= len(largest.entries)
                    self._too_large(largest, f"the server closed the connection (1009, message too big) on a frame of {largest.size} bytes")
                self._requeue_inflight()
                if not self.reconnect:
                    raise Disconnected(f"producer {self.url}: connection lost: {error}")
                await self._backoff.wait(error, f"producer {self.url}")
                ws = await self._connect()
        except asyncio.CancelledError:
            raise  # close(): it closes the connection
        except Exception as error:  # noqa: BLE001 - every pending send() must hear of it
            self._fail(error if isinstance(error, DualstreamError) else DualstreamError(f"producer {self.url}: {error!r}"))
            if self._ws is not None:
                await self._ws.close()
                self._ws = None

    async def _session(self, ws: Connection) -> BaseException:
        """Sends and reads over one connection until it drops; returns why it did."""
        self._ws = ws
        self._credit = None
        self._unanswered = 0
        reader = asyncio.create_task(self._read(ws))
        try:
            while not reader.done():
                frame = self._take_frame()
                if frame is None:
                    await self._changed()
                    continue
                try:
                    message = encode({"type": "rollouts", "rollouts": [entry.rollout for entry in frame.entries]})
                except (TypeError, ValueError, OverflowError):
                    self._unencodable(frame)
                    continue
                frame.size = len(message)
                await ws.send(message)
        except websockets.exceptions.ConnectionClosed:
            pass  # the reader ends too, and says why
        except BaseException:
            reader.cancel()
            raise
        try:
            await reader
        except TRANSIENT as error:
            self._ws = None
            return error
        self._ws = None
        return Disconnected("the engine closed the connection")

    async def _read(self, ws: Connection) -> None:
        try:
            async for message in ws:
                self._on_frame(decode(message))
        finally:
            self._notify()

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "credit":
            self._credit = int(frame["credit"])
            self._trainer_version = frame.get("policyVersion")
            self._min_policy_version = frame.get("minPolicyVersion")
            self._backoff.reset()
        elif kind == "rejected":
            oldest = self._oldest(frame)
            for item in frame.get("errors", []):
                index = item.get("index")
                if isinstance(index, int) and 0 <= index < len(oldest.entries):
                    oldest.refused[index] = item
                else:
                    log.warning("producer: the engine refused an item at index %r of a frame of %d", index, len(oldest.entries))
        elif kind == "ack":
            self._on_ack(self._answered(frame), frame.get("ids", []))
        elif kind == "error":
            self._on_error(self._answered(frame), frame)
        self._notify()

    def _oldest(self, answer: Frame) -> _Frame:
        if not self._inflight:
            raise DualstreamError(f"the engine answered a frame this producer did not send: {answer!r:.200}")
        return self._inflight[0]

    def _answered(self, answer: Frame) -> _Frame:
        frame = self._oldest(answer)
        self._inflight.popleft()
        self._unanswered -= len(frame.entries)
        return frame

    def _on_ack(self, frame: _Frame, ids: Iterable[str]) -> None:
        acked = set(ids)
        for position, entry in enumerate(frame.entries):
            item = frame.refused.get(position)
            if item is not None:
                reported = item.get("id")
                rollout_id = reported if isinstance(reported, str) else entry.id
                self._finish(entry, ItemError(entry.index, rollout_id, item.get("field"), str(item.get("reason"))))
            elif entry.id is not None and entry.id in acked:
                self.acked += 1
                self._finish(entry)
            else:
                self._finish(entry, ItemError(entry.index, entry.id, None, UNNAMED_REFUSAL))

    def _on_error(self, frame: _Frame, answer: Frame) -> None:
        code = answer.get("code")
        self.engine_errors.append(answer)
        log.warning("producer: engine error %s: %s", code, answer.get("reason"))
        if code in RESEND_CODES:
            self._resend(frame.entries)
            return
        if code == "too-large":
            self._too_large(frame, str(answer.get("reason")))
            return
        failure = error_from_frame(answer)
        for entry in frame.entries:
            self._finish(entry, failure)

    def _too_large(self, frame: _Frame, reason: str) -> None:
        """A frame too large for the server: sent again in halves, until a rollout alone is refused."""
        if len(frame.entries) == 1:
            entry = frame.entries[0]
            self._finish(entry, ItemError(entry.index, entry.id, None, f"too-large: {reason}"))
            return
        for entry in frame.entries:
            entry.cap = max(1, len(frame.entries) // 2)
        self._resend(frame.entries)

    def _resend(self, entries: Iterable[_Entry]) -> None:
        for entry in entries:
            if not entry.done:
                self._retry.append(entry)
                self.resent += 1

    def _requeue_inflight(self) -> None:
        """After a drop, the unanswered frames' rollouts go first in line again."""
        while self._inflight:
            self._resend(self._inflight.popleft().entries)
        self._unanswered = 0

    def _take_frame(self) -> Optional[_Frame]:
        """The next frame to send, within the credit (None when there is nothing or no room)."""
        if self.credit_aware:
            if self._credit is None:
                return None
            room = min(self.max_frame, self._credit - self._unanswered)
        else:
            room = self.max_frame
        entries: list[_Entry] = []
        while self._retry or self._queue:
            source = self._retry or self._queue
            entry = source[0]
            # a cancelled send(): its rollouts not yet sent are dropped
            if entry.done or entry.call.future.done():
                source.popleft()
                continue
            room = min(room, entry.cap or room)
            if len(entries) >= room:
                break
            entries.append(source.popleft())
        if not entries:
            return None
        frame = _Frame(entries)
        self._inflight.append(frame)
        self._unanswered += len(entries)
        return frame

    def _unencodable(self, frame: _Frame) -> None:
        """A frame MessagePack cannot encode: its culprits are refused, the others go back in line."""
        self._inflight.remove(frame)
        self._unanswered -= len(frame.entries)
        good = []
        for entry in frame.entries:
            try:
                msgpack.packb(entry.rollout, use_bin_type=True)
                good.append(entry)
            except (TypeError, ValueError, OverflowError) as error:
                self._finish(entry, ItemError(entry.index, entry.id, None, f"cannot be encoded as MessagePack: {error}"))
        self._retry.extendleft(reversed(good))

    def _finish(self, entry: _Entry, error: Optional[Exception] = None) -> None:
        if entry.done:
            return
        entry.done = True
        call = entry.call
        if isinstance(error, ItemError):
            call.errors.append(error)
        elif isinstance(error, DualstreamError):
            call.failure = call.failure or error
        elif entry.id is not None:
            call.acked.append(entry.id)
        call.remaining -= 1
        if call.remaining == 0 and not call.future.done():
            if call.failure is not None:
                call.future.set_exception(call.failure)
            elif call.errors:
                call.future.set_exception(Rejected(call.errors, call.acked))
            else:
                call.future.set_result(None)

    def _fail(self, error: DualstreamError, remember: bool = True) -> None:
        """The producer cannot go on: every waiting `send()` raises `error`."""
        if remember and self._failure is None:
            self._failure = error
        for call in list(self._calls):
            if not call.future.done():
                call.future.set_exception(error)
        self._calls.clear()
        self._notify()

    # -- waiting on changes ------------------------------------------------------------------

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    async def _changed(self) -> None:
        watcher = asyncio.get_running_loop().create_future()
        self._watchers.append(watcher)
        await watcher

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed()
