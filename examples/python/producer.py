#!/usr/bin/env python3
"""A dualstream producer: streams rollouts to `dualstream serve` over WebSocket (/ingest).

    python3 producer.py --url ws://127.0.0.1:8787/ingest --input rollouts.jsonl
    python3 producer.py --url ws://127.0.0.1:8787/ingest --synthetic 4096 --group-size 8

A command-line front to `dualstream_client.Producer` (see README.md): rollouts go in frames of
at most --frame, never more than the engine's credit unanswered; refused items are reported
with their index, id, field and reason; after a dropped connection the unacknowledged ones are
sent again (the engine deduplicates by id). The token comes from --token or
DUALSTREAM_PRODUCER_TOKEN. Prints a JSON summary on stdout; exits 1 if rollouts remain
unacknowledged after the retries.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
from typing import Any, Iterator

from dualstream_client import DualstreamError, Producer, Rejected


def synthetic(n: int, group_size: int, seed: int) -> Iterator[dict[str, Any]]:
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


def read_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                rollout = json.loads(line)
                if not isinstance(rollout, dict) or not isinstance(rollout.get("id"), str):
                    sys.exit(f"producer: {path}:{number}: a rollout must be an object with a string id")
                yield rollout


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    logging.basicConfig(level=logging.INFO, format="producer: %(message)s", stream=sys.stderr)

    rollouts = list(read_jsonl(args.input) if args.input else synthetic(args.synthetic, args.group_size, args.seed))
    # an id given twice is sent once (the engine would acknowledge the second without logging it)
    unique = list({rollout["id"]: rollout for rollout in reversed(rollouts)}.values())[::-1]
    rejected: list[dict[str, Any]] = []
    misattributed: list[dict[str, Any]] = []
    producer = Producer(args.url, args.token, max_frame=args.frame, max_retries=args.retries)
    try:
        async with producer:
            await producer.send(unique)
    except Rejected as refusal:
        for error in refusal.errors:
            rejected.append(error.as_dict())
            # the engine's id for the item must be the one sent at that index: answers matched FIFO
            sent = unique[error.index].get("id")
            if error.id is not None and error.id != sent:
                misattributed.append({"sent": sent, "reported": error.id})
    except DualstreamError as error:
        print(f"producer: {error}", file=sys.stderr)
    unacknowledged = len(unique) - producer.acked - len(rejected)
    summary = {
        "rollouts": len(rollouts),
        "acked": producer.acked,
        "rejected": rejected,
        "unacknowledged": unacknowledged,
        "reconnects": max(0, producer.connections - 1),
        "misattributed": misattributed,
        "errors": producer.engine_errors,
    }
    print(json.dumps(summary))
    return 1 if unacknowledged else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
