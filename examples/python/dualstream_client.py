"""Shared bits of the Python examples: connecting with a token, MessagePack frames.

Uses only the Debian packages python3-websockets and python3-msgpack (any MessagePack
implementation can talk to the engine: frames are plain maps).
"""
import msgpack
import websockets


def connect(url, token=None, max_size=64 * 1024 * 1024):
    """Opens a WebSocket with `Authorization: Bearer <token>` (websockets 10 to 14+)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    major = int(websockets.__version__.split(".")[0])
    if headers is None:
        return websockets.connect(url, max_size=max_size)
    if major >= 14:
        return websockets.connect(url, additional_headers=headers, max_size=max_size)
    return websockets.connect(url, extra_headers=headers, max_size=max_size)


def encode(frame):
    return msgpack.packb(frame, use_bin_type=True)


def decode(message):
    """A frame from the engine: binary = MessagePack, text = JSON."""
    if isinstance(message, str):
        import json

        return json.loads(message)
    return msgpack.unpackb(message, raw=False)
