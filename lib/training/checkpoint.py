"""Checkpoint files: checksummed, atomic, and readable with ``torch.load(weights_only=True)``.

A checkpoint file is ``torch.save`` of a small envelope::

    {"format": CHECKPOINT_FORMAT, "sha256": "<hex>", "payload": <uint8 tensor>}

where ``payload`` holds the bytes of ``torch.save(payload_dict)`` and ``sha256`` is their
SHA-256. ``load_checkpoint`` reads the envelope and the payload with ``weights_only=True`` (so a
payload may hold only tensors, plain containers, numbers, strings, bools and None), checks the
format tag and the checksum, and raises ``CheckpointError`` (a ``ValueError``) naming the file
and what is wrong for an empty, truncated, bit-flipped, random or foreign file.
``save_checkpoint`` writes a temporary file in the target's folder, flushes and fsyncs it,
``os.replace``s it over the target and fsyncs the folder, so a crash leaves the old file or the
new one, never a torn one.

``config_differences(saved, current)`` lists the fields in which two flat run descriptions
differ; the training loop uses it to refuse resuming a checkpoint made with other settings.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "config_differences"]

CHECKPOINT_FORMAT = "lib.training.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, foreign, or does not fit the current run."""



def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (tensors, plain containers, numbers, strings) to ``path`` atomically,
    with its SHA-256; returns the path. Creates the parent folder if needed."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"payload must be a mapping, got {type(payload).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    # The tensor views the buffer's own bytes: hashing and wrapping copy nothing.
    blob = buf.getbuffer()
    envelope = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(blob).hexdigest(),
                "payload": torch.frombuffer(blob, dtype=torch.uint8)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(envelope, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read, verify and return the payload dict written by ``save_checkpoint``.

    Raises ``CheckpointError`` naming ``path`` when the file is missing, empty, not a torch
    file (truncated, random bytes), not a checkpoint of this format (e.g. a bare
    ``state_dict``), or its payload does not match its SHA-256 (bit flips)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted copy?")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} ({size} bytes) is not a readable torch file: it is "
                              f"truncated, corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(envelope, dict) or envelope.get("format") != CHECKPOINT_FORMAT:
        found = sorted(map(str, envelope))[:8] if isinstance(envelope, dict) else type(envelope).__name__
        raise CheckpointError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file (found {found}); "
                              "a bare state_dict or another tool's file cannot be resumed")
    blob, digest = envelope.get("payload"), envelope.get("sha256")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {path} has a malformed envelope (payload or sha256 missing)")
    data = memoryview(blob.numpy())  # the loaded bytes themselves, hashed without a copy
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its payload hashes to SHA-256 {actual[:16]}..., "
                              f"the file records {digest[:16]}...")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # a checksummed payload that does not load: written by an incompatible torch
        raise CheckpointError(f"checkpoint {path}: its payload does not load ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path}: its payload is a {type(payload).__name__}, not a dict")
    return payload


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every key whose value differs or is only on one side
    (shown as ``<absent>``), in sorted key order; empty when the two agree."""
    missing = "<absent>"
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out
