"""What every subcommand shares: the model arguments, loading, and parsing of index lists and reductions."""

from __future__ import annotations

import argparse


def add_model_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that takes a model spec (and the options every model command has)."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument(
        "model",
        help="model spec: world-clip, hf:<id or dir>, open_clip:<name>[/<tag>], "
        "open_clip:hf-hub:<id>, timm:<name>, or a local directory",
    )
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow a hub model to run its own code (off unless asked)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--revision", help="branch, tag or commit of a transformers model on the Hub (hf:<id>)")
    p.add_argument("--cache-dir", help="where downloaded weights are kept (default: the libraries' own caches)")
    return p


def load_model(args: argparse.Namespace):
    import torch

    from clipviz.model.loading import check_device, load

    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    precision = getattr(args, "precision", None)
    if precision == "auto" and torch.device(device).type == "cuda":
        precision = "bf16-weights"  # the fastest GPU path (docs/benchmarks.md)
    dtype = {"bf16-weights": torch.bfloat16, "fp16-weights": torch.float16}.get(precision)
    return load(
        args.model,
        device=device,
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        revision=getattr(args, "revision", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


def parse_indices(text: str, width: int | None = None, what: str = "index") -> list[int]:
    """``"0:64"``, ``"3,7,9"`` or ``"0:4,10"`` -> a list of indices (ranges are half-open, like Python's); the
    count and, with ``width``, the bounds are checked before anything is expanded."""
    from clipviz.apps.validate import expand, parse_spans

    return expand(parse_spans(text, what), width, what)


def parse_reduce(text: str):
    if text in ("patches", "cls", "all", "max"):
        return text
    parts = text.split(":")
    try:
        if parts[0] == "patch" and len(parts) == 3:
            return ("patch", int(parts[1]), int(parts[2]))
        if parts[0] == "region" and len(parts) == 5:
            return ("region", *map(int, parts[1:]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError("use patches, cls, all, max, patch:ROW:COL or region:R0:R1:C0:C1")
