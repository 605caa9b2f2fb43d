"""Python client for `dualstream serve`: a producer that streams rollouts, a trainer that takes batches.

::

    from dualstream_client import Producer, Trainer

    async with Producer("ws://127.0.0.1:8787/ingest", token) as producer:
        await producer.send(rollouts)            # durable once it returns

    async with Trainer("ws://127.0.0.1:8787/batches", token, state_path="trainer.json") as trainer:
        async for batch in trainer:              # each step once, across restarts
            ...                                  # apply batch.rollouts / batch.advantages
            await batch.ack(policy_version=v, state={"checkpoint": path})

`SyncProducer` / `SyncTrainer` are the same with blocking calls. The wire protocol is in
streams/PROTOCOL.md; frames are MessagePack maps and payloads travel untouched (bytes stay bytes).
"""
from .errors import DualstreamError, Disconnected, EngineError, ItemError, RankError, Rejected, Replaced, ServerRefused, Unauthorized
from .producer import Producer
from .sync import SyncBatch, SyncProducer, SyncTrainer
from .trainer import Batch, Trainer, read_state, write_state_atomically
from ._wire import decode, encode

__version__ = "0.1.0"

__all__ = [
    "Producer",
    "Trainer",
    "Batch",
    "SyncProducer",
    "SyncTrainer",
    "SyncBatch",
    "DualstreamError",
    "ServerRefused",
    "Unauthorized",
    "Disconnected",
    "ItemError",
    "Rejected",
    "EngineError",
    "RankError",
    "Replaced",
    "read_state",
    "write_state_atomically",
    "encode",
    "decode",
]
