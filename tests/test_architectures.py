"""Every family in ``families.py``: clipviz is exactly right where it loads, and refuses in one line where it cannot be.

For each family that loads, on a tiny random model with noise on every parameter:
(a) ``mlp.hook_post`` equals the native activation (the gated product for gated MLPs) in the first and last block;
(b) ``hook_resid_post`` equals the library's own hidden states, where it exposes them;
(c) an early exit gives the same activations as a full pass;
(d) the token layout of the first and last block is the one written in ``families.py``, every hook of those blocks
    has that many tokens, and a change to one patch of the image moves the token the layout says (order);
(e) ``attn.hook_pattern``, wherever it is offered, equals the model's own attention probabilities;
(f) a 3-step ``visualize`` returns an image.
The table in ``docs/architectures.md`` is produced from the same results; ``CLIPVIZ_UPDATE_DOCS=1`` rewrites it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from families import Family, all_families

import clipviz
from clipviz.analysis.concepts import output_directions
from clipviz.errors import ClipvizError, UnsupportedModelError
from clipviz.visualization.visualize import visualize

FAMILIES = all_families()
DOCS = Path(__file__).resolve().parent.parent / "docs" / "architectures.md"
torch.manual_seed(0)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """family name -> ("ok", model) | ("refused", message) | ("untested", why), built and loaded once."""
    root = tmp_path_factory.mktemp("families")
    cache: dict[str, tuple[str, object]] = {}

    def get(family: Family):
        if family.name not in cache:
            cache[family.name] = _load(family, root / re.sub(r"\W+", "_", family.name))
        return cache[family.name]

    torch.set_num_threads(1)
    return get


def _load(family: Family, directory: Path):
    if family.untested:
        return "untested", family.untested
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            spec = family.build(directory)
        except Exception as error:  # noqa: BLE001 - a family that cannot be built offline is reported, not hidden
            return "untested", f"cannot be built here: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        try:
            model = clipviz.load(spec)
        except ClipvizError as error:
            return "refused", str(error).replace(str(directory), "<dir>")
    return "ok", model


def _images(model, n=2, seed=0):
    return torch.rand(n, 3, *model.image_size, generator=torch.Generator().manual_seed(seed))


def _capture(module, on_input=False):
    seen = []
    if on_input:
        handle = module.register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0] if a else next(iter(k.values()))).detach().clone()), with_kwargs=True
        )
    else:
        handle = module.register_forward_hook(
            lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().clone())
        )
    return seen, handle


def _tokens(x: torch.Tensor, d: int) -> torch.Tensor:
    """Native (B, H, W, C) / (B, C, H, W) -> (B, H*W, C), so native tensors compare with clipviz's view."""
    if x.ndim == 4:
        return x.flatten(1, 2) if x.shape[-1] == d else x.flatten(2).transpose(1, 2)
    return x


def _native_mlp_post(family: Family, model, path: str, images) -> torch.Tensor:
    block = model.native.get_submodule(path)
    kind = family.mlp[0]
    if kind == "act":
        act = block.get_submodule(family.mlp[1])
        seen, handle = _capture(act)
        try:
            model(images)
        finally:
            handle.remove()
        return seen[0]
    if kind == "packed":  # gate and up in one projection (timm GluMlp): act(gate half) * the other half
        _, mlp_path, fc1_name, act_name, gate_last = family.mlp
        mlp = block.get_submodule(mlp_path)
        seen, handle = _capture(mlp.get_submodule(fc1_name))
        try:
            model(images)
        finally:
            handle.remove()
        x, gate = seen[0].chunk(2, dim=-1) if gate_last else reversed(seen[0].chunk(2, dim=-1))
        with torch.no_grad():
            return mlp.get_submodule(act_name)(gate) * x
    _, mlp_path, gate_name, up_name, act_name = family.mlp
    mlp = block.get_submodule(mlp_path)
    gate, up, act = mlp.get_submodule(gate_name), mlp.get_submodule(up_name), mlp.get_submodule(act_name)
    seen, handle = _capture(gate, on_input=True)
    try:
        model(images)
    finally:
        handle.remove()
    with torch.no_grad():
        return act(gate(seen[0])) * up(seen[0])  # the gated product, written out from the library's own parts


