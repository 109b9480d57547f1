"""``clipviz concepts``: words that name neurons (direct lens, CLIP-Dissect, visual)."""

from __future__ import annotations

import argparse

from clipviz.apps.options import add_model_parser, load_model
from clipviz.apps.validate import check_output_dir, expand, int_type, parse_spans
from clipviz.errors import MAX_SAMPLES, MAX_STEPS, ClipvizError


def add_parser(sub) -> None:
    con = add_model_parser(sub, "concepts", "name neurons of CLIP-like models with words")
    con.add_argument("--hook", required=True, help="an MLP hook, e.g. blocks.10.mlp.hook_post")
    con.add_argument("--neurons", help="neuron indices (all by default)")
    con.add_argument(
        "--method",
        default="direct",
        choices=["direct", "dissect", "visual"],
        help="direct: weights only; dissect: SoftWPMI on --probe images; visual: embed visualizations, scored "
        "against those of 16 fixed neurons of the layer",
    )
    con.add_argument("--probe", help="probe images for dissect: a folder, world:<n> or an HF dataset")
    con.add_argument(
        "--activations",
        metavar="EXAMPLES_DIR",
        help="for dissect: reuse the probe matrix stored by clipviz examples --save-activations",
    )
    con.add_argument("--labeller", help="CLIP model that labels images (default: the model itself)")
    con.add_argument("--recipe", help="recipe for --method visual (default: as clipviz visualize chooses)")
    con.add_argument(
        "--steps", type=int_type("--steps", 1, MAX_STEPS), help="visualization steps for --method visual (default 128)"
    )
    con.add_argument(
        "--samples",
        type=int_type("--samples", 1, MAX_SAMPLES),
        help="visualizations per neuron (--method visual, default 2)",
    )
    con.add_argument("--vocab", default="world", help="world, imagenet, cifar10, cifar100, words-<N>[k] or a file")
    con.add_argument("--templates", help="'ensemble' or '|'-separated prompt templates with one {} each")
    con.add_argument("--top-k", type=int_type("--top-k", 1), default=5, help="words per neuron")
    con.add_argument("--out", required=True)
    con.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipviz.analysis.concepts import (
        direct_lens,
        known_words_only,
        load_vocabulary,
        merge_same_text,
        output_directions,
        parse_templates,
        reference_neurons,
        text_embeddings,
        visual_words,
        words_table,
        write_table,
    )

    if args.method == "dissect" and not (args.probe or args.activations):
        raise ClipvizError(
            "--method dissect needs --probe DATASET (a folder, world:<n> or a Hugging Face dataset) "
            "or --activations EXAMPLES_DIR (from clipviz examples --save-activations)"
        )
    if args.activations and args.method != "dissect":
        raise ClipvizError("--activations is for --method dissect")
    if args.probe and args.method != "dissect":
        raise ClipvizError(f"--probe is for --method dissect; --method {args.method} reads no probe images")
    if args.labeller and args.method == "direct":
        raise ClipvizError(
            "--labeller is for --method dissect and visual; the direct lens reads the model's own weights"
        )
    unused = [f"--{k}" for k in ("recipe", "steps", "samples") if getattr(args, k) is not None]
    if unused and args.method != "visual":
        verb = "is" if len(unused) == 1 else "are"
        raise ClipvizError(f"{', '.join(unused)} {verb} for --method visual; --method {args.method} renders no images")
    args.steps, args.samples = args.steps or 128, args.samples or 2
    if args.recipe is not None:  # an unknown recipe is refused before the model loads
        from clipviz.visualization.recipes import get_recipe

        get_recipe(args.recipe)
    spans = parse_spans(args.neurons, "neuron") if args.neurons is not None else None
    check_output_dir(args.out)
    vocab = load_vocabulary(args.vocab, parse_templates(args.templates))
    if args.top_k > len(vocab.concepts):
        raise ClipvizError(
            f"--top-k {args.top_k} is larger than the vocabulary '{vocab.name}' ({len(vocab.concepts)} concepts): "
            f"use at most {len(vocab.concepts)}"
        )
    if args.probe and not args.activations:  # a probe set too small to rank words, refused before the model loads
        from clipviz.analysis.dissect import open_probe

        probe = open_probe(args.probe)
    model = load_model(args)
    args.hook = model.hook_point(args.hook).name  # one name per activation: blocks.00 is blocks.0
    stored = None
    if args.activations:
        from clipviz.analysis.dissect import stored_activations

        wanted = [i for s in spans for i in s] if spans else None
        stored = stored_activations(Path(args.activations), args.hook, model=model)  # all: the layer's prior
        stored.require(wanted or [], f"{args.activations}/{args.hook}")  # read once: it can be the whole layer
        if args.probe and args.probe != stored.source:
            raise ClipvizError(
                f"--probe {args.probe} differs from the probe set of the stored activations "
                f"({stored.source}); leave --probe out to use theirs"
            )
    labeller = model if not args.labeller else load_model(argparse.Namespace(**{**vars(args), "model": args.labeller}))
    if args.method != "direct" and not labeller.is_clip:  # before any image is rendered or read
        raise ClipvizError(
            f"the labeller '{labeller.spec}' has no text tower: --method {args.method} reads images with a CLIP-like "
            "model's words (--labeller)"
        )
    reader = model if args.method == "direct" else labeller
    vocab = merge_same_text(reader, known_words_only(reader, vocab))
    if args.top_k > len(vocab.concepts):
        raise ClipvizError(
            f"--top-k {args.top_k} is larger than the {len(vocab.concepts)} concepts of vocabulary '{vocab.name}' "
            f"that the model's tokenizer tells apart: use at most {len(vocab.concepts)}"
        )
    if stored is not None:
        neurons = list(dict.fromkeys(wanted)) if wanted else stored.neurons
    elif spans:
        neurons = expand(spans, model.hook_width(args.hook), "neuron", f" for hook '{args.hook}'")
        neurons = model.check_neurons(args.hook, neurons)  # each neuron once: 1,1 would be named twice
    else:
        neurons = list(range(model.hook_width(args.hook)))
    if args.method == "direct":
        output_directions(model, args.hook, neurons)  # a hook the lens cannot read is refused before any work
    print(f"{args.method}: {len(neurons)} neurons of {args.hook}, vocabulary '{vocab.name}' ({len(vocab.concepts)})")
    if args.method == "direct":
        text = text_embeddings(model, vocab, progress=True)
        table = direct_lens(model, args.hook, neurons, vocab, top_k=args.top_k, embeddings=text)
    elif args.method == "dissect":
        from clipviz.analysis.dissect import (
            CEILING_TIE,
            image_text_similarities,
            labeller_a,
            layer_softwpmi,
            probe_activations,
        )
        from clipviz.data.sources import open_source

        source = open_source(stored.location, **stored.options) if stored is not None else probe
        text = text_embeddings(labeller, vocab, progress=True)
        width = model.hook_width(args.hook)
        if stored is not None:
            acts, kept, columns = stored.activations, stored.indices, list(stored.neurons)
        else:  # every neuron of the layer: the prior is the layer's, whichever neurons are named
            acts, kept = probe_activations(model, args.hook, source, None, progress=True)
            columns = list(range(width))
        sims = image_text_similarities(labeller, source, kept, text, progress=True)
        layer_top = stored.layer_top if stored is not None else None
        scores = layer_softwpmi(acts, columns, list(neurons), width, sims, a=labeller_a(labeller), layer_top=layer_top)
        table = words_table(scores, vocab.concepts, args.top_k, neurons, tolerance=CEILING_TIE)
    elif args.method == "visual":
        import torch

        from clipviz.images import pil_to_tensor
        from clipviz.visualization.visualize import visualize

        # the population: a fixed set of the layer's neurons, rendered alike, so that a neuron's words do not depend
        # on which others are named with it
        population = reference_neurons(model.hook_width(args.hook))
        rendered = list(dict.fromkeys([*neurons, *population]))
        vis = visualize(model, args.hook, rendered, recipe=args.recipe, steps=args.steps, samples=args.samples)
        images = torch.stack([pil_to_tensor(v.image) for v in vis])
        images = images.reshape(args.samples, len(rendered), *images.shape[1:]).transpose(0, 1)
        at = {n: i for i, n in enumerate(rendered)}
        read = visual_words(
            labeller,
            images[[at[n] for n in neurons]],
            vocab,
            args.top_k,
            embeddings=text_embeddings(labeller, vocab, progress=True),
            population=images[[at[n] for n in population]],
        )
        table = [{"neuron": n, **row} for n, row in zip(neurons, read, strict=True)]
    else:
        raise ClipvizError(f"unknown method '{args.method}'; accepted: direct, dissect, visual")
    paths = write_table(
        Path(args.out), args.hook, table, method=args.method, vocabulary=vocab, identity=model.identity()
    )
    for row in table[:10]:
        words = ", ".join(f"{w} ({s:.2f})" for w, s in zip(row["words"], row["scores"], strict=True))
        tie = f"  [{row['tied']} concepts share the top score]" if row.get("tied", 1) > 1 else ""
        print(f"neuron {row['neuron']:>5}: {words}{tie}")
    if len(table) > 10:
        print(f"... {len(table) - 10} more")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
