"""The exceptions of the dualstream client: each carries the fields a caller acts on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    "DualstreamError",
    "ServerRefused",
    "Unauthorized",
    "Disconnected",
    "ItemError",
    "Rejected",
    "EngineError",
    "RankError",
    "Replaced",
]


class DualstreamError(Exception):
    """Base class of every error the client raises."""


class ServerRefused(DualstreamError):
    """The server answered the WebSocket upgrade with an HTTP error (404, 503, …).

    `reason` is the `error` of the server's JSON body when it sent one. 5xx answers are retried by
    the reconnecting clients; 4xx ones are raised (retrying cannot fix a wrong path or token).
    """

    def __init__(self, url: str, status: int, reason: Optional[str] = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        super().__init__(f"{status}: {reason or 'the server refused the connection'} ({url})")


class Unauthorized(ServerRefused):
    """HTTP 401 at the upgrade: the token is missing, wrong, or another role's.

    The message comes from the server's JSON body, which says which token was expected, e.g.
    ``401: wrong token for role producer (ws://…/ingest)``.
    """

    def __init__(self, url: str, reason: Optional[str] = None) -> None:
        super().__init__(url, 401, reason or "the server refused the token")


class Disconnected(DualstreamError):
    """The connection dropped and could not be re-established (reconnection off, or retries spent)."""


@dataclass(frozen=True)
class ItemError:
    """One rollout the engine refused.

    `index` is the position of the rollout in the list given to `send()`; `id` the rollout's id
    (as the engine read it); `field` the offending field (e.g. ``rewards.accuracy``,
    ``policyVersion``); `reason` what was wrong with it.
    """

    index: int
    id: Optional[str]
    field: Optional[str]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """The item as the engine reports it (``{"index", "id", "field", "reason"}``)."""
        return {"index": self.index, "id": self.id, "field": self.field, "reason": self.reason}


class Rejected(DualstreamError):
    """Some rollouts of one `send()` were refused; the others are acknowledged (durable).

    `errors` lists the refused ones (`ItemError`, by index into the list sent), `acked` the ids
    of the accepted ones.
    """

    def __init__(self, errors: Sequence[ItemError], acked: Sequence[str]) -> None:
        self.errors = sorted(errors, key=lambda error: error.index)
        self.acked = list(acked)
        shown = "; ".join(f"#{e.index} {e.id!r} {e.field}: {e.reason}" for e in self.errors[:3])
        more = f"; and {len(self.errors) - 3} more" if len(self.errors) > 3 else ""
        super().__init__(f"{len(self.errors)} rollout(s) refused ({len(self.acked)} acknowledged): {shown}{more}")


class EngineError(DualstreamError):
    """An `error` frame from the engine that the client cannot work around.

    `code` is the engine's error code (``too-large``, ``bad-frame``, ``bad-ack``, …, see
    streams/PROTOCOL.md "Errors") and `reason` its explanation.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"engine error {code}: {reason}")


class RankError(DualstreamError):
    """The server refused this trainer's rank or world size (``bad-rank``, close 4002).

    Raised from the batch iterator, without reconnecting: every rank of one run must connect
    with the same world size, and the rank must be in ``0 .. world_size - 1``.
    """

    def __init__(self, rank: int, world_size: int, reason: str, close_code: Optional[int] = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.reason = reason
        self.close_code = close_code
        super().__init__(f"rank {rank} of {world_size}: {reason}")


class Replaced(RankError):
    """A newer connection took this trainer's rank (close 4001): another process is running it.

    Raised rather than reconnecting, so two trainers do not take the rank from each other in turn.
    """


def error_from_frame(frame: Mapping[str, Any]) -> EngineError:
    """The `EngineError` of an engine `error` frame."""
    return EngineError(str(frame.get("code")), str(frame.get("reason")))
