"""Train the small CLIP that ships with clipviz on the synthetic world (CPU-friendly, deterministic).

    python scripts/train_world_clip.py --out clipviz/world/models/world-clip

writes an open_clip local directory (``open_clip_config.json`` + ``open_clip_model.safetensors``, fp16 to stay
small) and ``training_log.json`` with the settings and the loss curve. ``clipviz.load("world-clip")`` reads it.

The loss is CLIP's symmetric contrastive loss with multi-positive targets: a caption that names only some
factors ("a red object") is a true description of every image in the batch whose named factors match, so all
such images are its positives (the world knows the truth, see ``WorldBatch.caption_matches``). Plain CLIP would
push those images apart from the caption and learn the short prompts badly.

Fine-tuning with planted concept neurons (the shipped weights since 2026-12-01; docs/validation.md):

    python scripts/plant_world_clip.py --out plan.json
    python scripts/train_world_clip.py --init-from clipviz/world/models/world-clip --plant plan.json --plant-weight 2 \
        --prompt-weight 1 --seed 17 --steps 450 --warmup 30 --lr 5e-4 --workers 0 --threads 1

continues from the given weights on a fresh stream (seed 17) and adds two losses: ``--plant`` makes the plan's MLP
neurons detectors of their concepts (``clipviz.world.planting.PlantLoss``), ``--prompt-weight`` trains the zero-shot
task itself (single-object images against the world's single-factor prompts).

A larger organism (the issue's suggestion for a GPU run): ``--image-size 96 --vision-layers 6 --vision-width 256``
renders the world at 96 px and trains a 6-block, 256-wide image tower; clipviz's ground-truth tools render the world
at each model's own input size (``clipviz.world.groundtruth.world_size``).

Three exact speed-ups make the 2500 steps fit in under an hour on a 2-core CPU (55 min measured; docs/benchmarks.md):
attention as batched matrix products, the text tower run only up to each caption's end token, and only the token
embedding rows of the world's words trained. They compute the same model (``tests/test_train_world_clip.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from clipviz import world

MODEL_CFG = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
# The world's images are not natural photos: plain [0,1] pixels centred at 0.5.
PREPROCESS_CFG = {
    "size": 64,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def contrast_groups(
    factors: dict[str, np.ndarray], fraction: float, family: str, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Rewrite the first ``fraction`` of the scenes into groups that share every factor but ``family``, which
    takes each of its values once per group: hard negatives that a caption naming ``family`` must tell apart.
    """
    k = len(world.FACTORS[family])
    n_groups = int(len(factors[family]) * fraction) // k
    out = {fam: idx.copy() for fam, idx in factors.items()}
    for g in range(n_groups):
        rows = slice(g * k, (g + 1) * k)
        for fam in out:
            out[fam][rows] = rng.permutation(k) if fam == family else out[fam][g * k]
    return out


class WorldStream(IterableDataset):
    """Batch ``s`` is drawn from ``seed * 1_000_003 + s``: the stream is a pure function of the seed.

    With several DataLoader workers, worker ``w`` of ``W`` renders the batches ``s = w (mod W)``; the loader takes
    one batch from each worker in turn, so the batches arrive in the order ``0, 1, 2, ...`` for any ``W``.
    Captions are tokenized in the workers too.
    """

    def __init__(
        self, batch: int, steps: int, seed: int, shape_groups: float, context_length: int, size: int = 64
    ) -> None:
        self.batch, self.steps, self.seed, self.shape_groups = batch, steps, seed, shape_groups
        self.context_length, self.size = context_length, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
        for step in range(worker, self.steps, workers):
            seed = self.seed * 1_000_003 + step
            if self.shape_groups > 0:
                rng = np.random.default_rng([seed, 1])
                factors = contrast_groups(world.sample_factors(self.batch, rng), self.shape_groups, "shape", rng)
                b = world.generate(self.batch, seed=seed, factors=factors, size=self.size)
            else:  # the stream of the shipped weights
                b = world.generate(self.batch, seed=seed, size=self.size)
            factors = torch.from_numpy(np.stack([b.factors[fam] for fam in world.FACTORS], axis=1))
            yield torch.from_numpy(b.images), tokenizer(b.captions), torch.from_numpy(b.caption_matches()), factors


