"""Scenarios of the dualstream_client package, run by test/python/*.test.ts against a live server.

Each prints JSON objects, one a line, on stdout: events while it runs (``{"event": ...}``) and
its result last. The TypeScript tests assert on them (and on the server's own state).
Run with PYTHONPATH=examples/python.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
from typing import Any, Optional

try:
    import numpy
except ImportError:  # the package works without it: advantages are then a list
    numpy = None  # type: ignore[assignment]

from dualstream_client import (
    DualstreamError,
    Producer,
    Rejected,
    SyncProducer,
    SyncTrainer,
    Trainer,
    read_state,
    write_state_atomically,
)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def rollouts(prefix: str, count: int, group_size: int = 2, **extra: Any) -> list[dict[str, Any]]:
    """`count` rollouts of prompts of `group_size`, ids `{prefix}{i}`."""
    return [
        {
            "id": f"{prefix}{i}",
            "promptId": f"{prefix}p{i // group_size}",
            "rewards": {"accuracy": float(i % 2), "consistency": float(i % 3 != 0)},
            **extra,
        }
        for i in range(count)
    ]


def error_fields(error: BaseException) -> dict[str, Any]:
    """An exception as JSON: its class and the fields it carries."""
    fields = {key: value for key, value in vars(error).items() if isinstance(value, (str, int, float, type(None)))}
    return {"type": type(error).__name__, "message": str(error), **fields}


def advantages_type(advantages: Any) -> str:
    """``ndarray float64`` when numpy is installed (as it must then be), else ``list``."""
    if numpy is not None and isinstance(advantages, numpy.ndarray):
        return f"ndarray {advantages.dtype}"
    return type(advantages).__name__


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# -- producer --------------------------------------------------------------------------------


async def credit(args: argparse.Namespace) -> None:
    """Concurrent send() calls of disjoint rollouts; with --ignore-credit the producer overruns it."""
    async with Producer(args.url, max_frame=args.frame, credit_aware=not args.ignore_credit) as producer:
        announced = producer.credit
        calls = [producer.send(rollouts(f"c{call}-", args.n, group_size=2)) for call in range(args.calls)]
        await asyncio.gather(*calls)
        emit(acked=producer.acked, credit=announced, connections=producer.connections, resent=producer.resent)


async def rejected(args: argparse.Namespace) -> None:
    """One send() with refused items among good ones, next to a clean concurrent send()."""
    items = rollouts("ok", 10)
    items[3] = {"id": "bad-nan", "promptId": "x", "rewards": {"accuracy": math.nan}}
    items[7] = {"id": "bad-type", "promptId": "x", "rewards": {"accuracy": "high"}}
    async with Producer(args.url, max_frame=4) as producer:
        outcome = await asyncio.gather(producer.send(items), producer.send(rollouts("clean", 6)), return_exceptions=True)
    refusal = outcome[0]
    assert isinstance(refusal, Rejected), repr(refusal)
    emit(
        errors=[error.as_dict() for error in refusal.errors],
        acked=refusal.acked,
        message=str(refusal),
        clean=outcome[1],
        isDualstreamError=isinstance(refusal, DualstreamError),
    )


async def too_large(args: argparse.Namespace) -> None:
    """Rollouts too large for the server's frames among small ones: the frames are split, only they are refused."""
    items = rollouts("s", 5)
    items[1]["payload"] = b"x" * args.big  # above the frame limit: answered `too-large`
    items[3]["payload"] = b"y" * args.huge  # above twice the limit: the server closes with 1009
    async with Producer(args.url, max_frame=5, backoff_initial=0.01) as producer:
        try:
            await producer.send(items)
            refused: Any = None
        except Rejected as refusal:
            refused = {"errors": [error.as_dict() for error in refusal.errors], "acked": sorted(refusal.acked)}
        emit(refused=refused, acked=producer.acked, connections=producer.connections, errors=[e.get("code") for e in producer.engine_errors])


async def unauthorized(args: argparse.Namespace) -> None:
    """Opens a producer or a trainer with the token given; reports what was raised."""
    token = args.token or None
    try:
        if args.role == "producer":
            async with Producer(args.url, token, reconnect=True):
                pass
        else:
            async with Trainer(args.url, token, state_path=None):
                pass
        emit(opened=True)
    except DualstreamError as error:
        emit(**error_fields(error))


async def resend(args: argparse.Namespace) -> None:
    """Rollouts across a server killed and restarted: A, then B once told on stdin (see reconnect.test.ts)."""
    async with Producer(args.url, max_frame=args.frame, backoff_max=0.5) as producer:
        await producer.send(rollouts("a", args.first))
        emit(event="first acked", acked=producer.acked)
        await read_line()
        second = asyncio.create_task(producer.send(rollouts("b", args.second)))
        while producer.unanswered == 0 and not second.done():
            await asyncio.sleep(0.005)  # waiting for the frames to be on the wire, not asserting
        emit(event="second in flight", unanswered=producer.unanswered)
        await second
        emit(acked=producer.acked, resent=producer.resent, connections=producer.connections)


