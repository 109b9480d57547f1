"""Benchmark: example mining for all MLP neurons of one block of a ViT-B/16-sized model, against the bare forward
pass of the same model to the same block, in the same run (random weights; images from the synthetic world).

    python scripts/bench_examples.py [--images 256] [--batch 32] [--block 6] [--workers 4]

Prints images/s of (a) the bare forward pass to the hook (early exit, nothing kept), (b) the model side of mining
(the same batches, plus the running top-k with heat maps for every neuron), (c) ``mine_examples`` on the same
images as PIL images (decoding and resizing in the main process), (d) the whole command path on the world source,
and with ``--workers`` (e) the same with that many decoding processes; and the overhead of (b) over (a) (target:
at most 10%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--block", type=int, default=6)
    ap.add_argument("--top-k", type=int, default=16)
    ap.add_argument(
        "--workers", type=int, default=0, help="also time the world source with this many decoding processes"
    )
    args = ap.parse_args()

    from bench_visualize import build_vit_b16  # scripts/ is on sys.path when this file runs as a script

    import clipviz
    from clipviz.analysis.examples import RunningTopK, mine_examples
    from clipviz.data import batches as decoded_batches
    from clipviz.data import open_source

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model = clipviz.load(build_vit_b16(tmp), device=device)
    hook = f"blocks.{args.block}.mlp.hook_post"
    source = open_source(f"world:{args.images}")
    batches = [x for x, _, _ in decoded_batches(source, model.preprocess_pil, args.batch, [])]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        model.run_with_cache(batches[0], [hook])  # warm-up
        sync()
        t = time.perf_counter()
        for x in batches:
            model.run_with_cache(x, [hook])
        sync()
        bare = args.images / (time.perf_counter() - t)

    point = model.hook_point(hook)
    with torch.no_grad():
        sync()
        t = time.perf_counter()
        top = RunningTopK(args.top_k, model.layout(args.block))
        for i, x in enumerate(batches):
            _, cache = model.run_with_cache(x, [hook])
            top.update(cache[point.name].float(), range(i * args.batch, i * args.batch + len(x)))
        sync()
        model_side = args.images / (time.perf_counter() - t)

    class InMemory:
        name, length, describe = "memory", args.images, []

        def __iter__(self):
            from PIL import Image

            for i, x in enumerate(torch.cat(batches)):
                yield i, Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype("uint8")), None

    t = time.perf_counter()
    mine_examples(model, hook, InMemory(), top_k=args.top_k, batch=args.batch, progress=False)
    sync()
    mining_with_decode = args.images / (time.perf_counter() - t)
    t = time.perf_counter()
    mine_examples(model, hook, source, top_k=args.top_k, batch=args.batch, progress=False)
    sync()
    command_path = args.images / (time.perf_counter() - t)
    with_workers = None
    if args.workers:
        t = time.perf_counter()
        mine_examples(model, hook, source, top_k=args.top_k, batch=args.batch, progress=False, workers=args.workers)
        sync()
        with_workers = args.images / (time.perf_counter() - t)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    result = {
        "device": name,
        "hook": hook,
        "neurons": 3072,
        "images": args.images,
        "batch": args.batch,
        "bare_forward_images_per_s": round(bare, 2),
        "mining_model_side_images_per_s": round(model_side, 2),
        "mining_with_pil_decoding_images_per_s": round(mining_with_decode, 2),
        "world_source_images_per_s": round(command_path, 2),
        "overhead_vs_bare": round(bare / model_side - 1, 4),
    }
    if with_workers is not None:
        result[f"world_source_{args.workers}_workers_images_per_s"] = round(with_workers, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