def _naflex_inputs(model, x: torch.Tensor) -> dict:
    """SigLIP2 NaFlex inputs, made by the library's own processor function: patches, mask and grid."""
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    p = model.backend.patch_size[0]
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    return {
        "pixel_values": torch.stack([convert_image_to_patches(img, p) for img in x]),
        "pixel_attention_mask": torch.ones(len(x), gh * gw, dtype=torch.long),
        "spatial_shapes": torch.tensor([[gh, gw]] * len(x)),
    }


def _no_shuffle(model, tower, x: torch.Tensor) -> dict:
    """ViTMAE shuffles patches with random noise: pass increasing noise (no shuffle), as clipviz runs it."""
    if "noise" not in inspect.signature(tower.forward).parameters:
        return {}
    n = model.layout(0).grid[0] * model.layout(0).grid[1]
    return {"noise": torch.arange(n, dtype=torch.float32).expand(len(x), -1)}


@contextlib.contextmanager
def _unmasked(tower):
    """ViTMAE's own random masking (the user's model keeps its mask ratio) off for the native reference, as clipviz
    runs it."""
    ratio = getattr(tower.config, "mask_ratio", None)
    if ratio is not None:
        tower.config.mask_ratio = 0.0
    try:
        yield
    finally:
        if ratio is not None:
            tower.config.mask_ratio = ratio


def _native_hidden(family: Family, model, images) -> list[torch.Tensor] | None:
    kind, _, where = family.hidden.partition(":")
    x = model.prepare(images)
    with torch.no_grad():
        if kind == "naflex":
            return list(model.native(**_naflex_inputs(model, x), output_hidden_states=True).hidden_states[1:])
        if kind == "hf":
            tower = model.native.get_submodule(where) if where else model.native
            with _unmasked(tower):
                out = tower(pixel_values=x, output_hidden_states=True, **_no_shuffle(model, tower, x))
            return list(out.hidden_states[1:])
        if kind == "timm":
            tower = model.native.get_submodule(where) if where else model.native
            inter = tower.forward_intermediates(
                x,
                indices=model.n_blocks,
                norm=False,
                output_fmt="NLC",
                intermediates_only=True,
                return_prefix_tokens=True,
            )
            # (spatial, prefix) pairs, or plain tensors where the model has no prefix tokens
            return [torch.cat([t[1], t[0]], 1) if isinstance(t, tuple) else t for t in inter]
        if kind == "open_clip":
            inter = model.native.visual.forward_intermediates(
                x, indices=model.n_blocks, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
            )
            return [
                torch.cat([p, s], 1)
                for p, s in zip(inter["image_intermediates_prefix"], inter["image_intermediates"], strict=True)
            ]
    raise AssertionError(family.hidden)