class BatchedSelfAttention(nn.Module):
    """The self-attention of an ``nn.MultiheadAttention`` (batch first), computed with batched matrix products.

    It holds the module's own parameters under the same names, so the state dict is unchanged. For the model's
    short sequences (65 image positions at 64 px, at most 24 text positions, heads of 32) it avoids the fused CPU
    kernel and the sequence-first copies inside ``nn.MultiheadAttention``: about 1.6x faster on the 2-core CPU,
    same values.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.bias_k is None and mha.dropout == 0):
            raise ValueError("only batch-first self-attention without bias_k/bias_v or dropout is supported")
        self.num_heads = mha.num_heads
        self.in_proj_weight, self.in_proj_bias, self.out_proj = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query or need_weights:
            raise ValueError("BatchedSelfAttention computes self-attention only, without weights")
        b, n, d = query.shape
        heads = self.num_heads
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, n, d / heads)
        scores = (q * (d // heads) ** -0.5) @ k.transpose(-1, -2)
        if attn_mask is not None:
            scores = scores + attn_mask
        out = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out), None


def use_batched_attention(model: open_clip.CLIP) -> None:
    """Swap every block's attention for :class:`BatchedSelfAttention` (training only; saving is unaffected)."""
    for tower in (model.visual.transformer, model.transformer):
        for block in tower.resblocks:
            block.attn = BatchedSelfAttention(block.attn)