async def max_async(args: argparse.Namespace) -> None:
    """maxAsync: the trainer's version reaches producers in credit frames; stale rollouts are refused."""
    async with Producer(args.ingest) as producer, Trainer(args.batches, state_path=None) as trainer:
        before = {"trainerVersion": producer.trainer_version, "minPolicyVersion": producer.min_policy_version}
        await producer.send(rollouts("v", 4, policyVersion=0))
        batch = await trainer.next_batch(timeout=20)
        assert batch is not None
        await batch.ack(policy_version=3)
        reached = await producer.wait_for_trainer_version(3, timeout=20)
        after = {"trainerVersion": producer.trainer_version, "minPolicyVersion": producer.min_policy_version}
        items = rollouts("w", 4, policyVersion=2)
        items[1]["policyVersion"] = 1
        del items[2]["policyVersion"]
        try:
            await producer.send(items)
            refused: Any = None
        except Rejected as refusal:
            refused = [error.as_dict() for error in refusal.errors]
        # everything answered: the whole credit is room again
        room = await producer.wait_for_credit(producer.credit or 1, timeout=20)
        emit(before=before, reached=reached, after=after, refused=refused, room=room, credit=producer.credit)


# -- trainer ---------------------------------------------------------------------------------


async def roundtrip(args: argparse.Namespace) -> None:
    """Payloads untouched, batch fields, state persisted before the ack, restored and skipped after a restart."""
    payloads = [{"bin": bytes([0, 1, 255, i]), "ints": [i, -i], 7: "an int key", "f": 0.1 * i} for i in range(args.n)]
    sent = [dict(rollout, payload=payload) for rollout, payload in zip(rollouts("t", args.n), payloads)]
    by_id = {rollout["id"]: rollout["payload"] for rollout in sent}
    async with Producer(args.ingest) as producer:
        await producer.send(sent)
    steps = args.n // 4
    seen: list[dict[str, Any]] = []
    async with Trainer(args.batches, state_path=args.state) as trainer:
        first = {"lastStep": trainer.last_step, "state": trainer.state, "policyVersion": trainer.policy_version}
        for _ in range(steps - 1):
            batch = await trainer.next_batch(timeout=20)
            assert batch is not None
            seen.append(
                {
                    "step": batch.step,
                    "ids": batch.ids,
                    "payloadsIntact": all(rollout["payload"] == by_id[rollout["id"]] for rollout in batch.rollouts),
                    "binIsBytes": all(isinstance(rollout["payload"]["bin"], bytes) for rollout in batch.rollouts),
                    "advantagesType": advantages_type(batch.advantages),
                    "advantagesMatch": list(map(float, batch.advantages)) == [rollout["advantage"] for rollout in batch.rollouts],
                    "lambda": batch.lambda_,
                    "constraints": sorted(batch.constraints),
                    "batchSize": batch.batch_size,
                    "shard": batch.shard,
                }
            )
            await batch.ack(policy_version=batch.step * 10, state={"checkpoint": f"ckpt-{batch.step}"})
        # the last step is applied and persisted, and the process "dies" before its ack is sent
        last = await trainer.next_batch(timeout=20)
        assert last is not None
        write_state_atomically(args.state, {"lastStep": last.step, "policyVersion": 99, "state": {"checkpoint": f"ckpt-{last.step}"}})
    async with Trainer(args.batches, state_path=args.state) as restarted:
        restored = {"lastStep": restarted.last_step, "state": restarted.state, "policyVersion": restarted.policy_version}
        # the unacknowledged step comes again first: skipped (and acknowledged); then the next one is yielded
        async with Producer(args.ingest) as producer:
            await producer.send(rollouts("u", 4))
        following = await restarted.next_batch(timeout=20)
        assert following is not None
        await following.ack()
        emit(numpy=numpy is not None, first=first, seen=seen, restored=restored, skipped=restarted.skipped, following=following.step, final=read_state(args.state))


async def replaced(args: argparse.Namespace) -> None:
    """A second connection for the same rank: the first one's iterator raises Replaced."""
    async with Trainer(args.batches, state_path=None, rank=args.rank, world_size=args.world) as first:
        async with Trainer(args.batches, state_path=None, rank=args.rank, world_size=args.world):
            try:
                await first.next_batch(timeout=20)
                emit(raised=None)
            except DualstreamError as error:
                emit(raised=error_fields(error))