def _native_pattern(family: Family, model, path: str, index: int, images) -> torch.Tensor:
    kind, _, where = family.attention.partition(":")
    x = model.prepare(images)
    block = model.native.get_submodule(path)
    with torch.no_grad():
        if kind == "naflex":
            model.native.set_attn_implementation("eager")
            try:
                return model.native(**_naflex_inputs(model, x), output_attentions=True).attentions[index]
            finally:
                model.native.set_attn_implementation("sdpa")
        if kind == "hf":
            tower = model.native.get_submodule(where) if where else model.native
            tower.set_attn_implementation("eager")
            try:
                with _unmasked(tower):
                    out = tower(pixel_values=x, output_attentions=True, **_no_shuffle(model, tower, x))
                return out.attentions[index]
            finally:
                tower.set_attn_implementation("sdpa")
        if kind == "eager":  # transformers' eager attention: the model's own output_attentions, or the weights the
            # block's attention module returns where the model's forward needs more than pixels (a VLM's)
            previous = model.native.config._attn_implementation
            model.native.set_attn_implementation("eager")
            try:
                with contextlib.suppress(TypeError, ValueError, AttributeError):
                    found = model.native(pixel_values=x, output_attentions=True).attentions
                    if found is not None and len(found) == model.n_blocks:
                        item = found[index]  # PVTv2 wraps each block's probabilities in a 1-tuple
                        return item[0] if isinstance(item, tuple) and len(item) == 1 else item
                seen = []
                handle = model.blocks[index].attn.register_forward_hook(lambda m, a, out: seen.append(out[1]))
                try:
                    model.backend.forward(x)
                finally:
                    handle.remove()
                return seen[0]
            finally:
                with contextlib.suppress(ValueError):  # a sub-model without sdpa (DPT-hybrid's BiT) stays eager
                    model.native.set_attn_implementation(previous)
        attn = block.attn
        if kind == "timm":
            fused = getattr(attn, "fused_attn", None)
            if fused is not None:
                attn.fused_attn = False  # timm then computes softmax(q k^T) and hands it to attn_drop
            seen, handle = _capture(attn.attn_drop, on_input=True)
            try:
                model.backend.forward(x)
            finally:
                handle.remove()
                if fused is not None:
                    attn.fused_attn = fused
            return seen[0]
        if kind == "mha":
            seen, handle = _capture(attn, on_input=True)
            try:
                model.backend.forward(x)
            finally:
                handle.remove()
            q = seen[0]
            return attn(q, q, q, need_weights=True, average_attn_weights=False)[1]
    raise AssertionError(family.attention)


