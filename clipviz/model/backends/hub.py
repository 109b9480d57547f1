"""Turning hub and network failures into one-line user errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from clipviz.errors import ClipvizError

T = TypeVar("T")


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def first_line(error: BaseException, limit: int = 200) -> str:
    """The error's first line, with the next one where the first only introduces it ("Error(s) in loading
    state_dict for CLIP:").

    >>> first_line(RuntimeError("Error(s) in loading state_dict for CLIP:" + chr(10) + "  Missing key(s): proj"))
    'Error(s) in loading state_dict for CLIP: Missing key(s): proj'
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return text[:limit]


def describe_failure(spec: str, error: BaseException, what: str = "model") -> ClipvizError:
    """A one-line error for a model (or, with ``what="dataset"``, a dataset) that could not be fetched or found."""
    text = f"{type(error).__name__}: {error}".lower()
    names = {type(e).__name__ for e in _chain(error)}
    corrupt = corrupt_weights(error)
    if corrupt is not None:
        return ClipvizError(f"cannot read the weights of {what} '{spec}': {corrupt}")
    local = Path(spec.partition(":")[2] if spec.partition(":")[0] in ("hf", "timm", "open_clip") else spec)
    if what == "model" and local.expanduser().is_dir():  # a local model that fails to load is not a network problem
        return ClipvizError(f"cannot load the model saved in '{local}': {type(error).__name__}: {first_line(error)}")
    if names & {"GatedRepoError"}:
        return ClipvizError(
            f"{what} '{spec}' is gated on the Hugging Face Hub: accept its terms and log in "
            "(`hf auth login`), then try again"
        )
    offline_words = ("offline", "connect", "connection", "resolve", "network", "timed out", "max retries")
    if (
        hub_offline()
        or names & {"LocalEntryNotFoundError", "ConnectError", "ConnectionError"}
        or any(w in text for w in offline_words)
    ):
        return ClipvizError(
            f"{what} '{spec}' is not in the local cache and the Hugging Face Hub cannot be reached (offline): "
            "download it once with network access, or pass a local directory"
        )
    if what == "dataset":
        return ClipvizError(
            f"unknown dataset '{spec}': not a folder of images, not a saved dataset and not a dataset id on the "
            "Hugging Face Hub (accepted: a folder, world:<n>, a dataset saved with save_to_disk, or a Hub id)"
        )
    return ClipvizError(
        f"unknown model '{spec}': not a local directory and not a model id on the Hugging Face Hub "
        "(accepted: hf:<id or dir>, open_clip:<name>[/<tag>], open_clip:hf-hub:<id>, timm:<name>, world-clip)"
    )


_CORRUPT_WORDS = (
    "deserializing header",
    "header too large",
    "header too small",
    "invalid header",
    "metadata incomplete",
    "incomplete metadata",
    "unexpected eof",
    "invalid load key",
    "failed finding central directory",
    "pytorchstreamreader failed",
    "buffer size",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def corrupt_weights(error: BaseException) -> str | None:
    """``"'<file>' is corrupt or truncated (<reason>)"`` when ``error`` comes from reading a broken weight file."""
    for e in _chain(error):
        text = str(e).strip()
        if type(e).__name__ == "SafetensorError" or any(w in text.lower() for w in _CORRUPT_WORDS):
            reason = text.splitlines()[0][:160] if text else type(e).__name__
            file = getattr(e, "filename", None) or _broken_file_of(error)
            where = f"'{file}'" if file else "a weight file"
            return f"{where} is corrupt or truncated ({reason})"
    return None


def _broken_file_of(error: BaseException) -> str | None:
    """The weight file named in the error chain's messages, if any."""
    import re

    for e in _chain(error):
        for match in re.findall(r"[\w./~+-]+(?:\.safetensors|\.bin|\.pth?)\b", str(e)):
            return match
    return None


def first_unreadable_weights(folder) -> str | None:
    """The first weight file in a local model folder that does not open (safetensors' header is read), or None."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    for key in list(f.keys())[-1:]:
                        f.get_slice(key)
            except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
                return f"'{path}' is corrupt or truncated ({str(error).splitlines()[0][:160]})"
            size = path.stat().st_size
            if size < 8:
                return f"'{path}' is corrupt or truncated ({size} bytes)"
    return None


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def fetching(spec: str, fn: Callable[[], T], what: str = "model") -> T:
    """Run ``fn`` (a hub load); map hub, network, missing-file and corrupt-file failures to one-line errors."""
    try:
        return fn()
    except ClipvizError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError, EOFError, TypeError, KeyError, AttributeError) as error:
        raise describe_failure(spec, error, what) from error
    except Exception as error:  # hub client errors do not share a base class across versions
        if type(error).__module__.startswith(("huggingface_hub", "httpx", "requests", "urllib3", "safetensors")):
            raise describe_failure(spec, error, what) from error
        if corrupt_weights(error) is not None:
            raise describe_failure(spec, error, what) from error
        raise
