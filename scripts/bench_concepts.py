"""Benchmark: the direct lens for every MLP neuron of every block of a ViT-B/16-sized CLIP against a 20,000-word
vocabulary whose text embeddings are already cached (random weights; speed does not depend on them).

    python scripts/bench_concepts.py [--words 20000] [--top-k 5]

Prints the seconds for all 12 x 3072 = 36,864 neurons, split into weight mapping and ranking.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F


def build_clip_b16(directory: str) -> str:
    import transformers as T

    config = T.CLIPConfig(
        vision_config=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=16,
        ),
        text_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128),
        projection_dim=512,
    )
    T.CLIPModel(config).save_pretrained(directory)
    T.CLIPImageProcessor().save_pretrained(directory)
    return f"hf:{directory}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=20000)
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()

    import clipviz
    from clipviz.concepts import Vocabulary, joint_directions, output_directions

    with tempfile.TemporaryDirectory() as tmp:
        model = clipviz.load(build_clip_b16(tmp))
    vocab = Vocabulary("bench", tuple(f"word{i}" for i in range(args.words)))
    # Stand-in for the cached text embeddings (what text_embeddings() loads from its safetensors cache).
    text = F.normalize(torch.randn(args.words, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    start = time.perf_counter()
    directions = torch.cat(
        [joint_directions(model, output_directions(model, f"blocks.{i}.mlp.hook_post")) for i in range(model.n_blocks)]
    )
    mapped = time.perf_counter()
    u = F.normalize(directions, dim=-1)
    scores, index = [], []
    for chunk in u.split(4096):
        s, i = (chunk @ text.T).topk(args.top_k, dim=1)
        scores.append(s)
        index.append(i)
    ranked = time.perf_counter()
    result = {
        "neurons": int(u.shape[0]),
        "words": len(vocab.concepts),
        "threads": torch.get_num_threads(),
        "seconds_mapping": round(mapped - start, 3),
        "seconds_ranking": round(ranked - mapped, 3),
        "seconds_total": round(ranked - start, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
