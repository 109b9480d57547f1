"""The Gradio app of clipviz's Hugging Face Space: pick a model, a hook and neurons (or type a phrase) and get the
visualization, the words and the top examples; or browse a precomputed atlas without computing anything.

>>> from clipviz.apps.space import Limits, SpaceBackend
>>> backend = SpaceBackend(models=("world-clip",), limits=Limits(max_steps=8))
>>> images, words, examples = backend.neurons("world-clip", "blocks.2.mlp.hook_post", "3", steps=4, size=64)
>>> images[0].size, words[0]["neuron"]
((64, 64), 3)

Visitors choose models from a fixed list and every number they send is checked against ``Limits`` (steps, image
size, neurons per request, phrase length, queue size and concurrency), so no request can exhaust the machine;
nothing they type is used as a path or a model id. ``build_app`` wraps the backend in a ``gr.Blocks`` app whose API
endpoints are ``/visualize``, ``/phrase`` and ``/atlas``; ``spaces/app.py`` launches it. On a ZeroGPU Space the
rendering runs under ``spaces.GPU``; elsewhere it runs on the GPU if there is one, else on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from clipviz.errors import ClipvizError
from clipviz.images import overlay, pil_to_tensor
from clipviz.results import read_atlas


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for."""

    max_steps: int = 256
    min_size: int = 32
    max_size: int = 256
    max_neurons: int = 4
    max_phrase_chars: int = 120
    top_k: int = 6
    example_images: int = 1000  # held-out world images searched for examples
    concurrency: int = 1  # requests computed at once
    max_queue: int = 16  # requests waiting; more are turned away


