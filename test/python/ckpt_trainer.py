"""A trainer whose "model" is a chain of checkpoint files, for the exactly-once test.

Applying step n loads the checkpoint the last acknowledged step named (``trainer.state``), adds n
to its list of applied steps and writes ``ckpt-<n>.json``; then it acknowledges the step with
``state={"checkpoint": path}``. ``--kill-at-step n`` SIGKILLs the process right after that
checkpoint is written (the update done, its ack not); ``--kill-after-state n`` once the trainer
state naming it is persisted, before the ack is sent. The final checkpoint must list every step
exactly once. Run with PYTHONPATH=examples/python; prints JSON lines (see scenarios.py).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from typing import Any

import dualstream_client.trainer as trainer_module
from dualstream_client import Trainer


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def write_checkpoint(path: str, applied: list[int]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump({"applied": applied}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_state(step: int) -> None:
    """Dies once the trainer state for `step` is on disk, before the ack goes out."""
    write = trainer_module.write_state_atomically

    def write_then_die(path: Any, saved: Any) -> None:
        write(path, saved)
        if saved["lastStep"] == step:
            die()

    trainer_module.write_state_atomically = write_then_die


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-after-state", type=int)
    args = parser.parse_args()
    if args.kill_after_state is not None:
        kill_after_state(args.kill_after_state)

    async with Trainer(args.batches, state_path=os.path.join(args.dir, "trainer.json")) as trainer:
        checkpoint = trainer.state.get("checkpoint")
        applied: list[int] = []
        if checkpoint is not None:
            with open(checkpoint, encoding="utf-8") as file:
                applied = json.load(file)["applied"]
        emit(event="started", lastStep=trainer.last_step, applied=applied)
        while trainer.last_step < args.steps:
            batch = await trainer.next_batch(timeout=30)
            assert batch is not None, "no batch within 30 s"
            # the update: the model of the last acknowledged step, plus this step
            applied = applied + [batch.step]
            path = os.path.join(args.dir, f"ckpt-{batch.step}.json")
            write_checkpoint(path, applied)
            if batch.step == args.kill_at_step:
                die()
            await batch.ack(policy_version=batch.step, state={"checkpoint": path})
        emit(applied=applied, skipped=trainer.skipped, lastStep=trainer.last_step)


if __name__ == "__main__":
    asyncio.run(main())
