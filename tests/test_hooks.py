"""Hook names resolve to the right native modules and capture exactly what the backends compute."""

from __future__ import annotations

import pytest
import torch

import clipviz
from clipviz.errors import HookNameError

ALL = [
    "vit",
    "vit-classifier",
    "deit",
    "beit",
    "clip-vision",
    "siglip-vision",
    "dinov2",
    "dinov2-registers",
    "clip",
    "swin",
    "open_clip",
    "timm",
]
torch.manual_seed(0)
IMAGES = torch.rand(2, 3, 32, 32)


@pytest.fixture(scope="module")
def models(tiny):
    return {name: (facts, clipviz.load(spec)) for name, (facts, spec) in tiny.items()}


def _native_act_path(facts, model, block: int) -> str:
    if facts.name == "swin":
        stage = model.blocks[block].stage
        j = [b.index for b in model.blocks if b.stage == stage].index(block)
        return facts.act_path.format(s=stage, j=j)
    return facts.act_path.format(i=block)


def _hooks_left(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.mark.parametrize("name", ALL)
def test_mlp_hook_post_equals_native_activation_module(models, name):
    facts, model = models[name]
    assert model.n_blocks == facts.n_blocks
    assert len(model.prefix_tokens) == facts.n_prefix
    for block in range(model.n_blocks):
        native = model.native.get_submodule(_native_act_path(facts, model, block))
        seen: list[torch.Tensor] = []
        handle = native.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.detach().clone()))
        try:
            _, cache = model.run_with_cache(IMAGES, [f"blocks.{block}.mlp.hook_post"], stop_early=False)
        finally:
            handle.remove()
        act = cache[f"blocks.{block}.mlp.hook_post"]
        layout = model.layout(block)
        assert act.shape == (2, layout.n_tokens, model.blocks[block].d_mlp)
        assert len(seen) == 1
        assert torch.equal(act, seen[0])