def _check_order(model, overlap: bool = False) -> None:
    """A change to one patch of the image moves the token the layout of block 0's input says (for overlapping
    convolutional stems, whose tokens' centres depend on padding: a token next to it, in the same row or column
    order, never a transposed or shifted grid)."""
    layout = model.hook_layout("blocks.0.hook_resid_pre")
    gh, gw = layout.grid
    h, w = model.image_size
    base = torch.full((1, 3, h, w), 0.5)
    moved = base.clone()
    r, c = gh * 2 // 3, gw // 3
    y0, x0 = r * h // gh, c * w // gw
    # two pixels just inside the patch's top-left corner: inside the patch for non-overlapping patches, and nearest
    # the token's centre for convolutional stems (whose tokens are centred on patch corners)
    moved[..., y0 + 1 : y0 + 3, x0 + 1 : x0 + 3] = 1.0
    _, a = model.run_with_cache(base, ["blocks.0.hook_resid_pre"])
    _, b = model.run_with_cache(moved, ["blocks.0.hook_resid_pre"])
    change = (a["blocks.0.hook_resid_pre"] - b["blocks.0.hook_resid_pre"]).norm(dim=-1)[0]
    assert layout.n_prefix == 0 or float(change[: layout.n_prefix].max()) == 0.0, "a prefix token depends on pixels"
    top = int(change.argmax()) - layout.n_prefix
    if overlap:
        assert abs(top // gw - r) <= 1 and abs(top % gw - c) <= 1, f"token {top} is not next to patch ({r}, {c})"
    else:
        assert top == r * gw + c, f"token {top} changed, not patch ({r}, {c}): tokens are not where the layout says"


def _close(actual, expected, what):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-4, atol=1e-5, msg=what)


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_family(loaded, family: Family):
    status, result = loaded(family)
    if status == "untested":
        pytest.skip(result)
    if family.refuse is not None:
        assert status == "refused", f"{family.name} loaded, but clipviz should refuse it ({family.refuse})"
        assert "\n" not in result and family.refuse in result, result
        return
    assert status == "ok", result
    model = result
    paths = family.blocks(model.native)
    assert [b.path for b in model.blocks] == paths, "clipviz found other blocks than the library has"
    images = _images(model)
    first, last = 0, model.n_blocks - 1

    # (a) the MLP's hidden units, the gated product for gated MLPs
    for i in (first, last):
        _, cache = model.run_with_cache(images, [f"blocks.{i}.mlp.hook_post"], stop_early=False)
        native = _tokens(_native_mlp_post(family, model, paths[i], images), model.blocks[i].d_mlp)
        _close(cache[f"blocks.{i}.mlp.hook_post"], native, f"block {i} mlp.hook_post")
    # (b) the residual stream against the library's own hidden states
    if family.hidden:
        hidden = _native_hidden(family, model, images)
        _, cache = model.run_with_cache(images, [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)])
        for i in range(model.n_blocks):
            _close(cache[f"blocks.{i}.hook_resid_post"], _tokens(hidden[i], model.d_model), f"block {i} resid_post")
    # (c) early exit equals the full pass
    names = model.hook_names(last)
    _, early = model.run_with_cache(images, names)
    _, full = model.run_with_cache(images, names, stop_early=False)
    for name in names:
        _close(early[name], full[name], name)
    # (d) layouts: the family's known layout, every hook's token count, and the order of the tokens
    for i, want in ((first, family.first), (last, family.last)):
        layout = model.layout(i)
        assert (layout.n_prefix, layout.grid) == want, f"block {i}: {layout}"
        for name in model.hook_names(i):
            act = full[name] if name in full else model.run_with_cache(images, [name])[1][name]
            tokens = act.shape[-1] if name.endswith("hook_pattern") else act.shape[1]
            assert tokens == model.hook_layout(name).n_tokens, name
    _check_order(model, family.overlap)
    # (e) attention patterns, wherever offered, are the model's own
    for i in (first, last):
        name = f"blocks.{i}.attn.hook_pattern"
        if name in model.hook_names(i):
            assert family.attention, f"{name} is offered but the family has no native reference"
            _close(
                model.run_with_cache(images, [name])[1][name], _native_pattern(family, model, paths[i], i, images), name
            )
    # (g) output weights and layer scale: each hidden unit's direct write (the direct lens) adds up to the MLP's
    # contribution to the residual stream, resid_post - resid_mid = hidden @ directions + scaled bias
    parts = model.blocks[last]
    if last not in model.token_layouts.indirect_write:
        hook = f"blocks.{last}.mlp.hook_post"
        _, cache = model.run_with_cache(
            images, [hook, f"blocks.{last}.hook_resid_mid", f"blocks.{last}.hook_resid_post"]
        )
        directions = output_directions(model, hook)
        bias = parts.fc2.bias if parts.fc2.bias is not None else torch.zeros(model.blocks[last].d_model)
        scale = parts.layer_scale()
        bias = bias * scale if scale is not None else bias
        written = cache[hook] @ directions + bias
        _close(
            written,
            cache[f"blocks.{last}.hook_resid_post"] - cache[f"blocks.{last}.hook_resid_mid"],
            "direct writes of the MLP's hidden units",
        )
    else:  # a norm after the MLP (Swinv2) or inside it: no fixed direction per neuron, and the lens says so
        with pytest.raises(UnsupportedModelError, match="the direct lens cannot read"):
            output_directions(model, f"blocks.{last}.mlp.hook_post")
    # (h) what the sub-layer hooks give, wherever offered, is what the block adds to its residual stream
    for i in (first, last):
        p, b = f"blocks.{i}.", model.blocks[i]
        for stream, write, after, scale in (
            ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", b.attn_layer_scale()),
            ("hook_resid_mid", "hook_mlp_out", "hook_resid_post", b.layer_scale()),
        ):
            if p + write in model.hook_names(i):
                _, cache = model.run_with_cache(images, [p + stream, p + write, p + after])
                added = cache[p + write] * (1 if scale is None else scale.detach())
                _close(cache[p + stream] + added, cache[p + after], f"{p}{stream} + {write}")
    # (f) a 3-step visualization returns an image
    vis = visualize(model, f"blocks.{last}.mlp.hook_post", [0], steps=3, copies=1, progress=False)
    assert vis[0].image.size == tuple(reversed(model.image_size)) or vis[0].image.size[0] > 0
    if family.text:
        emb = model.encode_text(["a photo of a cat"])
        assert emb.shape[0] == 1


def test_text_needing_the_hub_fails_in_one_line(loaded):
    family = next(f for f in FAMILIES if "tokenizer on the Hub" in f.name)
    status, model = loaded(family)
    assert status == "ok", model
    with pytest.raises(ClipvizError) as error:
        model.encode_text(["a cat"])
    assert "\n" not in str(error.value) and "tokenizer" in str(error.value)