def _gpu(fn):
    """``spaces.GPU`` where the ``spaces`` package is installed (ZeroGPU Spaces), the function itself elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    gpu = getattr(spaces, "GPU", None)  # a folder named spaces/ on the path imports as an empty namespace package
    return gpu(fn) if gpu is not None else fn


class SpaceBackend:
    """The computations behind the app, with every input checked; models are loaded once, on first use."""

    def __init__(
        self,
        models: tuple[str, ...] = ("world-clip",),
        limits: Limits | None = None,
        atlas: str | Path | None = None,
        recipe: str = "default",
    ):
        if not models:
            raise ClipvizError("the Space needs at least one model")
        self.models, self.limits, self.recipe = tuple(models), limits or Limits(), recipe
        self._loaded: dict[str, object] = {}
        self.atlas_dir = Path(atlas) if atlas is not None else None
        self.atlas = read_atlas(self.atlas_dir) if self.atlas_dir else None

    # ------------------------------------------------------------------------------------------------ checks
    def model(self, name: str):
        if name not in self.models:
            raise ClipvizError(f"unknown model '{name}'; this Space offers: {', '.join(self.models)}")
        if name not in self._loaded:
            from clipviz.model.loading import load

            self._loaded[name] = load(name, device="cuda" if torch.cuda.is_available() else "cpu")
        return self._loaded[name]

    def hooks(self, name: str) -> list[str]:
        model = self.model(name)
        return [f"blocks.{i}.mlp.hook_post" for i in range(model.n_blocks)]

    def _check(self, steps: int, size: int) -> tuple[int, int]:
        lim = self.limits
        steps, size = int(steps), int(size)
        if not 1 <= steps <= lim.max_steps:
            raise ClipvizError(f"steps must be between 1 and {lim.max_steps}, got {steps}")
        if not lim.min_size <= size <= lim.max_size:
            raise ClipvizError(f"image size must be between {lim.min_size} and {lim.max_size} pixels, got {size}")
        return steps, size

    def _neurons(self, model, hook: str, text: str) -> list[int]:
        from clipviz.apps.options import parse_indices

        if hook not in self.hooks(model.spec):
            raise ClipvizError(f"unknown hook '{hook}'; choose one of the MLP hooks of {model.spec}")
        if len(text) > 64:
            raise ClipvizError("give at most a few neuron indices, e.g. 3 or 0,5,9")
        neurons = list(dict.fromkeys(parse_indices(text)))
        if not neurons:
            raise ClipvizError("give at least one neuron index, e.g. 3 or 0,5,9")
        if len(neurons) > self.limits.max_neurons:
            raise ClipvizError(f"at most {self.limits.max_neurons} neurons per request, got {len(neurons)}")
        width = model.blocks[model.hook_point(hook).block].d_mlp
        bad = [n for n in neurons if n >= width]
        if bad:
            raise ClipvizError(
                f"neuron index {bad[0]} out of range for hook '{hook}': it has {width} neurons (0..{width - 1})"
            )
        return neurons

    # ---------------------------------------------------------------------------------------------- requests
    def neurons(self, model_name: str, hook: str, neurons: str, steps: int, size: int):
        """Visualizations (one per neuron), words (direct lens and the model's reading of the image) and top
        examples (held-out world images with heat maps) for up to ``max_neurons`` neurons of an MLP hook."""
        from clipviz.analysis.concepts import direct_lens, load_vocabulary, visual_words
        from clipviz.analysis.examples import mine_examples
        from clipviz.data.sources import open_source
        from clipviz.visualization.visualize import visualize

        steps, size = self._check(steps, size)
        model = self.model(model_name)
        chosen = self._neurons(model, hook, neurons)
        vis = _gpu(visualize)(model, hook, chosen, recipe=self.recipe, steps=steps, size=size, progress=False)
        images = [v.image for v in vis]
        words = []
        if model.is_clip:
            vocab = load_vocabulary("world")
            lens = direct_lens(model, hook, chosen, vocab, top_k=5)
            seen = visual_words(model, _batch(images)[:, None], vocab, top_k=5)
            words = [
                {
                    "neuron": n,
                    "direct lens": list(zip(a["words"], a["scores"], strict=True)),
                    "the model reads the image as": list(zip(b["words"], b["scores"], strict=True)),
                }
                for n, a, b in zip(chosen, lens, seen, strict=True)
            ]
        source = open_source(f"world:{self.limits.example_images}")
        ex = mine_examples(model, hook, source, neurons=chosen, top_k=self.limits.top_k, progress=False)
        wanted = set(ex.indices.flatten().tolist())
        pictures = {i: img for i, img, _ in source if i in wanted}
        examples = [
            (
                overlay(pictures[int(ex.indices[j, r])], ex.maps[j, r]),
                f"neuron {n}: {ex.captions.get(int(ex.indices[j, r]), '')} ({float(ex.scores[j, r]):.2f})",
            )
            for j, n in enumerate(chosen)
            for r in range(ex.indices.shape[1])
        ]
        return images, words, examples

    def phrase(self, model_name: str, text: str, steps: int, size: int):
        """The image that the model finds most like ``text`` (a visualization of the phrase's text embedding), and
        the held-out world images closest to the phrase."""
        from clipviz.data.sources import open_source
        from clipviz.visualization.visualize import visualize

        steps, size = self._check(steps, size)
        text = " ".join(str(text).split())
        if not text:
            raise ClipvizError("type a phrase, e.g. 'a red star'")
        if len(text) > self.limits.max_phrase_chars:
            raise ClipvizError(f"phrases are limited to {self.limits.max_phrase_chars} characters, got {len(text)}")
        model = self.model(model_name)
        if not model.is_clip:
            raise ClipvizError(f"phrases need a CLIP-like model; '{model_name}' has no text tower")
        vis = _gpu(visualize)(model, texts=[text], recipe=self.recipe, steps=steps, size=size, progress=False)
        source = open_source(f"world:{self.limits.example_images}")
        pictures, captions = [], []
        for _, img, cap in source:
            pictures.append(img)
            captions.append(cap)
        with torch.no_grad():
            image_emb = torch.cat(
                [
                    model.encode_image(_batch(pictures[i : i + 256]).to(model.device)).float()
                    for i in range(0, len(pictures), 256)
                ]
            )
            text_emb = model.encode_text([text]).float()
        sims = torch.nn.functional.normalize(image_emb, dim=-1) @ torch.nn.functional.normalize(text_emb, dim=-1).T
        top = sims[:, 0].topk(self.limits.top_k)
        examples = [
            (pictures[int(i)], f"{captions[int(i)]} ({float(s):.2f})")
            for s, i in zip(top.values, top.indices, strict=True)
        ]
        return vis[0].image, examples

    def atlas_hooks(self) -> list[str]:
        return list(self.atlas["hooks"]) if self.atlas else []

    def atlas_neuron(self, hook: str, neuron: int):
        """A neuron of the precomputed atlas: its visualizations, words and examples, read from the atlas folder."""
        if self.atlas is None:
            raise ClipvizError("this Space has no precomputed atlas")
        if hook not in self.atlas["hooks"]:
            raise ClipvizError(f"hook '{hook}' is not in the atlas; it has: {', '.join(self.atlas_hooks())}")
        entries = {e["neuron"]: e for e in self.atlas["hooks"][hook]["neurons"]}
        if int(neuron) not in entries:
            shown = sorted(entries)
            raise ClipvizError(
                f"neuron {neuron} of '{hook}' is not in the atlas; it has {len(shown)} neurons "
                f"({shown[0]}..{shown[-1]})"
            )
        e = entries[int(neuron)]
        # Paths come from the atlas file, never from the request.
        images = [Image.open(self.atlas_dir / p).convert("RGB") for p in e["visualizations"]]
        examples = [
            (Image.open(self.atlas_dir / x["thumb"]).convert("RGB"), x["caption"] or f"image {x['index']}")
            for x in e["examples"]
            if x["thumb"]
        ]
        return images, e["words"], examples


def _batch(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([pil_to_tensor(img) for img in images])


def _words_markdown(words: list[dict]) -> str:
    lines = []
    for w in words:
        lines.append(f"**neuron {w['neuron']}**")
        for method, ranked in w.items():
            if method != "neuron":
                lines.append(f"- {method}: " + ", ".join(f"{a} ({s:.2f})" for a, s in ranked))
    return "\n".join(lines) or "This model has no text tower, so it has no words."


def build_app(models: tuple[str, ...] = ("world-clip",), atlas: str | Path | None = None, limits: Limits | None = None):
    """The Gradio app (``gr.Blocks``, queue configured from ``limits``)."""
    import gradio as gr

    backend = SpaceBackend(models, limits, atlas)
    lim = backend.limits

    def guarded(fn):
        def run(*args):
            try:
                return fn(*args)
            except ClipvizError as error:
                raise gr.Error(str(error)) from None

        return run

    def do_neurons(model_name, hook, neurons, steps, size):
        images, words, examples = backend.neurons(model_name, hook, neurons, steps, size)
        return images, _words_markdown(words), examples

    def do_atlas(hook, neuron):
        images, words, examples = backend.atlas_neuron(hook, int(neuron))
        text = "\n".join(f"- {m}: " + ", ".join(f"{w} ({s:.2f})" for w, s in ranked) for m, ranked in words.items())
        return images, text or "No words in the atlas for this neuron.", examples

    first = models[0]
    with gr.Blocks(title="clipviz") as app:
        gr.Markdown(
            "# clipviz\nWhat do the neurons of a vision transformer respond to? Pick a hook and neurons, "
            "or type a phrase. The default model is clipviz's small CLIP trained on a synthetic world of "
            f"coloured shapes. Limits: {lim.max_steps} steps, {lim.max_size} px, {lim.max_neurons} neurons "
            "per request."
        )
        with gr.Tab("Neurons"):
            with gr.Row():
                model_in = gr.Dropdown(list(models), value=first, label="model")
                hook_in = gr.Dropdown(backend.hooks(first), value=backend.hooks(first)[-1], label="hook")
                neurons_in = gr.Textbox("0", label=f"neurons (up to {lim.max_neurons}, e.g. 0,5,9)")
            with gr.Row():
                steps_in = gr.Slider(1, lim.max_steps, value=min(128, lim.max_steps), step=1, label="steps")
                size_in = gr.Slider(
                    lim.min_size,
                    lim.max_size,
                    value=max(lim.min_size, min(128, lim.max_size)),
                    step=1,
                    label="image size",
                )
            go = gr.Button("Visualize", variant="primary")
            vis_out = gr.Gallery(label="visualizations", columns=4)
            words_out = gr.Markdown()
            ex_out = gr.Gallery(label="top examples (red: where the neuron fires)", columns=6)
            model_in.change(
                lambda m: gr.Dropdown(choices=backend.hooks(m), value=backend.hooks(m)[-1]), model_in, hook_in
            )
            go.click(
                guarded(do_neurons),
                [model_in, hook_in, neurons_in, steps_in, size_in],
                [vis_out, words_out, ex_out],
                api_name="visualize",
            )
        with gr.Tab("Phrase"):
            with gr.Row():
                pmodel_in = gr.Dropdown(list(models), value=first, label="model")
                phrase_in = gr.Textbox("a red star", label="phrase", max_length=lim.max_phrase_chars)
            with gr.Row():
                psteps_in = gr.Slider(1, lim.max_steps, value=min(128, lim.max_steps), step=1, label="steps")
                psize_in = gr.Slider(
                    lim.min_size,
                    lim.max_size,
                    value=max(lim.min_size, min(128, lim.max_size)),
                    step=1,
                    label="image size",
                )
            pgo = gr.Button("Visualize the phrase", variant="primary")
            pvis_out = gr.Image(label="visualization", type="pil")
            pex_out = gr.Gallery(label="closest world images", columns=6)
            pgo.click(
                guarded(backend.phrase),
                [pmodel_in, phrase_in, psteps_in, psize_in],
                [pvis_out, pex_out],
                api_name="phrase",
            )
        if backend.atlas is not None:
            with gr.Tab("Atlas"):
                hooks = backend.atlas_hooks()
                with gr.Row():
                    ahook_in = gr.Dropdown(hooks, value=hooks[0] if hooks else None, label="hook")
                    aneuron_in = gr.Number(0, precision=0, label="neuron")
                ago = gr.Button("Show", variant="primary")
                avis_out = gr.Gallery(label="visualizations", columns=4)
                awords_out = gr.Markdown()
                aex_out = gr.Gallery(label="top examples", columns=6)
                ago.click(guarded(do_atlas), [ahook_in, aneuron_in], [avis_out, awords_out, aex_out], api_name="atlas")
    app.queue(default_concurrency_limit=lim.concurrency, max_size=lim.max_queue)
    return app
