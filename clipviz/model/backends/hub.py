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


def describe_failure(spec: str, error: BaseException) -> ClipvizError:
    """A one-line error for a model that could not be fetched or found."""
    text = f"{type(error).__name__}: {error}".lower()
    names = {type(e).__name__ for e in _chain(error)}
    local = Path(spec.partition(":")[2] if spec.partition(":")[0] in ("hf", "timm", "open_clip") else spec)
    if local.expanduser().is_dir():  # a local model that fails to load is not a network problem
        first = (str(error).splitlines() or [""])[0][:200]
        return ClipvizError(f"cannot load the model saved in '{local}': {type(error).__name__}: {first}")
    if names & {"GatedRepoError"}:
        return ClipvizError(
            f"model '{spec}' is gated on the Hugging Face Hub: accept its terms and log in "
            "(`hf auth login`), then try again"
        )
    offline_words = ("offline", "connect", "connection", "resolve", "network", "timed out", "max retries")
    if (
        hub_offline()
        or names & {"LocalEntryNotFoundError", "ConnectError", "ConnectionError"}
        or any(w in text for w in offline_words)
    ):
        return ClipvizError(
            f"model '{spec}' is not in the local cache and the Hugging Face Hub cannot be reached (offline): "
            "download it once with network access, or pass a local directory"
        )
    return ClipvizError(
        f"unknown model '{spec}': not a local directory and not a model id on the Hugging Face Hub "
        "(accepted: hf:<id or dir>, open_clip:<name>[/<tag>], open_clip:hf-hub:<id>, timm:<name>, world-clip)"
    )


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def fetching(spec: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` (a hub load); map hub, network and missing-file failures to one-line errors."""
    try:
        return fn()
    except ClipvizError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError, TypeError, KeyError, AttributeError) as error:
        raise describe_failure(spec, error) from error
    except Exception as error:  # hub client errors do not share a base class across versions
        if type(error).__module__.startswith(("huggingface_hub", "httpx", "requests", "urllib3")):
            raise describe_failure(spec, error) from error
        raise