TEXT_FAMILIES = [f for f in FAMILIES if f.text]


@pytest.mark.parametrize("family", TEXT_FAMILIES, ids=[f.name for f in TEXT_FAMILIES])
def test_the_longest_text_a_tower_accepts_is_encoded_and_one_more_token_is_refused(loaded, family):
    """Found from outside (2026-12-02): RoBERTa-style positions start at padding_idx + 1, so AltCLIP read two
    tokens fewer than its position table and crashed on texts of the last two lengths it accepted."""
    status, model = loaded(family)
    assert status == "ok", model
    assert model.backend.text is not None and model.backend.text.context_length is not None, family.name
    accepted = None
    for n in range(1, 4 * model.backend.text.context_length):
        try:
            model.tokenize([" ".join(["b"] * n)])
        except ClipvizError as error:
            assert "reads at most" in str(error) and "\n" not in str(error)
            break
        accepted = n
    else:
        raise AssertionError(f"{family.name}: no text was refused as too long")
    assert accepted is not None
    with torch.no_grad():
        assert model.encode_text([" ".join(["b"] * accepted)]).shape[0] == 1


@pytest.mark.parametrize("family", TEXT_FAMILIES, ids=[f.name for f in TEXT_FAMILIES])
def test_a_texts_embedding_does_not_depend_on_the_texts_batched_with_it(loaded, family):
    """Found from outside (2026-12-02): SigLIP2 pools the last position whatever the mask, and clipviz padded its
    texts to the batch's longest, so "a cat" read differently beside a longer text."""
    status, model = loaded(family)
    assert status == "ok", model
    with torch.no_grad():
        alone = model.encode_text(["b b"])
        beside = model.encode_text(["b b", " ".join(["b"] * 12)])
    torch.testing.assert_close(beside[:1], alone, rtol=1e-4, atol=1e-4 * float(alone.abs().max()))


