"""The Gradio app of clipviz's Hugging Face Space: pick a model, a hook and neurons (or type a phrase) and get the
visualization, the words and the top examples; or browse a precomputed atlas without computing anything.

>>> from clipviz.apps.space import Limits, SpaceBackend
>>> backend = SpaceBackend(models=("world-clip",), limits=Limits(max_steps=8))
>>> images, words, examples = backend.neurons("world-clip", "blocks.2.mlp.hook_post", "3", steps=4, size=64)
>>> image, caption = images[0]
>>> image.size, caption, words[0]["neuron"]
((64, 64), 'neuron 3: data-guided (vital)', 3)

Visitors choose models from a fixed list and every number they send is checked against ``Limits`` (steps, image
size, neurons per request, phrase length, queue size and concurrency), so no request can exhaust the machine;
nothing they type is used as a path or a model id. ``build_app`` wraps the backend in a ``gr.Blocks`` app whose API
endpoints are ``/visualize``, ``/phrase`` and ``/atlas``; ``spaces/app.py`` launches it. On a ZeroGPU Space the
rendering runs under ``spaces.GPU``; elsewhere it runs on the GPU if there is one, else on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from clipviz.errors import ClipvizError, check_int
from clipviz.images import overlay, pil_to_tensor, tensor_to_pil
from clipviz.results import read_atlas

if TYPE_CHECKING:
    from clipviz.model.hooked import HookedVisionModel

MAX_NEURON_CHARS = 64  # the neurons textbox


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
    population: int = 8  # fixed neurons of the hook rendered beside the asked ones: the reading's reference
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


def _example_label(example: dict) -> str:
    """An atlas example's caption, else its file name (a folder's images), else its index."""
    return example.get("caption") or example.get("name") or f"image {example['index']}"


def live_models(atlas: str | Path | None = None, chosen: str | None = None) -> tuple[str, ...]:
    """The models a Space's live tab offers: ``chosen`` (``CLIPVIZ_SPACE_MODELS``, comma-separated) where given;
    else the atlas's own model first, where the Space can load it (a bundled model or a hub spec; a path on the
    author's machine is not there), then the bundled world-clip, which needs no download; else world-clip alone.

    >>> live_models(None, "world-clip, hf:openai/clip-vit-base-patch16")
    ('world-clip', 'hf:openai/clip-vit-base-patch16')
    """
    if chosen is not None and chosen.strip():
        return tuple(dict.fromkeys(m.strip() for m in chosen.split(",") if m.strip()))
    own = read_atlas(Path(atlas)).get("model") if atlas is not None else None
    return tuple(dict.fromkeys(m for m in (own, "world-clip") if m and _loadable_here(m)))


def _loadable_here(spec: str) -> bool:
    from clipviz.model.loading import bundled_models, resolve_spec

    if spec in bundled_models():
        return True
    try:
        _, reference = resolve_spec(spec)
    except ClipvizError:
        return False
    reference = reference.removeprefix("hf-hub:")
    if reference.startswith(("local-dir:", "/", ".", "~")) or "\\" in reference or reference.count("/") > 1:
        return False  # a path on the author's machine (``hf:/data/vit``), not a hub id
    return not Path(reference).expanduser().exists()


class SpaceBackend:
    """The computations behind the app, with every input checked; models are loaded once, on first use."""

    def __init__(
        self,
        models: tuple[str, ...] = ("world-clip",),
        limits: Limits | None = None,
        atlas: str | Path | None = None,
        recipe: str | None = None,
    ):
        if not models:
            raise ClipvizError("the Space needs at least one model")
        self.models, self.limits, self.recipe = tuple(models), limits or Limits(), recipe
        self._loaded: dict[str, object] = {}
        self._world_images: list | None = None
        self._world_source = None
        self._embeddings: dict[str, torch.Tensor] = {}
        self.atlas_dir = Path(atlas) if atlas is not None else None
        self.atlas = read_atlas(self.atlas_dir) if self.atlas_dir else None

    # ------------------------------------------------------------------------------------------------ checks
    def model(self, name: str):
        if not isinstance(name, str) or name not in self.models:
            raise ClipvizError(f"unknown model '{str(name)[:60]}'; this Space offers: {', '.join(self.models)}")
        if name not in self._loaded:
            from clipviz.model.loading import load

            self._loaded[name] = load(name, device="cuda" if torch.cuda.is_available() else "cpu")
        return self._loaded[name]

    def hooks(self, name: str) -> list[str]:
        model = self.model(name)
        return [f"blocks.{i}.mlp.hook_post" for i in range(model.n_blocks)]

    def _check(self, steps, size) -> tuple[int, int]:
        lim = self.limits
        steps = check_int(steps, "steps", 1, lim.max_steps)
        size = check_int(size, "image size", lim.min_size, lim.max_size)
        return steps, size

    def _neurons(self, model: HookedVisionModel, hook: str, text: str) -> list[int]:
        from clipviz.apps.validate import count, expand, parse_spans

        if not isinstance(hook, str) or hook not in self.hooks(model.spec):
            raise ClipvizError(f"unknown hook '{str(hook)[:60]}'; choose one of the MLP hooks of {model.spec}")
        if not isinstance(text, str):
            raise ClipvizError(f"give neuron indices as text, e.g. 3 or 0,5,9; got {str(text)[:20]}")
        if len(text) > MAX_NEURON_CHARS:
            raise ClipvizError(f"give at most a few neuron indices ({MAX_NEURON_CHARS} characters), e.g. 3 or 0,5,9")
        spans = parse_spans(text, "index")
        if count(spans) > self.limits.max_neurons * MAX_NEURON_CHARS:  # counted before anything is expanded
            raise ClipvizError(f"at most {self.limits.max_neurons} neurons per request, got {count(spans)}")
        width = model.blocks[model.hook_point(hook).block].d_mlp
        neurons = list(dict.fromkeys(expand(spans, width, "neuron", f" for hook '{hook}'")))
        if len(neurons) > self.limits.max_neurons:
            raise ClipvizError(f"at most {self.limits.max_neurons} neurons per request, got {len(neurons)}")
        return neurons

    def _world(self):
        """The held-out world images the requests search, made once per process (not per request)."""
        if self._world_images is None:
            from clipviz.data.sources import open_source

            source = open_source(f"world:{self.limits.example_images}")
            self._world_images = [(img, cap) for _, img, cap in source]
            self._world_source = source
        return self._world_images, self._world_source

    def _world_embeddings(self, model: HookedVisionModel) -> torch.Tensor:
        """Image embeddings of the world images, per model, computed once."""
        if model.spec not in self._embeddings:
            pictures = [img for img, _ in self._world()[0]]
            with torch.no_grad():
                self._embeddings[model.spec] = torch.cat(
                    [
                        model.encode_image(_seen(model, pictures[i : i + 256]).to(model.device)).float().cpu()
                        for i in range(0, len(pictures), 256)
                    ]
                )
        return self._embeddings[model.spec]

    # ---------------------------------------------------------------------------------------------- requests
    def neurons(self, model_name: str, hook: str, neurons: str, steps: int, size: int):
        """Visualizations (one per neuron, captioned with how it was made), words (direct lens and the model's
        reading of the image) and top examples (held-out world images with heat maps) for up to ``max_neurons``
        neurons of an MLP hook.

        With no recipe given to the backend, each model gets what ``visualize`` chooses for it: the data-guided
        ``vital`` where the model names world images as its guide (world-clip), guided by the neuron's top world images
        from the same ranking as the examples shown (its top ``guide_k``, of which the first ``top_k`` are shown),
        else the unguided default."""
        from clipviz.analysis.concepts import direct_lens, load_vocabulary, reference_neurons, visual_words
        from clipviz.analysis.examples import mine_examples
        from clipviz.results import visualization_kind
        from clipviz.visualization.guidance import default_recipe
        from clipviz.visualization.recipes import get_recipe
        from clipviz.visualization.visualize import visualize

        steps, size = self._check(steps, size)
        model = self.model(model_name)
        chosen = self._neurons(model, hook, neurons)
        recipe = get_recipe(self.recipe or default_recipe(model))
        guided = recipe.guided
        world, source = self._world()
        # one pass over the world images finds the examples shown and, for a guided recipe, the references
        k = max(self.limits.top_k, recipe.guide_k) if guided else self.limits.top_k
        # the visual reading's reference: a fixed set of the hook's neurons, rendered alike, so that what the model
        # reads in a neuron's image does not depend on which others were asked with it
        population = reference_neurons(model.hook_width(hook), self.limits.population) if model.is_clip else []
        rendered = list(dict.fromkeys([*chosen, *population]))
        ex = mine_examples(model, hook, source, neurons=rendered, top_k=k, progress=False)
        pictures = {i: world[i][0] for i in set(ex.indices.flatten().tolist())}
        guide = None
        if guided:
            guide = {
                n: torch.stack([model.preprocess_pil(pictures[int(i)]) for i in ex.indices[j, : recipe.guide_k]])
                for j, n in enumerate(rendered)
            }
        vis = _gpu(visualize)(model, hook, rendered, recipe=recipe, guide=guide, steps=steps, size=size, progress=False)
        drawn = dict(zip(rendered, vis, strict=True))
        images = [(drawn[n].image, f"neuron {n}: {visualization_kind(drawn[n].meta)} ({recipe.name})") for n in chosen]
        words = []
        if model.is_clip:
            vocab = load_vocabulary("world")
            lens = direct_lens(model, hook, chosen, vocab, top_k=5)
            reference = _batch([drawn[n].image for n in population])[:, None]
            seen = visual_words(
                model, _batch([image for image, _ in images])[:, None], vocab, top_k=5, population=reference
            )
            words = [
                {
                    "neuron": n,
                    "direct lens": list(zip(a["words"], a["scores"], strict=True)),
                    "the model reads the image as": list(zip(b["words"], b["scores"], strict=True)),
                }
                for n, a, b in zip(chosen, lens, seen, strict=True)
            ]
        examples = [
            (
                overlay(tensor_to_pil(model.preprocess_pil(pictures[int(ex.indices[j, r])])), ex.maps[j, r]),
                f"neuron {n}: {ex.captions.get(int(ex.indices[j, r]), '')} ({float(ex.scores[j, r]):.2f})",
            )
            for j, n in enumerate(chosen)
            for r in range(min(self.limits.top_k, ex.indices.shape[1]))
        ]
        return images, words, examples

    def phrase(self, model_name: str, text: str, steps: int, size: int):
        """The image that the model finds most like ``text`` (a visualization of the phrase's text embedding), and
        the held-out world images closest to the phrase."""
        from clipviz.visualization.guidance import UNGUIDED_DEFAULT
        from clipviz.visualization.visualize import visualize

        steps, size = self._check(steps, size)
        if not isinstance(text, str):
            raise ClipvizError(f"type a phrase, e.g. 'a red star'; got {str(text)[:20]}")
        text = " ".join(text.split())
        if not any(ch.isalnum() for ch in text):  # blank, or only zero-width and punctuation characters
            raise ClipvizError("type a phrase, e.g. 'a red star'")
        if len(text) > self.limits.max_phrase_chars:
            raise ClipvizError(f"phrases are limited to {self.limits.max_phrase_chars} characters, got {len(text)}")
        model = self.model(model_name)
        if not model.is_clip:
            raise ClipvizError(f"phrases need a CLIP-like model; '{model_name}' has no text tower")
        recipe = self.recipe or UNGUIDED_DEFAULT  # a phrase has no top examples to be guided by
        vis = _gpu(visualize)(model, texts=[text], recipe=recipe, steps=steps, size=size, progress=False)
        world, _ = self._world()
        pictures = [img for img, _ in world]
        captions = [cap for _, cap in world]
        image_emb = self._world_embeddings(model)
        with torch.no_grad():
            text_emb = model.encode_text([text]).float().cpu()
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
        if not isinstance(hook, str) or hook not in self.atlas["hooks"]:
            raise ClipvizError(f"hook '{str(hook)[:60]}' is not in the atlas; it has: {', '.join(self.atlas_hooks())}")
        neuron = check_int(neuron, "neuron", 0, None)
        entries = {e["neuron"]: e for e in self.atlas["hooks"][hook]["neurons"]}
        if int(neuron) not in entries:
            shown = sorted(entries)
            raise ClipvizError(
                f"neuron {neuron} of '{hook}' is not in the atlas; it has {len(shown)} neurons "
                f"({shown[0]}..{shown[-1]})"
            )
        e = entries[int(neuron)]
        # Paths come from the atlas file, never from the request.
        kinds = e.get("visualization_kinds") or ["plain"] * len(e["visualizations"])
        # Side by side, labelled: the plain image and the data-guided one where both exist.
        images = [
            (Image.open(self.atlas_dir / p).convert("RGB"), kind)
            for p, kind in zip(e["visualizations"], kinds, strict=True)
        ]
        examples = [
            (Image.open(self.atlas_dir / x["thumb"]).convert("RGB"), _example_label(x))
            for x in e["examples"]
            if x["thumb"]
        ]
        return images, e["words"], examples


def _seen(model: HookedVisionModel, images: list[Image.Image]) -> torch.Tensor:
    """Photos as the model sees them (its own resize and crop), batched."""
    return torch.stack([model.preprocess_pil(img) for img in images])


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
            except ClipvizError as error:  # every refusal is shown to the visitor, on one line, with its reason
                raise gr.Error(" ".join(str(error).split())) from None
            except (ValueError, TypeError, OverflowError) as error:
                raise gr.Error(f"bad input: {' '.join(str(error).split())[:200]}") from None

        return run

    def do_neurons(model_name, hook, neurons, steps, size):
        images, words, examples = backend.neurons(model_name, hook, neurons, steps, size)
        return images, _words_markdown(words), examples

    def do_atlas(hook, neuron):
        images, words, examples = backend.atlas_neuron(hook, neuron)
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
                neurons_in = gr.Textbox(
                    "0", label=f"neurons (up to {lim.max_neurons}, e.g. 0,5,9)", max_length=MAX_NEURON_CHARS
                )
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
            ex_out = gr.Gallery(label="top examples (cyan: where the neuron fires)", columns=6)
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
                    first = backend.atlas["hooks"][hooks[0]]["neurons"] if hooks else []
                    shown = ", ".join(str(e["neuron"]) for e in first[:8]) + (" ..." if len(first) > 8 else "")
                    aneuron_in = gr.Number(  # a neuron the atlas holds, not 0 whatever it holds
                        first[0]["neuron"] if first else 0, precision=0, label=f"neuron (in the atlas: {shown})"
                    )
                ago = gr.Button("Show", variant="primary")
                avis_out = gr.Gallery(label="visualizations", columns=4)
                awords_out = gr.Markdown()
                aex_out = gr.Gallery(label="top examples", columns=6)
                ago.click(guarded(do_atlas), [ahook_in, aneuron_in], [avis_out, awords_out, aex_out], api_name="atlas")
    app.queue(default_concurrency_limit=lim.concurrency, max_size=lim.max_queue)
    return app