class UsedRowsEmbedding(nn.Module):
    """The rows of a token embedding that the world's captions use, as a parameter of their own.

    The world's 60 words use a few dozen of the 49,408 rows; the others never receive a gradient and, with no
    weight decay on embeddings, AdamW leaves them exactly where they were initialised. Training this small table
    instead of the full one gives the same model without the optimizer's passes over 6.3 M unused values.
    :meth:`write_back` copies the trained rows into the full embedding.
    """

    def __init__(self, embedding: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.full = [embedding]  # a list, so the full table is not registered as this module's parameter
        self.register_buffer("rows", rows)
        self.weight = nn.Parameter(embedding.weight.detach()[rows].clone())
        index = torch.full((embedding.num_embeddings,), -1, dtype=torch.long, device=rows.device)
        index[rows] = torch.arange(len(rows), device=rows.device)
        self.register_buffer("index", index)

    @classmethod
    def for_world(cls, embedding: nn.Embedding, tokenizer: open_clip.SimpleTokenizer) -> UsedRowsEmbedding:
        """The rows of the world's vocabulary, the start and end tokens, and padding (token 0)."""
        ids = {0, tokenizer.sot_token_id, tokenizer.eot_token_id}
        for word in world.vocabulary():
            ids.update(tokenizer.encode(word))
        return cls(embedding, torch.tensor(sorted(ids), device=embedding.weight.device))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        compact = self.index[tokens]
        if bool((compact < 0).any()):
            raise ValueError("a caption uses a token outside world.vocabulary(); extend the vocabulary")
        return F.embedding(compact, self.weight)

    @torch.no_grad()
    def write_back(self) -> None:
        self.full[0].weight[self.rows] = self.weight


def encode_text_used(model: open_clip.CLIP, tokens: torch.Tensor, embed: nn.Module, buckets: int = 4) -> torch.Tensor:
    """``model.encode_text(tokens)``, computed only on the positions up to each caption's end token.

    The text tower is causal and pools at the end token, so the padding after it cannot change the result.
    Captions are sorted by length and run in ``buckets`` groups, each cut to its longest caption (captions use
    about 9 of the 24 positions on average). ``embed`` looks up the tokens (``model.token_embedding`` or a
    :class:`UsedRowsEmbedding` of it).
    """
    if model.text_pool_type != "argmax":
        raise ValueError(f"text pooling {model.text_pool_type!r} is not supported, only 'argmax'")
    lengths = tokens.argmax(dim=-1) + 1  # the end token has the largest id
    order = torch.argsort(lengths)
    pooled = []
    for rows in torch.tensor_split(order, buckets):
        if len(rows) == 0:
            continue
        n = int(lengths[rows].max())
        cut = tokens[rows, :n]
        x = embed(cut) + model.positional_embedding[:n]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        pooled.append(x[torch.arange(len(rows)), cut.argmax(dim=-1)])
    return torch.cat(pooled)[torch.argsort(order)] @ model.text_projection


def multi_positive_clip_loss(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, matches: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE whose targets spread evenly over every true (caption, image) pair."""
    logits = scale * F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T  # (text, image)
    t2i = matches.float() / matches.sum(1, keepdim=True)
    i2t = matches.T.float() / matches.T.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, t2i) + F.cross_entropy(logits.T, i2t))


def configs(image_size: int, layers: int, width: int) -> tuple[dict, dict]:
    """The model and preprocessing configs of a world CLIP whose image tower takes ``image_size`` px images
    (the world is rendered at that size) with ``layers`` blocks of ``width`` channels; the defaults give
    ``MODEL_CFG`` and ``PREPROCESS_CFG``."""
    vision = MODEL_CFG["vision_cfg"]
    patch, head = vision["patch_size"], vision["head_width"]
    if image_size < patch or image_size % patch or width < head or width % head or layers < 1:
        raise ValueError(
            f"--image-size must be a multiple of {vision['patch_size']}, --vision-width of {vision['head_width']} "
            f"and --vision-layers at least 1; got {image_size}, {width}, {layers}"
        )
    model_cfg = {**MODEL_CFG, "vision_cfg": {**vision, "image_size": image_size, "layers": layers, "width": width}}
    return model_cfg, {**PREPROCESS_CFG, "size": image_size}


def l2_adversarial(
    pixels: torch.Tensor, loss_of, radius: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Images within L2 distance ``radius`` of ``pixels`` (n, 3, H, W) in [0, 1], one normalised gradient step
    up ``loss_of(images)`` from a random start inside the ball (fast adversarial training, Wong et al. 2020).

    Training on them makes the image tower robust, and a robust model's input gradients are perceptually aligned
    (Santurkar et al. 2019): images optimised to excite its neurons look like the data they respond to.
    """
    n = len(pixels)

    def per_image(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)

    start = torch.randn(pixels.shape, generator=generator, device=pixels.device)
    start = start / per_image(start) * (0.5 * radius)
    delta = start.requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of((pixels + delta).clamp(0, 1)), delta)
    delta = delta.detach() + radius * grad / per_image(grad)
    delta = delta * (radius / per_image(delta)).clamp(max=1.0)
    return (pixels + delta).clamp(0, 1).detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("clipviz/world/models/world-clip"))
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast (its backward is ~10x slower than fp32 on some CPUs; measure before using)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (the stream of batches is the same)")
    ap.add_argument("--workers", type=int, default=1, help="processes rendering the world (about 3,000 images/s each)")
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument(
        "--shape-groups",
        type=float,
        default=0.0,
        help="share of each batch built as groups of scenes that differ in shape only (hard negatives; "
        "0.5 raised zero-shot shape from 57%% to 72%% but left no clear colour neuron, 0.2 cost position: "
        "docs/validation.md)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init-from",
        type=Path,
        help="fine-tune: start from this directory's open_clip_model.safetensors "
        "(use a --seed whose stream differs from the one the weights were trained on)",
    )
    ap.add_argument(
        "--plant",
        type=Path,
        help="a plan (JSON with a 'planted' list of block, neuron, concept; "
        "scripts/plant_world_clip.py writes one): train those MLP neurons to detect their concepts",
    )
    ap.add_argument("--plant-weight", type=float, default=1.0)
    ap.add_argument(
        "--prompt-weight",
        type=float,
        default=0.0,
        help="weight of an auxiliary loss: the zero-shot "
        "task itself (single-object images against the world's single-factor prompts, per family)",
    )
    ap.add_argument(
        "--adversarial",
        type=float,
        default=0.0,
        help="train the image tower on images moved up to this L2 distance (pixels in [0, 1]) against its "
        "losses, one step per batch (l2_adversarial): robust towers have readable feature visualizations; 0: off",
    )
    vision = MODEL_CFG["vision_cfg"]
    ap.add_argument(
        "--image-size",
        type=int,
        default=vision["image_size"],
        help="side of the images the world is rendered at and the image tower takes (patches of "
        f"{vision['patch_size']} px; the shipped model: {vision['image_size']})",
    )
    ap.add_argument("--vision-layers", type=int, default=vision["layers"], help="blocks of the image tower")
    ap.add_argument("--vision-width", type=int, default=vision["width"], help="channels of the image tower")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args()
    if args.adversarial < 0:
        ap.error(f"--adversarial is a distance: 0 (off) or more, got {args.adversarial}")
    try:
        model_cfg, preprocess_cfg = configs(args.image_size, args.vision_layers, args.vision_width)
    except ValueError as error:
        ap.error(str(error))

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = open_clip.CLIP(**model_cfg).to(device)
    if args.init_from is not None:
        from safetensors.torch import load_file

        saved = json.loads((args.init_from / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
        if saved != model_cfg["vision_cfg"]:
            ap.error(
                f"--init-from {args.init_from} has an image tower of {saved['layers']} blocks of {saved['width']} "
                f"at {saved['image_size']} px; pass the same --vision-layers, --vision-width and --image-size"
            )
        state = load_file(str(args.init_from / "open_clip_model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
    planter = None
    if args.plant is not None:
        from clipviz.world.planting import PlantLoss, load_plan

        planter = PlantLoss(load_plan(args.plant)).to(device)
        planter.attach(model)
    # Exact speed-ups (same model, same gradients up to rounding; docs/benchmarks.md): batched attention, the
    # text tower run on the positions captions use, and only the used rows of the token embedding trained.
    use_batched_attention(model)
    context_length = MODEL_CFG["text_cfg"]["context_length"]
    embed = UsedRowsEmbedding.for_world(model.token_embedding, open_clip.SimpleTokenizer(context_length=context_length))
    model.token_embedding.requires_grad_(False)
    mean = torch.tensor(preprocess_cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"], device=device).view(1, 3, 1, 1)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trained if not (p.ndim >= 2 and "embedding" not in n)] + [embed.weight]
    params = decay + no_decay
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if planter is not None:  # the plant loss's own scale and threshold
        groups.append({"params": list(planter.parameters()), "weight_decay": 0.0, "lr_scale": planter.lr_scale})
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    stream = WorldStream(args.batch, args.steps, args.seed, args.shape_groups, context_length, args.image_size)
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
        pin_memory=device.type == "cuda",
    )
    curve, t0, window, aux_window = [], time.time(), [], []
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)

    def attack(pixels: torch.Tensor, txt: torch.Tensor, matches: torch.Tensor, factors: dict) -> torch.Tensor:
        """The batch moved against the contrastive loss (and the zero-shot task's, when trained), text fixed."""
        scale = model.logit_scale.exp().detach()
        if args.prompt_weight:
            from clipviz.world.planting import prompt_targets

            prompts, rows, target = prompt_targets(factors)
            with torch.no_grad():
                prompt_emb = encode_text_used(model, tokenizer(prompts).to(device), embed).float()

        def loss_of(adv: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                img = model.encode_image((adv - mean) / std).float()
            loss = multi_positive_clip_loss(img, txt, scale, matches)
            if args.prompt_weight:
                from clipviz.world.planting import prompt_loss

                loss = loss + args.prompt_weight * prompt_loss(
                    img, prompt_emb, scale, rows.to(device), target.to(device)
                )
            return loss

        return l2_adversarial(pixels, loss_of, args.adversarial)

    model.train()
    for step, (images, tokens, matches, factor_rows) in enumerate(loader):
        for group in opt.param_groups:
            group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)
        images, tokens, matches = (t.to(device, non_blocking=True) for t in (images, tokens, matches))
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        factors = {fam: factor_rows[:, k].numpy() for k, fam in enumerate(world.FACTORS)}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            txt = encode_text_used(model, tokens, embed)
        if args.adversarial:
            pixels = attack(pixels, txt.detach().float(), matches, factors)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            img = model.encode_image((pixels - mean) / std)
        loss = multi_positive_clip_loss(img.float(), txt.float(), model.logit_scale.exp(), matches)
        aux = {}
        if planter is not None:
            from clipviz.world.planting import concept_labels

            aux["plant"] = planter(concept_labels(planter.concepts, factors).to(device))
            loss = loss + args.plant_weight * aux["plant"]
        if args.prompt_weight:
            from clipviz.world.planting import prompt_loss, prompt_targets

            prompts, rows, target = prompt_targets(factors)
            prompt_emb = encode_text_used(model, tokenizer(prompts).to(device), embed)
            aux["prompt"] = prompt_loss(
                img.float(), prompt_emb.float(), model.logit_scale.exp(), rows.to(device), target.to(device)
            )
            loss = loss + args.prompt_weight * aux["prompt"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        window.append(loss.detach())
        aux_window.append({k: v.detach() for k, v in aux.items()})
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            entry = {
                "step": step + 1,
                "loss": float(torch.stack(window).mean()),
                "lr": lr_at(step),
                "logit_scale": float(model.logit_scale.detach().exp()),
                "elapsed_s": round(time.time() - t0, 1),
            }
            for key in aux:
                entry[f"{key}_loss"] = float(torch.stack([a[key] for a in aux_window]).mean())
            curve.append(entry)
            window, aux_window = [], []
            print(json.dumps(entry), flush=True)

    embed.write_back()
    if planter is not None:
        planter.detach_hooks()
    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = args.out / "open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(args.out / "open_clip_model.safetensors")
    (args.out / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2) + "\n"
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    log = {
        "settings": settings,
        "model_cfg": model_cfg,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "open_clip": open_clip.__version__,
        "train_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time(), 1),
        "curve": curve,
    }
    (args.out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"saved to {args.out} in {log['train_seconds']} s")


if __name__ == "__main__":
    main()