async def rank(args: argparse.Namespace) -> None:
    """One rank of a data-parallel trainer: a line per batch (its shard), acking each."""
    try:
        async with Trainer(args.batches, state_path=args.state, rank=args.rank, world_size=args.world) as trainer:
            emit(event="connected", rank=args.rank)
            while trainer.last_step < args.steps:
                batch = await trainer.next_batch(timeout=args.idle)
                if batch is None:
                    emit(event="idle", lastStep=trainer.last_step)
                    return
                emit(event="batch", step=batch.step, ids=batch.ids, shard=batch.shard, batchSize=batch.batch_size, advantages=list(map(float, batch.advantages)))
                await batch.ack(policy_version=batch.step)
        emit(done=True, lastStep=trainer.last_step)
    except DualstreamError as error:
        emit(raised=error_fields(error))


async def reconnecting_trainer(args: argparse.Namespace) -> None:
    """A trainer that keeps going across server restarts until --steps (see reconnect.test.ts)."""
    async with Trainer(args.batches, state_path=args.state, backoff_max=0.5) as trainer:
        applied = []
        while trainer.last_step < args.steps:
            batch = await trainer.next_batch()
            assert batch is not None
            applied.append(batch.step)
            emit(event="batch", step=batch.step, ids=batch.ids)
            await batch.ack(policy_version=batch.step)
        emit(applied=applied, skipped=trainer.skipped, connections=trainer.connections)


# -- the blocking facade ---------------------------------------------------------------------


def sync(args: argparse.Namespace) -> None:
    """SyncProducer from two threads at once, Rejected through the facade, SyncTrainer iteration."""
    with SyncProducer(args.ingest, max_frame=3) as producer:
        announced = producer.credit
        threads = [threading.Thread(target=producer.send, args=(rollouts(f"s{k}-", 8),)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        items = rollouts("s2-", 4)
        items[2]["rewards"]["accuracy"] = "high"
        try:
            producer.send(items)
            refused: Optional[list[dict[str, Any]]] = None
        except Rejected as refusal:
            refused = [error.as_dict() for error in refusal.errors]
        acked = producer.producer.acked
    steps: list[int] = []
    with SyncTrainer(args.batches, state_path=args.state) as trainer:
        for batch in trainer:
            steps.append(batch.step)
            batch.ack(policy_version=batch.step, state={"checkpoint": f"ckpt-{batch.step}"})
            if batch.step == args.steps:
                break
        timed_out = trainer.next_batch(timeout=0.2)
        saved = {"lastStep": trainer.last_step, "state": trainer.state, "policyVersion": trainer.policy_version}
    emit(credit=announced, acked=acked, refused=refused, steps=steps, timedOut=timed_out, saved=saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("credit", "rejected", "resend", "unauthorized", "too-large"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True)
        command.add_argument("--frame", type=int, default=100)
    commands.choices["credit"].add_argument("--n", type=int, default=200)
    commands.choices["credit"].add_argument("--calls", type=int, default=3)
    commands.choices["credit"].add_argument("--ignore-credit", action="store_true")
    commands.choices["resend"].add_argument("--first", type=int, default=40)
    commands.choices["resend"].add_argument("--second", type=int, default=200)
    commands.choices["too-large"].add_argument("--big", type=int, required=True)
    commands.choices["too-large"].add_argument("--huge", type=int, required=True)
    commands.choices["unauthorized"].add_argument("--role", choices=("producer", "trainer"), required=True)
    commands.choices["unauthorized"].add_argument("--token", default="")
    for name in ("roundtrip", "max-async", "sync"):
        command = commands.add_parser(name)
        command.add_argument("--ingest", required=True)
        command.add_argument("--batches", required=True)
        command.add_argument("--state")
        command.add_argument("--n", type=int, default=16)
        command.add_argument("--steps", type=int, default=4)
        command.add_argument("--idle", type=float, default=1.0)
    for name in ("rank", "replaced", "reconnecting-trainer"):
        command = commands.add_parser(name)
        command.add_argument("--batches", required=True)
        command.add_argument("--state")
        command.add_argument("--rank", type=int, default=0)
        command.add_argument("--world", type=int, default=1)
        command.add_argument("--steps", type=int, default=1)
        command.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    handlers = {
        "credit": credit,
        "rejected": rejected,
        "too-large": too_large,
        "unauthorized": unauthorized,
        "resend": resend,
        "max-async": max_async,
        "roundtrip": roundtrip,
        "replaced": replaced,
        "rank": rank,
        "reconnecting-trainer": reconnecting_trainer,
    }
    if args.command == "sync":
        sync(args)
    else:
        asyncio.run(handlers[args.command](args))


if __name__ == "__main__":
    main()
