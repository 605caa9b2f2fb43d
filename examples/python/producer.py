#!/usr/bin/env python3
"""A dualstream producer: streams rollouts to `dualstream serve` over WebSocket (/ingest).

    python3 producer.py --url ws://127.0.0.1:8787/ingest --input rollouts.jsonl
    python3 producer.py --url ws://127.0.0.1:8787/ingest --synthetic 4096 --group-size 8

Rollouts are sent in MessagePack frames {"type": "rollouts", "rollouts": [...]}, never more
than the engine's credit unacknowledged. Each frame is answered, in order, by one
{"type": "ack", "ids": [...]} once its rollouts are on disk, preceded by one
{"type": "rejected", "errors": [...]} when some items were refused; a frame that could not be
logged (e.g. a full disk) is answered by {"type": "error", ...} instead, and its rollouts are
sent again once the engine grants credit. A rollout not yet
acknowledged when the connection drops is sent again after reconnecting: the engine
deduplicates by id, so nothing is counted twice. The token comes from --token or
DUALSTREAM_PRODUCER_TOKEN. Prints a JSON summary on stdout; exits 1 if rollouts remain
unacknowledged after the retries.
"""
import argparse
import asyncio
import collections
import json
import os
import random
import sys

import websockets

from dualstream_client import connect, decode, encode


def synthetic(n, group_size, seed):
    """Deterministic FGRPO-like rollouts: binary accuracy and consistency, real grounding."""
    rng = random.Random(seed)
    for i in range(n):
        yield {
            "id": f"py-{seed}-{i}",
            "promptId": f"py-{seed}-p{i // group_size}",
            "rewards": {
                "accuracy": float(rng.random() < 0.5),
                "consistency": float(rng.random() < 0.8),
                "grounding": rng.random(),
            },
            "payload": {"tokens": [rng.randrange(100) for _ in range(4)]},
        }


def read_jsonl(path):
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                rollout = json.loads(line)
                if not isinstance(rollout, dict) or not isinstance(rollout.get("id"), str):
                    sys.exit(f"producer: {path}:{number}: a rollout must be an object with a string id")
                yield rollout


class Producer:
    def __init__(self, rollouts, frame_size):
        # id -> rollout, in input order: everything not yet answered by the engine
        self.pending = collections.OrderedDict((r["id"], r) for r in rollouts)
        self.frame_size = frame_size
        self.acked = 0
        self.duplicates_in_input = 0
        self.rejected = []
        # rejected items whose id the engine reported differs from the one sent at that index
        self.misattributed = []
        self.errors = []
        self.reconnects = -1

    async def session(self, ws):
        """Sends everything pending over one connection; returns when all is answered.

        Every frame is answered exactly once and in order (PROTOCOL.md, "Answers"), so the
        answers are matched to the frames first-in first-out: a `rejected` frame names items
        of the oldest unanswered frame by index, an `ack` completes it, and an `error` frame
        (e.g. `disk-full`) answers it without logging anything: its rollouts are sent again
        once the engine grants credit.
        """
        self.reconnects += 1
        credit = 0
        inflight = collections.deque()  # frames sent and not answered: lists of ids
        inflight_count = 0
        to_send = collections.deque(self.pending.values())
        changed = asyncio.Condition()

        async def read():
            nonlocal credit, inflight_count
            async for message in ws:
                frame = decode(message)
                kind = frame.get("type")
                async with changed:
                    if kind == "credit":
                        credit = frame["credit"]
                    elif kind == "rejected":
                        ids = inflight[0]
                        for error in frame["errors"]:
                            rollout_id = ids[error["index"]]
                            if error.get("id") is not None and error["id"] != rollout_id:
                                self.misattributed.append({"sent": rollout_id, "reported": error["id"]})
                            if self.pending.pop(rollout_id, None) is not None:
                                self.rejected.append(error)
                    elif kind == "ack":
                        ids = inflight.popleft()
                        inflight_count -= len(ids)
                        for rollout_id in frame["ids"]:
                            if self.pending.pop(rollout_id, None) is not None:
                                self.acked += 1
                    elif kind == "error":
                        self.errors.append(frame)
                        print(f"producer: engine error {frame.get('code')}: {frame.get('reason')}", file=sys.stderr)
                        if inflight:
                            ids = inflight.popleft()
                            inflight_count -= len(ids)
                            to_send.extend(self.pending[i] for i in ids if i in self.pending)
                    changed.notify_all()
                    if not self.pending:
                        return

        reader = asyncio.create_task(read())
        try:
            while True:
                async with changed:
                    # room for at least one rollout within the credit (0 = paused by the engine),
                    # or everything answered
                    await changed.wait_for(lambda: reader.done() or (to_send and inflight_count < credit) or (not to_send and not inflight))
                    if reader.done() or not to_send:
                        break
                    size = min(self.frame_size, credit - inflight_count, len(to_send))
                    chunk = [to_send.popleft() for _ in range(size)]
                    inflight.append([r["id"] for r in chunk])
                    inflight_count += size
                await ws.send(encode({"type": "rollouts", "rollouts": chunk}))
            await reader
        finally:
            reader.cancel()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8787/ingest")
    parser.add_argument("--token", default=os.environ.get("DUALSTREAM_PRODUCER_TOKEN"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="rollouts, one JSON object per line")
    source.add_argument("--synthetic", type=int, metavar="N", help="generate N rollouts")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frame", type=int, default=1000, help="rollouts per frame at most")
    parser.add_argument("--retries", type=int, default=20, help="reconnections before giving up")
    args = parser.parse_args()

    rollouts = list(read_jsonl(args.input) if args.input else synthetic(args.synthetic, args.group_size, args.seed))
    producer = Producer(rollouts, args.frame)
    producer.duplicates_in_input = len(rollouts) - len(producer.pending)
    failures = 0
    while producer.pending and failures <= args.retries:
        try:
            async with connect(args.url, args.token) as ws:
                await producer.session(ws)
            if producer.pending:
                raise ConnectionError("the engine closed the connection")
        except (OSError, websockets.exceptions.WebSocketException) as error:
            failures += 1
            print(f"producer: connection lost ({error}); {len(producer.pending)} rollouts unacknowledged, retrying", file=sys.stderr)
            await asyncio.sleep(min(2.0, 0.1 * failures))
    summary = {
        "rollouts": len(rollouts),
        "acked": producer.acked,
        "rejected": producer.rejected,
        "unacknowledged": len(producer.pending),
        "reconnects": producer.reconnects,
        "misattributed": producer.misattributed,
        "errors": producer.errors,
    }
    print(json.dumps(summary))
    return 1 if producer.pending else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