def test_siglip2_texts_are_padded_as_its_processor_pads_them(tmp_path, monkeypatch):
    """SigLIP2's processor pads every text to 64 tokens; its embedding of a text is the library's pipeline's."""
    import json

    import transformers as T
    from families import noisy
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<pad>", "<eos>", "<unk>", "a", "cat", "photo", "of", "big", "red", "dog"]
    rules = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    rules.pre_tokenizer = pre_tokenizers.Whitespace()
    rules.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tokenizer = T.PreTrainedTokenizerFast(
        tokenizer_object=rules, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=64
    )
    tower = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    text = dict(tower, vocab_size=len(words), max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    native = noisy(
        T.Siglip2Model(T.Siglip2Config(vision_config=dict(tower, patch_size=8, num_patches=16), text_config=text))
    )
    native.save_pretrained(tmp_path / "siglip2")
    tokenizer.save_pretrained(tmp_path / "siglip2")
    (tmp_path / "siglip2" / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "Siglip2ImageProcessor"})
    )
    # transformers maps siglip2 to a tokenizer that needs real vocabulary files: the tiny one stands in for it
    monkeypatch.setattr(T.AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: tokenizer))
    model = clipviz.load(f"hf:{tmp_path / 'siglip2'}")
    texts = ["a cat", "a photo of a big red dog"]
    with torch.no_grad():
        ours = model.encode_text(texts)
        theirs = native.get_text_features(**tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt"))
    theirs = theirs if isinstance(theirs, torch.Tensor) else theirs.pooler_output
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- the docs table
def _row(family: Family, status: str, result) -> str:
    if status == "untested":
        return f"| {family.name} | {family.backend} | not tested | {result} |"
    if status == "refused":
        reason = result.split("; clipviz supports")[0]
        return f"| {family.name} | {family.backend} | refused | {reason} |"
    model = result
    notes = []
    for point, why in model.unavailable_hooks().items():
        notes.append(f"`{point}` left out: {why}")
    for path, why in model.token_layouts.excluded:
        notes.append(f"block `{path}` left out ({why})")
    if any(b.gated for b in model.blocks):
        notes.insert(0, "gated MLP: `mlp.hook_post` is act(gate) * up")
    if model.backend.notes:
        notes = list(model.backend.notes) + notes
    return f"| {family.name} | {family.backend} | supported | {'; '.join(notes) or 'every hook'} |"


HEADER = """# Architectures clipviz is tested on

Produced by `tests/test_architectures.py` on tiny random models built from configs (no network), with noise on every
parameter. *Supported*: clipviz loads it and is exactly right: `mlp.hook_post` (the gated product for gated MLPs),
`hook_resid_post` against the library's hidden states where it has them, early exit, the token layout of the first
and last block (prefix tokens, grid and order), `attn.hook_pattern` against the model's own attention probabilities,
`hook_attn_out` and `hook_mlp_out` as what the block adds to its residual stream (times any layer scale), each
neuron's direct write where the direct lens offers one, and a 3-step `visualize`. At load time clipviz itself moves
one patch at a time to confirm the token order, measures those residual identities on every block, and runs one
image alone and beside two others to confirm that a batch's images are processed each on its own. Hooks clipviz
cannot make exact are left out of the model's hook list with the reason, which `clipviz info` shows too.
*Refused*: `clipviz.load` raises this one-line error (video models, packed-patch towers, towers that mix a batch's
images, and blocks it cannot place among them). Regenerate with `CLIPVIZ_UPDATE_DOCS=1 python -m pytest
tests/test_architectures.py`.

Data (example mining, probe sets, zero-shot checks) goes through each backend's own resize and centre crop
(`model.preprocess_pil`), at the size its processor produces and with its rescale and statistics; where that resize
would stretch a photo (a plain resize, open_clip's or timm's squash) the photo is centre-cropped to the model's
aspect ratio first, and the notes say so. Visualization inputs are rendered at the model's input size and only
normalised.

| family | backend | status | what is left out or refused, and why |
|---|---|---|---|
"""


def test_docs_table_is_current(loaded):
    rows = [_row(f, *loaded(f)) for f in FAMILIES]
    counts = {s: sum(r.split(" | ")[2] == s for r in rows) for s in ("supported", "refused", "not tested")}
    summary = f"\n{counts['supported']} supported, {counts['refused']} refused, {counts['not tested']} not tested.\n"
    text = HEADER + "\n".join(rows) + "\n" + summary
    if os.environ.get("CLIPVIZ_UPDATE_DOCS") == "1":
        DOCS.write_text(text)
    assert DOCS.is_file() and DOCS.read_text() == text, (
        "docs/architectures.md is stale: run CLIPVIZ_UPDATE_DOCS=1 python -m pytest tests/test_architectures.py"
    )


@pytest.mark.parametrize("name", ["ViT", "timm RoPE ViT", "BEiT (relative position bias)", "open_clip ViT"])
def test_half_precision_offers_exactly_the_float32_patterns(loaded, name):
    """Rounding in bfloat16 must not hide a pattern that differs from the model's (RoPE, relative position bias)."""
    status, model = loaded(next(f for f in FAMILIES if f.name == name))
    assert status == "ok", model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = clipviz.load(model.spec, dtype=torch.bfloat16)
    assert half.unavailable_hooks() == model.unavailable_hooks()


def test_a_hook_left_out_names_its_reason_in_info_and_errors(loaded, capsys):
    from clipviz.apps.cli import main as cli_main
    from clipviz.errors import HookNameError

    status, model = loaded(next(f for f in FAMILIES if f.name.startswith("BEiT")))
    assert status == "ok", model
    assert "blocks.0.attn.hook_pattern" not in model.hook_names(0)
    assert "relative position bias" in model.summary()["hooks_left_out"]["attn.hook_pattern (all blocks)"]
    with pytest.raises(HookNameError, match="relative position bias"):
        model.hook_point("blocks.0.attn.hook_pattern")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["info", model.spec]) == 0
    out = capsys.readouterr().out
    assert "hooks_left_out:" in out and "attn.hook_pattern (all blocks): not the model's attention" in out
