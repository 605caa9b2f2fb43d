#!/usr/bin/env python3
"""A dualstream trainer: receives advantage batches from `dualstream serve` (/batches).

    python3 trainer.py --url ws://127.0.0.1:8787/batches --state trainer-state.json --steps 10

A command-line front to `dualstream_client.Trainer` (see README.md). Each batch is applied
once, then acknowledged; the last applied step is saved in --state (atomically, before the
ack), so a step delivered again after a reconnect or a restart is skipped and acknowledged
again: the effect is exactly-once.

"Applying" a batch here stands in for a gradient step: it appends one JSON line per batch to
--out (step, λ, rollout ids and advantages). The token comes from --token or
DUALSTREAM_TRAINER_TOKEN. Stops after --steps applied steps or --idle seconds without a batch;
prints a JSON summary on stdout.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from dualstream_client import Batch, DualstreamError, Trainer


def apply(batch: Batch, out_path: str | None) -> None:
    """The training step (here: a record of what a learner would consume)."""
    if out_path:
        record = {
            "step": batch.step,
            "lambda": batch.lambda_,
            "advantages": {rollout["id"]: rollout["advantage"] for rollout in batch.rollouts},
        }
        with open(out_path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8787/batches")
    parser.add_argument("--token", default=os.environ.get("DUALSTREAM_TRAINER_TOKEN"))
    parser.add_argument("--state", help="file holding the last applied step (survives restarts)")
    parser.add_argument("--out", help="append one JSON line per applied batch")
    parser.add_argument("--steps", type=int, help="stop after this many applied steps")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds without a batch")
    parser.add_argument("--retries", type=int, default=20, help="reconnections before giving up")
    parser.add_argument("--policy-version-every", type=int, default=0, metavar="K", help="report a new policyVersion every K applied steps (0 = never)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="trainer: %(message)s", stream=sys.stderr)

    applied_now = 0
    try:
        async with Trainer(args.url, args.token, state_path=args.state, max_retries=args.retries) as trainer:
            saved = trainer.state if isinstance(trainer.state, dict) else {}
            # steps applied over every run (a state without the count: one per step so far)
            applied = saved.get("applied", trainer.last_step)
            version = trainer.policy_version or 0
            while args.steps is None or applied_now < args.steps:
                batch = await trainer.next_batch(timeout=args.idle)
                if batch is None:
                    break
                apply(batch, args.out)
                applied += 1
                applied_now += 1
                if args.policy_version_every and applied % args.policy_version_every == 0:
                    version += 1
                await batch.ack(policy_version=version if args.policy_version_every else None, state={"applied": applied})
    except DualstreamError as error:
        print(f"trainer: {error}", file=sys.stderr)
        return 1
    summary = {"applied": applied_now, "skipped": trainer.skipped, "lastStep": trainer.last_step, "policyVersion": trainer.policy_version or 0}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