@pytest.mark.parametrize(
    "name",
    ["vit", "vit-classifier", "deit", "beit", "clip-vision", "siglip-vision", "dinov2", "dinov2-registers", "clip"],
)
def test_resid_post_equals_hf_hidden_states(models, name):
    _, model = models[name]
    x = model.prepare(IMAGES)
    tower = model.native.vision_model if name == "clip" else model.native
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states
    _, cache = model.run_with_cache(IMAGES, [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)])
    for i in range(model.n_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], hidden[i + 1], rtol=0, atol=0)
    _, pre = model.run_with_cache(IMAGES, ["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(pre["blocks.0.hook_resid_pre"], hidden[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["open_clip", "timm"])
def test_resid_post_equals_forward_intermediates(models, name):
    _, model = models[name]
    tower = model.native.visual if name == "open_clip" else model.native
    x = model.prepare(IMAGES)
    with torch.no_grad():
        if name == "open_clip":
            inter = tower.forward_intermediates(
                x, indices=model.n_blocks, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
            )
            tokens = [
                torch.cat([p, s], 1)
                for p, s in zip(inter["image_intermediates_prefix"], inter["image_intermediates"], strict=True)
            ]
        else:
            out = tower.forward_intermediates(
                x, indices=model.n_blocks, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
            )
            tokens = [torch.cat([p, s], 1) for s, p in out]
    _, cache = model.run_with_cache(IMAGES, [f"blocks.{i}.hook_resid_post" for i in range(model.n_blocks)])
    for i in range(model.n_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.hook_resid_post"], tokens[i], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vit", "clip", "open_clip", "timm", "dinov2"])
def test_block_hooks_are_consistent(models, name):
    """resid_mid = resid_pre + attn_out; mlp_out = fc2(mlp_post); consecutive blocks chain."""
    _, model = models[name]
    names = [n for i in range(2) for n in model.hook_names(i)]
    _, c = model.run_with_cache(IMAGES, names)
    assert torch.equal(c["blocks.0.hook_resid_post"], c["blocks.1.hook_resid_pre"])
    parts = model.blocks[0]
    torch.testing.assert_close(parts.fc2(c["blocks.0.mlp.hook_post"]), c["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(parts.fc1(parts.ln2(c["blocks.0.hook_resid_mid"])), c["blocks.0.mlp.hook_pre"])
    if name in ("vit", "clip", "open_clip", "timm"):  # no layer scale: the residual sums are exact
        torch.testing.assert_close(
            c["blocks.0.hook_resid_pre"] + c["blocks.0.hook_attn_out"], c["blocks.0.hook_resid_mid"]
        )
        torch.testing.assert_close(
            c["blocks.0.hook_resid_mid"] + c["blocks.0.hook_mlp_out"], c["blocks.0.hook_resid_post"]
        )


def test_attention_pattern_equals_eager_attentions(tiny):
    from transformers import ViTModel

    _, spec = tiny["vit"]
    model = clipviz.load(spec)
    eager = ViTModel.from_pretrained(spec[3:], attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(pixel_values=model.prepare(IMAGES), output_attentions=True).attentions
    _, cache = model.run_with_cache(IMAGES, ["blocks.1.attn.hook_pattern"])
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (2, 2, 17, 17)
    torch.testing.assert_close(pattern, attentions[1], rtol=1e-5, atol=1e-6)


def test_attention_pattern_open_clip_equals_multihead_weights(models):
    _, model = models["open_clip"]
    _, cache = model.run_with_cache(IMAGES, ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_pattern"])
    parts = model.blocks[0]
    x = parts.ln1(cache["blocks.0.hook_resid_pre"])
    _, weights = parts.attn(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(cache["blocks.0.attn.hook_pattern"], weights, rtol=1e-5, atol=1e-6)


def test_native_module_path_is_a_hook(models):
    _, model = models["clip"]
    _, cache = model.run_with_cache(IMAGES, ["blocks.1.mlp.hook_pre", "vision_model.encoder.layers.1.mlp.fc1"])
    assert torch.equal(cache["blocks.1.mlp.hook_pre"], cache["vision_model.encoder.layers.1.mlp.fc1"])


def test_swin_stage_names(models):
    _, model = models["swin"]
    stages = [b.stage for b in model.blocks]
    assert stages == [0, 1, 1]
    _, cache = model.run_with_cache(IMAGES, ["stages.1.blocks.1.mlp.hook_post", "blocks.2.mlp.hook_post"])
    assert torch.equal(cache["stages.1.blocks.1.mlp.hook_post"], cache["blocks.2.mlp.hook_post"])
    assert model.layout(0).grid == (8, 8) and model.layout(2).grid == (4, 4)
    assert "blocks.0.attn.hook_pattern" not in model.hook_names(0)  # relative position bias: not recomputable
    with pytest.raises(HookNameError, match="stage 1 has blocks 0..1"):
        model.hook_point("stages.1.blocks.5.mlp.hook_post")


class _Counter:
    def __init__(self, model):
        self.calls = 0
        self.handles = [b.block.register_forward_pre_hook(self._count) for b in model.blocks]

    def _count(self, *_):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("name", ["vit", "clip", "open_clip", "timm", "swin"])
def test_early_exit_is_identical_and_runs_less(models, name):
    _, model = models[name]
    hook = "blocks.0.mlp.hook_post"
    counter = _Counter(model)
    try:
        out_full, full = model.run_with_cache(IMAGES, [hook], stop_early=False)
        after_full = counter.calls
        out_early, early = model.run_with_cache(IMAGES, [hook])
        after_early = counter.calls - after_full
    finally:
        counter.remove()
    assert out_full is not None and out_early is None and early.stopped_early
    assert torch.equal(full[hook], early[hook])
    assert after_full == model.n_blocks
    assert after_early == 1


def test_hooks_are_removed_after_capture_error_and_early_exit(models):
    _, model = models["clip"]
    before = _hooks_left(model)
    model.run_with_cache(IMAGES, ["blocks.1.mlp.hook_post"])  # early exit
    model.run_with_cache(IMAGES, ["blocks.1.mlp.hook_post"], stop_early=False)

    def boom(value, point):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(IMAGES, [("blocks.0.mlp.hook_post", boom)])
    with pytest.raises(RuntimeError, match="inside"), model.hooks([("blocks.0.hook_resid_post", lambda v, p: v * 2)]):
        assert _hooks_left(model) == before + 1
        raise RuntimeError("inside")
    assert _hooks_left(model) == before


def test_editing_hooks_change_downstream_and_identity_does_not(models):
    _, model = models["clip"]
    with torch.no_grad():
        base = model(IMAGES)
        same = model.run_with_hooks(IMAGES, [("blocks.1.mlp.hook_post", lambda v, p: v.clone())])
        ablated = model.run_with_hooks(IMAGES, [("blocks.1.mlp.hook_post", lambda v, p: torch.zeros_like(v))])
    assert torch.equal(base, same)
    assert not torch.allclose(base, ablated)
    # Replacing MLP output of the last block by zero equals removing it from the residual stream.
    _, c = model.run_with_cache(IMAGES, ["blocks.2.hook_resid_mid", "blocks.2.hook_resid_post"], stop_early=False)
    with model.hooks([("blocks.2.hook_mlp_out", lambda v, p: torch.zeros_like(v))]):
        _, c2 = model.run_with_cache(IMAGES, ["blocks.2.hook_resid_post"])
    torch.testing.assert_close(c2["blocks.2.hook_resid_post"], c["blocks.2.hook_resid_mid"])


def test_edit_of_read_only_pattern_is_refused(models):
    _, model = models["vit"]
    with pytest.raises(HookNameError, match="read-only"):
        model.run_with_hooks(IMAGES, [("blocks.0.attn.hook_pattern", lambda v, p: v * 0)])


def test_hook_z_roundtrip_edit(models):
    _, model = models["vit"]
    _, c = model.run_with_cache(IMAGES, ["blocks.0.attn.hook_z", "blocks.0.hook_attn_out"])
    z = c["blocks.0.attn.hook_z"]
    assert z.shape == (2, 17, 2, 16)
    out_proj = model.blocks[0].out_proj
    torch.testing.assert_close(out_proj(z.flatten(-2)), c["blocks.0.hook_attn_out"])
    with model.hooks([("blocks.0.attn.hook_z", lambda v, p: torch.zeros_like(v))]):
        _, c2 = model.run_with_cache(IMAGES, ["blocks.0.hook_attn_out"])
    expected = out_proj.bias.expand_as(c2["blocks.0.hook_attn_out"])
    torch.testing.assert_close(c2["blocks.0.hook_attn_out"], expected)


@pytest.mark.parametrize(
    "hook, message",
    [
        ("blocks.7.mlp.hook_post", "layer 7 out of range in hook 'blocks.7.mlp.hook_post': this model has blocks 0..2"),
        ("blocks.0.mlp.hook_nope", "unknown hook 'blocks.0.mlp.hook_nope'"),
        ("encoder.nothing.here", "unknown hook 'encoder.nothing.here'"),
    ],
)
def test_bad_hook_names(models, hook, message):
    _, model = models["vit"]
    with pytest.raises(HookNameError) as info:
        model.run_with_cache(IMAGES, [hook])
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_the_native_path_of_a_clipviz_hook_is_that_hook(tmp_path):
    """One activation, one name: results asked by the MLP activation's module path land where mlp.hook_post's do
    (and the direct lens, which reads mlp.hook_post, accepts it)."""
    import clipviz
    from clipviz.visualization.visualize import visualize

    model = clipviz.load("world-clip")
    assert model.hook_point("visual.transformer.resblocks.1.mlp.gelu").name == "blocks.1.mlp.hook_post"
    assert model.hook_point("visual.transformer.resblocks.1").name == "blocks.1.hook_resid_post"
    assert model.hook_point("visual.transformer.resblocks.1.ln_1").name == "visual.transformer.resblocks.1.ln_1"
    out = tmp_path / "vis"
    visualize(model, "visual.transformer.resblocks.1.mlp.gelu", [0], recipe="default", steps=1, out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["blocks.1.mlp.hook_post"]
