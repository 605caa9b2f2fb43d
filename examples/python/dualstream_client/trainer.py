"""The trainer client: receives advantage batches from `/batches`, exactly once.

Delivery is at-least-once: after a reconnect or a restart of either side, every batch not yet
acknowledged comes again. The trainer makes the effect exactly-once by persisting the last step
it applied (with whatever state the caller attaches, e.g. a checkpoint path) before it
acknowledges that step, and by skipping — but acknowledging — any step at or below it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from typing import Any, AsyncIterator, Mapping, Optional, Union

import websockets.exceptions

from ._wire import DEFAULT_MAX_SIZE, Backoff, Connection, Frame, close_code, decode, encode, is_fatal, open_connection, token_from_env, with_query
from .errors import DualstreamError, Disconnected, RankError, Replaced, error_from_frame

try:
    import numpy
except ImportError:  # pragma: no cover - numpy is optional
    numpy = None  # type: ignore[assignment]

__all__ = ["Trainer", "Batch", "read_state", "write_state_atomically"]

log = logging.getLogger("dualstream_client")

PathLike = Union[str, "os.PathLike[str]"]
_KEEP: Any = object()


def read_state(path: Optional[PathLike]) -> dict[str, Any]:
    """The trainer state saved at `path`: ``{"lastStep", "policyVersion", "state"}`` (defaults when absent)."""
    saved: dict[str, Any] = {"lastStep": 0, "policyVersion": None, "state": {}}
    if path is None or not os.path.exists(path):
        return saved
    try:
        with open(path, encoding="utf-8") as file:
            loaded = json.load(file)
        if not isinstance(loaded, dict) or not isinstance(loaded.get("lastStep", 0), int):
            raise ValueError("expected an object with an integer lastStep")
    except ValueError as error:
        raise DualstreamError(f"trainer state {os.fspath(path)}: {error}") from error
    saved.update({key: loaded[key] for key in ("lastStep", "policyVersion", "state") if key in loaded})
    return saved


def write_state_atomically(path: PathLike, saved: Mapping[str, Any]) -> None:
    """Writes `saved` as JSON so that a crash leaves either the old file or the new one.

    A temporary file is written and fsynced, renamed over `path`, then the folder is fsynced so
    the rename itself survives a power loss.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(saved, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class Batch:
    """One step's batch (this rank's shard of it when ``world_size > 1``).

    `rollouts` are the engine's dicts (``id``, ``promptId``, ``advantage``, ``payload`` exactly as
    the producer sent it: bytes stay bytes). Apply it, then `await batch.ack(...)`.
    """

    __slots__ = ("step", "rollouts", "lambdas", "constraints", "shard", "frame", "acked", "_trainer", "_advantages")

    def __init__(self, frame: Frame, trainer: Trainer) -> None:
        self.frame = frame
        """The batch frame as received."""
        self.step: int = frame["step"]
        self.rollouts: list[dict[str, Any]] = frame.get("rollouts", [])
        self.lambdas: dict[str, dict[str, float]] = frame.get("lambda", {})
        """Per constraint, λ ``{"before", "after"}`` this step's update."""
        self.constraints: dict[str, dict[str, Any]] = frame.get("constraints", {})
        """Per constraint: ``mean``, ``violation``, ``sampleViolationRate``, ``count`` of the batch."""
        self.shard: Optional[dict[str, Any]] = frame.get("shard")
        """``{"rank", "world", "rollouts": N, "indices": [...]}`` with several ranks, else None."""
        self.acked = False
        self._trainer = trainer
        self._advantages: Any = None

    @property
    def lambda_(self) -> dict[str, float]:
        """Per constraint, λ after this step's update (the multiplier the advantages were shaped with)."""
        return {name: value["after"] for name, value in self.lambdas.items()}

    @property
    def advantages(self) -> Any:
        """The rollouts' advantages: a float64 numpy array when numpy is installed, else a list."""
        if self._advantages is None:
            values = [float(rollout["advantage"]) for rollout in self.rollouts]
            self._advantages = numpy.asarray(values, dtype=numpy.float64) if numpy is not None else values
        return self._advantages

    @property
    def batch_size(self) -> int:
        """Rollouts in the whole batch (N), across every rank: divide a summed loss by it."""
        return int(self.shard["rollouts"]) if self.shard is not None else len(self.rollouts)

    @property
    def ids(self) -> list[str]:
        return [rollout["id"] for rollout in self.rollouts]

    @property
    def payloads(self) -> list[Any]:
        return [rollout.get("payload") for rollout in self.rollouts]

    async def ack(self, policy_version: Optional[int] = None, state: Any = None) -> None:
        """Marks the step applied: persists it (with `state`, when given) then acknowledges it.

        `policy_version` is the version of the weights after this step (reported to the engine,
        which judges stale rollouts by it). `state` is any JSON value to restore on restart as
        `trainer.state` — typically ``{"checkpoint": path}`` of a checkpoint written *before*
        this call. Without it the previous state is kept.
        """
        await self._trainer._acknowledge(self, policy_version, _KEEP if state is None else state)

    def __repr__(self) -> str:
        return f"Batch(step={self.step}, rollouts={len(self.rollouts)}, batch_size={self.batch_size})"


class Trainer:
    """Receives batches from a `dualstream serve` engine (`/batches`), asyncio.

    ::

        async with Trainer(url, token, state_path="trainer.json") as trainer:
            model = load(trainer.state.get("checkpoint"))
            async for batch in trainer:
                path = train_step(model, batch)   # e.g. writes a checkpoint
                await batch.ack(policy_version=batch.step, state={"checkpoint": path})

    Each step is yielded once, in step order, across reconnects and restarts: `state_path` holds
    the last acknowledged step (written atomically before the ack), and redelivered steps at or
    below it are acknowledged and skipped. Ack a batch before asking for the next one.

    With ``world_size > 1`` each rank connects with its ``rank`` and receives its shard of every
    batch (`batch.shard`, `batch.batch_size`); give each rank its own `state_path`. A rank the
    server refuses raises `RankError`, another connection taking this rank `Replaced`; other
    drops reconnect with backoff (``max_retries`` consecutive failures end in `Disconnected`).
    The token defaults to ``$DUALSTREAM_TRAINER_TOKEN``. For a ``wss://`` URL, ``ssl_context``
    says which certificates to trust (e.g. ``ssl.create_default_context(cafile="cert.pem")``).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        state_path: Optional[PathLike],
        rank: int = 0,
        world_size: int = 1,
        reconnect: bool = True,
        max_retries: Optional[int] = None,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        open_timeout: float = 10.0,
        max_size: Optional[int] = DEFAULT_MAX_SIZE,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise RankError(rank, world_size, "the rank must be an integer in 0 .. world_size - 1, world_size >= 1")
        self.url = url if rank == 0 and world_size == 1 else with_query(url, rank=rank, world=world_size)
        self.rank = rank
        self.world_size = world_size
        self.state_path = state_path
        self.reconnect = reconnect
        self._token = token_from_env(token, "DUALSTREAM_TRAINER_TOKEN")
        self._backoff = Backoff(backoff_initial, backoff_max, max_retries)
        self._open_timeout = open_timeout
        self._max_size = max_size
        self._ssl_context = ssl_context
        saved = read_state(state_path)
        self.last_step: int = saved["lastStep"]
        """The last step applied and acknowledged (0 before any)."""
        self.policy_version: Optional[int] = saved["policyVersion"]
        """The policy version reported with the last acknowledgement."""
        self.state: Any = saved["state"]
        """What the last `batch.ack(state=...)` saved (``{}`` before any), e.g. a checkpoint path."""
        self._ws: Optional[Connection] = None
        self._drop: Optional[BaseException] = None
        self._yielded = self.last_step
        self._bad_rank: Optional[str] = None
        self._ack_lock: Optional[asyncio.Lock] = None
        self._closed = False
        self.connections = 0
        """Connections opened so far (1 + reconnections)."""
        self.skipped = 0
        """Redelivered steps at or below `last_step`, acknowledged and not yielded."""

    async def __aenter__(self) -> Trainer:
        return await self.open()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def open(self) -> Trainer:
        """Connects (retrying while the server is out of reach); raises `Unauthorized` on a refused token."""
        if self._closed:
            raise DualstreamError("this trainer was closed")
        if self._ws is None:
            await self._connect(None)
        return self

    async def close(self) -> None:
        """Closes the connection after the acknowledgements already sent (the server reads them first)."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    def __aiter__(self) -> AsyncIterator[Batch]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[Batch]:
        while True:
            batch = await self.next_batch()
            assert batch is not None
            yield batch

    async def next_batch(self, timeout: Optional[float] = None) -> Optional[Batch]:
        """The next batch to apply, or None when none came within `timeout` seconds.

        Reconnects after a dropped connection; raises `RankError` / `Replaced` / `Unauthorized`
        / `Disconnected` when it cannot go on, `EngineError` on an `error` frame.
        """
        if self._closed:
            raise DualstreamError("this trainer was closed")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._ws is None and not await self._connect(deadline):
                return None
            ws = self._ws
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return None
            try:
                message = await asyncio.wait_for(ws.recv(), remaining)
            except asyncio.TimeoutError:
                return None
            except websockets.exceptions.ConnectionClosed as closed:
                self._dropped(closed)
                continue
            frame = decode(message)
            self._backoff.reset()
            kind = frame.get("type")
            if kind == "batch":
                step = frame["step"]
                if step <= self.last_step:
                    # applied before a crash or a drop: acknowledged again, not applied twice
                    self.skipped += 1
                    await self._send_ack(step, self.policy_version)
                elif step <= self._yielded:
                    log.info("trainer: step %d delivered again while its batch awaits ack()", step)
                else:
                    self._yielded = step
                    return Batch(frame, self)
            elif kind == "error":
                if frame.get("code") == "bad-rank":
                    # the 4002 close follows: raised then, with this reason
                    self._bad_rank = str(frame.get("reason"))
                    continue
                raise error_from_frame(frame)

    def _dropped(self, closed: websockets.exceptions.ConnectionClosed) -> None:
        """A connection ended: raises when another rank took it or the rank is refused, else reconnects."""
        self._ws = None
        code = close_code(closed)
        reason = closed.rcvd.reason if closed.rcvd is not None else ""
        if code == 4002 or self._bad_rank is not None:
            raise RankError(self.rank, self.world_size, self._bad_rank or reason or "refused by the server", code)
        if code == 4001:
            raise Replaced(self.rank, self.world_size, f"another trainer connection took this rank ({reason or 'close 4001'})", code)
        if not self.reconnect:
            raise Disconnected(f"trainer {self.url}: connection lost: {closed}")
        self._drop = closed

    async def _connect(self, deadline: Optional[float]) -> bool:
        """(Re)connects with backoff; False once `deadline` (loop time) has passed."""
        loop = asyncio.get_running_loop()
        while True:
            if self._drop is not None:
                await self._backoff.wait(self._drop, f"trainer {self.url}")
            try:
                self._ws = await open_connection(
                    self.url, self._token, max_size=self._max_size, open_timeout=self._open_timeout, ssl_context=self._ssl_context
                )
                self.connections += 1
                self._drop = None
                return True
            except Exception as error:
                if is_fatal(error):
                    raise
                if not self.reconnect:
                    raise Disconnected(f"trainer {self.url}: cannot connect: {error}") from error
                self._drop = error
            if deadline is not None and loop.time() >= deadline:
                return False

    async def _acknowledge(self, batch: Batch, policy_version: Optional[int], state: Any) -> None:
        # acks are written in turn: the state file holds the highest step acknowledged
        self._ack_lock = self._ack_lock or asyncio.Lock()
        async with self._ack_lock:
            if batch.acked:
                return
            if batch.step > self.last_step:
                saved = {
                    "lastStep": batch.step,
                    "policyVersion": self.policy_version if policy_version is None else policy_version,
                    "state": self.state if state is _KEEP else state,
                }
                if self.state_path is not None:
                    # persisted before the engine hears of it: a crash in between redelivers the step, and it is skipped
                    await asyncio.get_running_loop().run_in_executor(None, write_state_atomically, self.state_path, saved)
                self.last_step, self.policy_version, self.state = saved["lastStep"], saved["policyVersion"], saved["state"]
            batch.acked = True
            await self._send_ack(batch.step, policy_version)

    async def _send_ack(self, step: int, policy_version: Optional[int]) -> None:
        ack: dict[str, Any] = {"type": "ack", "step": step}
        if policy_version is not None:
            ack["policyVersion"] = policy_version
        ws = self._ws
        if ws is None:
            return  # the step is redelivered after reconnecting, and acknowledged then
        try:
            await ws.send(encode(ack))
        except websockets.exceptions.ConnectionClosed:
            pass  # as above: next_batch() notices the drop
