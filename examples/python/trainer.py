#!/usr/bin/env python3
"""A dualstream trainer: receives advantage batches from `dualstream serve` (/batches).

    python3 trainer.py --url ws://127.0.0.1:8787/batches --state trainer-state.json --steps 10

Each batch {"type": "batch", "step", "lambda", "constraints", "rollouts": [{"id",
"promptId", "advantage", "payload"}]} is applied once, then acknowledged with
{"type": "ack", "step": n, "policyVersion": v}. Delivery is at-least-once (unacknowledged
batches are sent again after a reconnect or a restart of either side); the effect is
exactly-once because the trainer records the last step it applied (in --state, written
before the ack) and skips any step at or below it, acknowledging it again.

"Applying" a batch here stands in for a gradient step: it appends one JSON line per batch
to --out (step, λ, rollout ids and advantages). The token comes from --token or
DUALSTREAM_TRAINER_TOKEN. Stops after --steps applied steps or --idle seconds without a
batch; prints a JSON summary on stdout.
"""
import argparse
import asyncio
import json
import os
import sys

import websockets

from dualstream_client import connect, decode, encode


class Trainer:
    def __init__(self, state_path, out_path, policy_every):
        self.state_path = state_path
        self.out_path = out_path
        self.policy_every = policy_every
        self.state = {"lastStep": 0, "policyVersion": 0, "applied": 0}
        if state_path and os.path.exists(state_path):
            with open(state_path) as f:
                self.state.update(json.load(f))
        self.applied_now = 0
        self.skipped = 0

    def save(self):
        if not self.state_path:
            return
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)

    def apply(self, batch):
        """The training step (here: a record of what a learner would consume)."""
        if self.out_path:
            record = {
                "step": batch["step"],
                "lambda": {k: v["after"] for k, v in batch["lambda"].items()},
                "advantages": {r["id"]: r["advantage"] for r in batch["rollouts"]},
            }
            with open(self.out_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.state["lastStep"] = batch["step"]
        self.state["applied"] += 1
        if self.policy_every and self.state["applied"] % self.policy_every == 0:
            self.state["policyVersion"] += 1
        self.save()
        self.applied_now += 1

    async def run(self, ws, steps, idle):
        while steps is None or self.applied_now < steps:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=idle)
            except asyncio.TimeoutError:
                return
            frame = decode(message)
            if frame.get("type") == "error":
                print(f"trainer: engine error {frame.get('code')}: {frame.get('reason')}", file=sys.stderr)
                continue
            if frame.get("type") != "batch":
                continue
            if frame["step"] <= self.state["lastStep"]:
                self.skipped += 1  # a redelivery of a step already applied: acknowledge only
            else:
                self.apply(frame)
            ack = {"type": "ack", "step": frame["step"]}
            if self.policy_every:
                ack["policyVersion"] = self.state["policyVersion"]
            await ws.send(encode(ack))


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8787/batches")
    parser.add_argument("--token", default=os.environ.get("DUALSTREAM_TRAINER_TOKEN"))
    parser.add_argument("--state", help="file holding the last applied step (survives restarts)")
    parser.add_argument("--out", help="append one JSON line per applied batch")
    parser.add_argument("--steps", type=int, help="stop after this many applied steps")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this many seconds without a batch")
    parser.add_argument("--retries", type=int, default=20, help="reconnections before giving up")
    parser.add_argument("--policy-version-every", type=int, default=0, metavar="K", help="report a new policyVersion every K applied steps (0 = never)")
    args = parser.parse_args()

    trainer = Trainer(args.state, args.out, args.policy_version_every)
    failures = 0
    while True:
        try:
            async with connect(args.url, args.token) as ws:
                await trainer.run(ws, args.steps, args.idle)
                # let the last ack reach the engine before closing
                await ws.close()
            break
        except (OSError, websockets.exceptions.WebSocketException) as error:
            # unacknowledged batches come again after reconnecting; applied ones are skipped
            failures += 1
            if failures > args.retries:
                print(f"trainer: giving up after {args.retries} reconnections: {error}", file=sys.stderr)
                return 1
            print(f"trainer: connection lost ({error}), reconnecting", file=sys.stderr)
            await asyncio.sleep(min(2.0, 0.1 * failures))
    print(json.dumps({"applied": trainer.applied_now, "skipped": trainer.skipped, "lastStep": trainer.state["lastStep"], "policyVersion": trainer.state["policyVersion"]}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
