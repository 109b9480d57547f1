"""The exact speed-ups of the optimisation step: the same values as the plain computation, to a stated tolerance,
and batch independence with them on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import clipviz
from clipviz.errors import ClipvizError
from clipviz.model.compiled import blocks_compiled
from clipviz.model.onednn import frozen_linear, linears_as_onednn, onednn_available
from clipviz.model.stem import patch_embedding, patch_matmul, stem_as_matmul
from clipviz.visualization import optimise as optimise_module
from clipviz.visualization import param
from clipviz.visualization.fused import AffineChain, fuse_affine
from clipviz.visualization.objectives import Direction, Diversity, Neuron, TotalVariation
from clipviz.visualization.optimise import _rngs, forward_objective, optimise
from clipviz.visualization.recipes import get_recipe
from clipviz.visualization.sliced import _float32, plan_sliced
from clipviz.visualization.speedups import SpeedUps, augmentations
from clipviz.visualization.transforms import Jitter, _per_image
from clipviz.visualization.visualize import visualize
from clipviz.visualization.vital import guided_objective

# float32, values of order 1: a sum of d_model products in another order than the matrix product's
SLICED_TOL = {"rtol": 1e-5, "atol": 1e-6}
SLICED_GRAD_TOL = {"rtol": 1e-4, "atol": 1e-7}
STEM_TOL = {"rtol": 1e-5, "atol": 1e-5}
# float32 through every block: each product sums in oneDNN's order instead of MKL's
ONEDNN_TOL = {"rtol": 1e-4, "atol": 1e-5}
ARCHS = ["vit", "deit", "beit", "clip-vision", "siglip-vision", "dinov2", "dinov2-registers", "open_clip", "timm"]
ONLY_SLICED = SpeedUps(sliced_mlp=True, matmul_stem=False, fused_affine=False, onednn_linear=False)
ONLY_STEM = SpeedUps(sliced_mlp=False, matmul_stem=True, fused_affine=False, onednn_linear=False)
ONLY_ONEDNN = SpeedUps(sliced_mlp=False, matmul_stem=False, fused_affine=False, onednn_linear=True)
ONLY_COMPILED = SpeedUps(
    sliced_mlp=False, matmul_stem=False, fused_affine=False, onednn_linear=False, compiled_blocks=True
)
# inductor's fused LayerNorm and GELU reduce in another order than the eager kernels
COMPILED_TOL = {"rtol": 1e-4, "atol": 1e-5}
needs_compiler = pytest.mark.skipif(not shutil.which("c++"), reason="torch.compile needs a C++ compiler on the CPU")
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")


@pytest.fixture(scope="module")
def models(tiny):
    return {name: clipviz.load(spec) for name, (_, spec) in tiny.items() if name in ARCHS + ["swin"]}


def _assert_like_plain(
    model, objective, images, copies: int, speedups: SpeedUps, tol: dict, grad_tol: dict | None = None
) -> None:
    """Values (within ``tol``) and input gradients (within ``grad_tol``, default ``tol``) with ``speedups`` equal
    those of the plain computation."""
    got, got_grad = _value_and_grad(model, objective, images, copies, speedups)
    want, want_grad = _value_and_grad(model, objective, images, copies, SpeedUps.none())
    torch.testing.assert_close(got, want, **tol)
    torch.testing.assert_close(got_grad, want_grad, **(grad_tol or tol))


def _value_and_grad(model, objective, images, copies, speedups):
    x = images.clone().requires_grad_(True)
    clean = x.reshape(-1, copies, *x.shape[1:])[:, 0]
    values = forward_objective(model, objective, x, copies, clean, speedups=speedups)
    values.sum().backward()
    return values.detach(), x.grad


@pytest.mark.parametrize("name", [*ARCHS, "swin"])
@pytest.mark.parametrize("point", ["mlp.hook_post", "mlp.hook_pre"])
def test_sliced_mlp_equals_the_full_pass(models, name, point):
    model = models[name]
    hook = f"blocks.1.{point}"
    width = model.hook_width(hook)
    objective = Neuron(hook, [3, width - 1, 0])
    assert plan_sliced(model, objective) is not None
    torch.manual_seed(0)
    images = torch.rand(6, 3, *model.image_size)  # 3 images x 2 copies
    _assert_like_plain(model, objective, images, 2, ONLY_SLICED, SLICED_TOL, SLICED_GRAD_TOL)


@pytest.mark.parametrize("reduce", ["cls", "max", ("region", 0, 2, 1, 3)])
def test_sliced_mlp_with_other_reductions_and_sums(models, reduce):
    model = models["vit"]
    a, b = Neuron("blocks.2.mlp.hook_post", [1, 5], reduce), Neuron("blocks.2.mlp.hook_post", 7, reduce)
    objective = a - 0.5 * b + 0.1 * TotalVariation()
    assert plan_sliced(model, objective) is not None
    images = torch.rand(2, 3, *model.image_size)
    got, got_grad = _value_and_grad(model, objective, images, 1, ONLY_SLICED)
    want, want_grad = _value_and_grad(model, objective, images, 1, SpeedUps.none())
    torch.testing.assert_close(got, want, **SLICED_TOL)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-7)


def test_sliced_mlp_only_where_it_applies(models):
    model = models["vit"]
    hook = "blocks.1.mlp.hook_post"
    assert plan_sliced(model, Direction(hook, torch.ones(model.d_mlp))) is None
    assert plan_sliced(model, Neuron(hook, 0) + Diversity(hook)) is None  # Diversity reads the whole activation
    assert plan_sliced(model, Neuron("blocks.1.hook_resid_post", 0)) is None
    vector = torch.ones(model.d_model)
    for after in ("blocks.1.hook_mlp_out", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"):
        assert plan_sliced(model, Neuron(hook, 0) + Direction(after, vector)) is None  # fires after the MLP input
    assert plan_sliced(model, Neuron(hook, 0) + Neuron("blocks.1.mlp.hook_pre", 1)) is None  # the same MLP
    assert plan_sliced(model, Neuron(hook, 0) + Neuron("blocks.0.mlp.hook_post", 1)).keep == ("blocks.0.mlp.hook_post",)
    with model.hooks([(hook, lambda value, point: value * 2)]):  # an editing hook must not be bypassed
        assert plan_sliced(model, Neuron(hook, 0)) is None
    with pytest.raises(ClipvizError, match="out of range"):
        forward_objective(model, Neuron(hook, model.d_mlp), torch.rand(1, 3, *model.image_size), 1, None)


def _vital_objective(model, hook, neurons):
    torch.manual_seed(1)
    guides = [torch.rand(3, 3, *model.image_size) for _ in neurons]
    return guided_objective(model, hook, neurons, guides, ["blocks.0.hook_resid_pre", "hook_resid_mid"], 1.0)


@pytest.mark.parametrize("name", [*ARCHS, "swin"])
def test_sliced_mlp_with_guidance_terms_equals_the_full_pass(models, name):
    model = models[name]
    hook = "blocks.1.mlp.hook_post"
    objective = _vital_objective(model, hook, [3, model.hook_width(hook) - 1, 0])
    plan = plan_sliced(model, objective)
    assert plan is not None and plan.keep == ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid")
    torch.manual_seed(0)
    images = torch.rand(6, 3, *model.image_size)  # 3 images x 2 copies
    _assert_like_plain(model, objective, images, 2, ONLY_SLICED, SLICED_TOL, SLICED_GRAD_TOL)


def test_sliced_mlp_checks_where_a_kept_hook_fires(models, monkeypatch):
    model = models["vit"]
    hook = "blocks.1.mlp.hook_post"
    with pytest.raises(ClipvizError, match="does not fire before"):
        model.run_to_mlp_input(torch.rand(1, 3, *model.image_size), 1, ["blocks.1.hook_mlp_out"])
    # a name that passes the check by name but sits after the MLP input as resolved: the probe pass refuses it
    late = model.hook_point("blocks.1.hook_mlp_out")
    monkeypatch.setitem(model.registry._cache, "blocks.0.hook_resid_mid", late)
    assert plan_sliced(model, Neuron(hook, 0) + Direction("blocks.0.hook_resid_mid", torch.ones(model.d_model))) is None


def test_vital_renders_the_same_images_with_the_sliced_mlp(models, monkeypatch):
    model = models["vit"]
    hook, neurons = "blocks.1.mlp.hook_post", [3, 7, 9]
    torch.manual_seed(2)
    guide = {n: torch.rand(3, 3, *model.image_size) for n in neurons}

    def render(batch_size=3):
        vis = visualize(
            model, hook, neurons, recipe="vital", steps=4, guide=guide, batch_size=batch_size, progress=False
        )
        return torch.stack([torch.from_numpy(np.array(v.image)).int() for v in vis])  # the 8-bit images

    assert plan_sliced(model, _vital_objective(model, hook, neurons)) is not None
    fast = render()
    assert torch.equal(render(batch_size=1), fast)  # batch-independent with it
    monkeypatch.setattr(optimise_module, "SpeedUps", SpeedUps.none)  # optimise's default: every speed-up off
    plain = render()
    assert int((fast - plain).abs().max()) <= 1  # four Adam steps of float rounding: at most one grey level


@pytest.mark.parametrize("name", [*ARCHS, "swin"])
def test_stem_as_matmul_equals_the_convolution(models, name):
    model = models[name]
    conv = patch_embedding(model)
    assert conv is not None and conv.kernel_size == conv.stride
    x = torch.rand(3, 3, *model.image_size, requires_grad=True)
    y = conv(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    want_grad, x.grad = x.grad, None
    got = patch_matmul(conv, x)
    (got * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    torch.testing.assert_close(got, y, **STEM_TOL)
    torch.testing.assert_close(x.grad, want_grad, **STEM_TOL)
    if onednn_available():
        x.grad = None
        got = patch_matmul(conv, x, onednn=True)
        (got * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        torch.testing.assert_close(got, y, **STEM_TOL)
        torch.testing.assert_close(x.grad, want_grad, **STEM_TOL)
    objective = Neuron("blocks.1.mlp.hook_post", [2, 4, 6])
    images = torch.rand(3, 3, *model.image_size)
    got, got_grad = _value_and_grad(model, objective, images, 1, ONLY_STEM)
    want, want_grad = _value_and_grad(model, objective, images, 1, SpeedUps.none())
    torch.testing.assert_close(got, want, **STEM_TOL)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    with stem_as_matmul(model):
        assert "forward" in conv.__dict__
    assert "forward" not in conv.__dict__  # restored


@needs_onednn
@pytest.mark.parametrize("name", [*ARCHS, "swin"])
def test_onednn_linears_equal_the_plain_ones(models, name):
    model = models[name]
    objective = Neuron("blocks.1.mlp.hook_post", [2, 4, 6])
    torch.manual_seed(0)
    images = torch.rand(3, 3, *model.image_size)
    _assert_like_plain(model, objective, images, 1, ONLY_ONEDNN, ONEDNN_TOL)
    with linears_as_onednn(model) as switched:
        assert switched > 0
        linear = next(m for m in model.backend.vision_root.modules() if isinstance(m, torch.nn.Linear))
        assert "forward" in linear.__dict__
    assert "forward" not in linear.__dict__  # restored
    assert all(not p.requires_grad for p in model.parameters())  # frozen: the input gradient is all there is


@needs_onednn
def test_onednn_linear_rows_are_batch_independent_and_it_falls_back_where_it_must():
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 40).requires_grad_(False)
    x = torch.randn(5, 17, 48, requires_grad=True)
    g = torch.randn(5, 17, 40)
    y = frozen_linear(x, layer.weight, layer.bias)
    (y * g).sum().backward()
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
    for i in (0, 3):  # one image alone: the same bits as in the batch, forward and input gradient
        xi = x[i : i + 1].detach().requires_grad_(True)
        yi = frozen_linear(xi, layer.weight, layer.bias)
        (yi * g[i : i + 1]).sum().backward()
        assert torch.equal(yi, y[i : i + 1]) and torch.equal(xi.grad, x.grad[i : i + 1])
    with torch.no_grad():
        layer.weight.mul_(2)  # an in-place change: packed again
    torch.testing.assert_close(frozen_linear(x, layer.weight, layer.bias), layer(x), rtol=1e-5, atol=1e-5)
    layer.requires_grad_(True)  # weights that learn: plain F.linear, with its weight gradient
    out = frozen_linear(x, layer.weight, layer.bias)
    assert torch.equal(out, layer(x))
    out.sum().backward()
    assert layer.weight.grad is not None
    w64 = layer.weight.double()
    assert torch.equal(frozen_linear(x.double(), w64, None), F.linear(x.double(), w64))  # not float32: F.linear


@needs_compiler
@pytest.mark.parametrize("name", ["vit", "timm"])
def test_compiled_blocks_equal_the_eager_pass_and_keep_batch_independence(models, name):
    model = models[name]
    hook = "blocks.2.mlp.hook_post"
    with blocks_compiled(model, upto=2) as switched:
        assert switched == 2
    with model.hooks([("blocks.0.hook_resid_post", lambda value, point: None)]), blocks_compiled(model, 2) as n:
        assert n == 1  # a block with a hook stays eager
    torch.manual_seed(0)
    images = torch.rand(3, 3, *model.image_size)
    got, got_grad = _value_and_grad(model, Neuron(hook, [2, 4, 6]), images, 1, ONLY_COMPILED)
    want, want_grad = _value_and_grad(model, Neuron(hook, [2, 4, 6]), images, 1, SpeedUps.none())
    torch.testing.assert_close(got, want, **COMPILED_TOL)
    torch.testing.assert_close(got_grad, want_grad, **COMPILED_TOL)
    on = SpeedUps(compiled_blocks=True)
    batch, batch_grad = _value_and_grad(model, Neuron(hook, [2, 4, 6]), images, 1, on)
    alone, alone_grad = _value_and_grad(model, Neuron(hook, [4]), images[1:2], 1, on)
    assert torch.equal(alone, batch[1:2]) and torch.equal(alone_grad, batch_grad[1:2])


# bf16 weights: the sliced sum in float32, rounded to bf16 once, as the matrix product rounds: one bf16 step at most
# (identical on the tiny architectures when measured)
BF16_TOL = {"rtol": 2**-7, "atol": 1e-5}


@pytest.fixture(scope="module")
def bf16_models(tiny):
    return {name: clipviz.load(tiny[name][1], dtype=torch.bfloat16) for name in ("vit", "open_clip", "swin")}


@pytest.mark.parametrize("name", ["vit", "open_clip", "swin"])
def test_sliced_mlp_with_bf16_weights_equals_the_full_pass(bf16_models, name):
    model = bf16_models[name]
    objective = Neuron("blocks.1.mlp.hook_post", [3, 5, 0])
    torch.manual_seed(0)
    images = torch.rand(6, 3, *model.image_size)
    _assert_like_plain(model, objective, images, 2, ONLY_SLICED, BF16_TOL)


def _tensor_casts_per_step(model, objective, recipe: str) -> int:
    """``aten::_to_copy`` calls on tensors (not the wrapped Python numbers of ``x * 0.5``) in one optimisation step:
    a 3-step run's count minus a 2-step run's (the clean evaluations before and after cancel out)."""

    def count(steps: int) -> int:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            optimise(model, objective, [3, 7], get_recipe(recipe, steps=steps))
        return sum(e.name == "aten::_to_copy" and bool(e.input_shapes and e.input_shapes[0]) for e in prof.events())

    count(1)  # the casts made once (the weights' float32 copies) happen here
    two = count(2)
    return count(3) - two


def test_bf16_weights_make_no_needless_dtype_copies(bf16_models):
    """The casts left per step: the image into bf16 and its gradient back; the MLP input into float32 for the
    sliced sum and back; the sliced pre-activation rounded to bf16 and back; the neuron's activation into float32
    for the objective and back. The Fourier scale's promotion to complex and the weight rows' casts (both
    constant) happen once, no longer at every step (12 -> 8; vital 16 -> 12, its two matched activations in and
    out of float32 for the sort)."""
    model = bf16_models["vit"]
    hook = "blocks.1.mlp.hook_post"
    assert _tensor_casts_per_step(model, Neuron(hook, [3, 7]), "default") <= 8
    assert _tensor_casts_per_step(model, _vital_objective(model, hook, [3, 7]), "vital") <= 12
    weight = model.blocks[1].fc1.weight
    before = _float32(weight)
    assert _float32(weight) is before and torch.equal(before, weight.float())  # cast once, the same values
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place change: cast again
    assert _float32(weight) is not before and torch.equal(_float32(weight), weight.float())
    with torch.no_grad():
        weight.mul_(0.5)


def test_fourier_scale_as_complex_gives_the_promoted_bits():
    image = param.FourierImage([3, 7], (24, 24))
    got = image()
    got.sum().backward()
    want_grad, image.spectrum.grad = image.spectrum.grad, None
    h, w = image.size
    real = image.scale.real.contiguous()  # the real scale that the product promoted at every step
    spectrum = torch.view_as_complex(image.spectrum) * real
    want = torch.sigmoid(param._decorrelated_to_rgb(torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / 4.0))
    want.sum().backward()
    assert torch.equal(got, want) and torch.equal(want_grad, image.spectrum.grad)


def _einsum_to_rgb(x):
    return torch.einsum("nchw,dc->ndhw", x, param._COLOR_SQRT.to(x))


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (3, 3, 17, 31), (4, 3, 224, 224)])
def test_colour_decorrelation_gives_the_einsums_bits(shape):
    torch.manual_seed(0)
    x, g = torch.randn(shape, requires_grad=True), torch.rand(shape)
    got = param._decorrelated_to_rgb(x)
    (got_grad,) = torch.autograd.grad(got, x, g)
    want = _einsum_to_rgb(x)
    (want_grad,) = torch.autograd.grad(want, x, g)
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    alone = param._decorrelated_to_rgb(x[-1:])
    assert torch.equal(alone, got[-1:]) and torch.equal(torch.autograd.grad(alone, x, g[-1:])[0][-1:], got_grad[-1:])


@pytest.mark.parametrize("recipe", ["default", "maco"])
def test_colour_decorrelation_keeps_the_images(models, recipe, monkeypatch):
    model = models["vit"]
    settings = get_recipe(recipe, steps=3)
    objective = Neuron("blocks.1.mlp.hook_post", [3, 7])
    got = optimise(model, objective, [3, 7], settings).images
    monkeypatch.setattr(param, "_decorrelated_to_rgb", _einsum_to_rgb)
    assert torch.equal(got, optimise(model, objective, [3, 7], settings).images)


def _jitter_by_roll(self, x, rngs, progress):  # the per-image loop that the batched gather replaced
    shifts = _per_image(rngs, lambda g: torch.randint(-self.max_shift, self.max_shift + 1, (2,), generator=g))
    return torch.stack(
        [torch.roll(img, shifts=(dy, dx), dims=(-2, -1)) for img, (dy, dx) in zip(x, shifts.tolist(), strict=True)]
    )


@pytest.mark.parametrize(("n", "copies", "h", "w"), [(3, 1, 16, 16), (2, 4, 17, 31), (1, 2, 224, 224)])
def test_jitter_as_one_gather_gives_the_rolls_bits(n, copies, h, w):
    torch.manual_seed(0)
    base, g = torch.randn(n, 1, 3, h, w), torch.randn(n, copies, 3, h, w)
    out = {}
    for label, call in (("gather", Jitter.__call__), ("roll", _jitter_by_roll)):
        leaf = base.clone().requires_grad_(True)
        y = call(Jitter(9), leaf.expand(-1, copies, -1, -1, -1), _rngs(range(n), stream=1), 0.0)
        y.backward(g)
        out[label] = y.detach(), leaf.grad
    assert torch.equal(out["gather"][0], out["roll"][0]) and torch.equal(out["gather"][1], out["roll"][1])


@pytest.mark.parametrize("recipe", ["default", "vit-paper", "pii", "clip-inversion", "maco", "vital"])
def test_jitter_as_one_gather_keeps_the_images(models, recipe, monkeypatch):
    model = models["vit"]
    hook, neurons = "blocks.1.mlp.hook_post", [3, 7]
    settings = get_recipe(recipe, steps=2, copies=min(3, get_recipe(recipe).copies))
    objective = _vital_objective(model, hook, neurons) if recipe == "vital" else Neuron(hook, neurons)
    got = optimise(model, objective, [3, 7], settings).images
    monkeypatch.setattr(Jitter, "__call__", _jitter_by_roll)
    assert torch.equal(got, optimise(model, objective, [3, 7], settings).images)


def test_fused_affine_chain_equals_the_separate_steps(models):
    model = models["clip-vision"]  # mean and std that are not 0.5
    recipe = get_recipe("vit-paper", copies=3)
    side = model.image_size[0]
    fused, folded = augmentations(recipe, model, (side, side), SpeedUps())
    assert folded and isinstance(fused[0], AffineChain) and len(fused) == 2  # the chain, then the jitter
    # as in an optimisation, the images carry a graph: their augmentations leave [0, 1] on purpose, and prepare
    # checks the pixel range of data only
    x = torch.rand(2, 1, 3, side, side, requires_grad=True).expand(-1, 3, -1, -1, -1)
    out = {}
    for label, transforms in (("fused", fused), ("plain", recipe.transforms())):
        rngs = _rngs([5, 9], stream=1)
        y = x
        for t in transforms:
            y = t(y, rngs, 0.3)
        out[label] = y.reshape(6, 3, side, side)
        out[label + "-next"] = torch.stack([torch.rand(1, generator=g) for g in rngs])  # the streams stay in step
    with model.prenormalised():
        got = model.prepare(out["fused"])
    torch.testing.assert_close(got, model.prepare(out["plain"]), rtol=0, atol=1e-5)
    assert torch.equal(out["fused-next"], out["plain-next"])
    # a warp with zero padding after the chain: the normalisation stays in the model
    chain, rest, folds = fuse_affine(get_recipe("vit-paper", affine=(10.0, 0.0, 1.0, 1.0)).transforms(), (0, 1))
    assert not folds and chain.mean is None and len(rest) == 2
    assert augmentations(recipe, model, (side // 2, side // 2), SpeedUps())[1] is False  # not at the input size


@pytest.mark.parametrize("recipe", ["vit-paper", "default"])
def test_speedups_keep_batch_independence_and_match_the_plain_loop(models, recipe):
    model = models["vit"]
    hook = "blocks.1.mlp.hook_post"
    settings = get_recipe(recipe, steps=4, copies=2 if recipe == "vit-paper" else 1)
    many = optimise(model, Neuron(hook, [3, 7, 9]), [3, 7, 9], settings)
    alone = optimise(model, Neuron(hook, [7]), [7], settings)
    assert torch.equal(many.images[1], alone.images[0])
    plain = optimise(model, Neuron(hook, [3, 7, 9]), [3, 7, 9], settings, speedups=SpeedUps.none())
    torch.testing.assert_close(many.start, plain.start, **SLICED_TOL)
    # four Adam steps: rounding differences of 1e-6 stay far below one 8-bit grey level
    assert float((many.images - plain.images).abs().max()) < 1e-3


def test_a_neurons_indices_are_made_once_per_request_not_at_every_step():
    from clipviz.visualization.objectives import _indices

    first = _indices([3, 5], 2, 10, "neuron", "cpu")
    assert _indices([3, 5], 2, 10, "neuron", "cpu") is first and first.tolist() == [3, 5]
    assert _indices(4, 3, 10, "neuron", "cpu").tolist() == [4, 4, 4]
    with pytest.raises(ClipvizError, match=r"10 accepted \(0..9\), got 10"):
        _indices([3, 10], 2, 10, "neuron", "cpu")
