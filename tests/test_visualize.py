"""Feature visualization: known answers on a planted model, determinism, outputs, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from planted import RED, STRIPES, build_planted_vit, stripe_energy

import clipviz
from clipviz.apps.cli import main as cli_main
from clipviz.errors import ClipvizError
from clipviz.visualization.objectives import L2, Context, Neuron, Objective, TotalVariation
from clipviz.visualization.optimise import RenderError, evaluate, optimise
from clipviz.visualization.param import _COLOR_SQRT, FourierImage, MacoImage, PixelImage
from clipviz.visualization.visualize import visualize

HOOK = "blocks.0.mlp.hook_post"
FAST = {"steps": 40, "copies": 4, "progress": False}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return clipviz.load(build_planted_vit(tmp_path_factory.mktemp("planted")))


def _array(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).float().permute(2, 0, 1) / 255


def _natural_images(size: int) -> torch.Tensor:
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), *load_sample_images().images]
    return torch.stack([_array(Image.fromarray(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in photos])


def test_red_neuron_renders_red_and_beats_natural_images(planted):
    vis = visualize(planted, HOOK, [RED], recipe="vit-paper", **FAST)[0]
    mean = _array(vis.image).mean(dim=(1, 2))
    assert mean[0] > 0.9 and mean[1] < 0.1 and mean[2] < 0.1, mean
    natural = evaluate(planted, Neuron(HOOK, RED), _natural_images(32))
    assert vis.meta["objective_end"] > 1.5 * float(natural.max())
    assert vis.meta["objective_end"] > 10 * abs(vis.meta["objective_start"])


def test_spatial_objective_puts_the_pattern_in_its_patch(planted):
    vis = visualize(planted, HOOK, [STRIPES], recipe="vit-paper", reduce=("patch", 1, 2), jitter=0, **FAST)[0]
    energy = stripe_energy(_array(vis.image))
    assert energy[1, 2] > 0.9
    others = torch.cat([energy.flatten()[:6], energy.flatten()[7:]])
    assert others.abs().max() < 0.2 * energy[1, 2]


def test_a_model_loaded_in_bf16_renders_without_autocast(tmp_path):
    """The GPU default path (weights in bf16, no autocast) on the CPU: the red neuron still renders red, the
    metadata says how it ran, and asking for autocast over weights that are not fp32 is refused."""
    model = clipviz.load(build_planted_vit(tmp_path), dtype=torch.bfloat16)
    vis = visualize(model, HOOK, [RED], recipe="vit-paper", **FAST)[0]
    mean = _array(vis.image).mean(dim=(1, 2))
    assert mean[0] > 0.9 and mean[1] < 0.1 and mean[2] < 0.1, mean
    assert vis.meta["precision"] == "bf16-weights"
    with pytest.raises(ClipvizError, match="needs fp32 weights, but the model is loaded in torch.bfloat16"):
        visualize(model, HOOK, [RED], precision="bf16", **FAST)
    fp32 = clipviz.load(build_planted_vit(tmp_path / "fp32"))
    with pytest.raises(ClipvizError, match="needs the model loaded in that dtype"):
        visualize(fp32, HOOK, [RED], precision="bf16-weights", **FAST)


@pytest.mark.parametrize("recipe", ["pii", "clip-inversion", "lucid", "default", "maco", "vit-paper-clip"])
def test_every_recipe_raises_the_red_neuron(planted, recipe):
    steps = 6 if recipe in ("pii", "clip-inversion") else 30
    vis = visualize(planted, HOOK, [RED], recipe=recipe, steps=steps, copies=2, progress=False)[0]
    assert vis.meta["objective_end"] > vis.meta["objective_start"] + 1.0
    assert vis.image.size == (32, 32)
    assert vis.meta["recipe"]["name"] == recipe and vis.meta["recipe"]["steps"] == steps


def _photo(size: int = 64) -> torch.Tensor:
    from skimage import data

    return _array(Image.fromarray(data.astronaut()).resize((size, size), Image.BILINEAR))[None]


def _fit(param, target: torch.Tensor, steps: int = 300, lr: float = 0.05) -> float:
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    for _ in range(steps):
        loss = (param() - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        param.after_step()
    with torch.no_grad():
        return float((param() - target).abs().mean())


def test_pixel_and_fourier_parameterisations_fit_a_photo():
    target = _photo()
    assert _fit(PixelImage([0], (64, 64)), target) < 0.01
    assert _fit(FourierImage([0], (64, 64)), target) < 0.01


def test_maco_with_the_photos_own_magnitude_recovers_it():
    """MaCo fixes the magnitude spectrum; given the photo's, optimising the phase alone must approach the photo
    (phase retrieval is non-convex, so the bar is looser than for free parameterisations)."""
    target = _photo()
    z = torch.logit(target.clamp(0.01, 0.99)) / 2
    y = torch.einsum("nchw,dc->ndhw", z, torch.linalg.inv(_COLOR_SQRT))
    y = y / y.flatten(1).std(dim=1)
    param = MacoImage([0], (64, 64), magnitude=torch.fft.rfft2(y[0], norm="ortho").abs())
    with torch.no_grad():
        start = float((param() - target).abs().mean())
    assert _fit(param, target) < min(0.1, start / 2)


def test_parameterisations_depend_only_on_their_seed():
    for cls in (PixelImage, FourierImage, MacoImage):
        alone = cls([7], (16, 16))()
        batch = cls([3, 7, 9], (16, 16))()
        assert torch.equal(alone[0], batch[1])
        assert not torch.equal(batch[0], batch[1])


def test_same_seed_same_png_and_batch_of_one_equals_batch_of_many(planted, tmp_path):
    kwargs = dict(recipe="vit-paper", steps=8, copies=3, progress=False)
    visualize(planted, HOOK, [0, 1, 2, 3], out=tmp_path / "a", batch_size=4, **kwargs)
    visualize(planted, HOOK, [0, 1, 2, 3], out=tmp_path / "b", batch_size=1, **kwargs)
    for k in range(4):
        a = (tmp_path / "a" / HOOK / f"neuron-{k:05d}.png").read_bytes()
        b = (tmp_path / "b" / HOOK / f"neuron-{k:05d}.png").read_bytes()
        assert a == b
    images = [(tmp_path / "a" / HOOK / f"neuron-{k:05d}.png").read_bytes() for k in range(4)]
    assert len(set(images)) == 4


class _NeedsOutput(Objective):
    """Zero times the head output: forces a full forward pass without changing any gradient."""

    needs_output = True

    def __call__(self, ctx: Context) -> torch.Tensor:
        return 0.0 * ctx.head().float().flatten(1).sum(1) / ctx.copies


def test_early_exit_renders_the_same_image_as_a_full_pass(planted):
    from clipviz.visualization.recipes import get_recipe

    recipe = get_recipe("vit-paper", steps=8, copies=2)
    early = optimise(planted, Neuron(HOOK, [0, 1]), [0, 1], recipe)
    full = optimise(planted, Neuron(HOOK, [0, 1]) + _NeedsOutput(), [0, 1], recipe)
    assert torch.equal(early.images, full.images)


def test_objective_arithmetic_exact_values_and_operands_unchanged(planted):
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1.0
    a, b = Neuron(HOOK, RED), Neuron(HOOK, STRIPES, reduce=("patch", 0, 0))
    va, vb = float(evaluate(planted, a, red)), float(evaluate(planted, b, red))
    # Closed form: every patch's LN input is [2, 1, -1, 0, ...]; GELU(4 * LN(x)[0]) with LN over 16 channels.
    x = torch.zeros(16)
    x[:3] = torch.tensor([2.0, 1.0, -1.0])
    ln = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-6)
    assert va == pytest.approx(float(torch.nn.functional.gelu(4 * ln[0])), rel=1e-5)
    assert vb == pytest.approx(float(torch.nn.functional.gelu(4 * ln[3])), rel=1e-5)  # channel 3 is 0: LN < 0
    combo = 2 * a - 0.5 * b + (-a)
    assert float(evaluate(planted, combo, red)) == pytest.approx(2 * va - 0.5 * vb - va, rel=1e-6)
    assert float(evaluate(planted, combo / 2, red)) == pytest.approx((va - 0.5 * vb) / 2, rel=1e-6)
    assert a.hooks == (HOOK,) and a.index == RED and b.reduce == ("patch", 0, 0)
    assert float(evaluate(planted, a, red)) == va  # evaluating the sum changed nothing in its parts
    tv_image = torch.zeros(1, 3, 32, 32)
    tv_image[..., 16:] = 1.0  # one vertical edge: |diff| = 1 along 32 rows in 3 of the 4 directions
    penalty = float(evaluate(planted, TotalVariation(), tv_image))
    assert penalty == pytest.approx(-(0 + np.sqrt(32) + np.sqrt(31) + np.sqrt(31)), rel=1e-6)
    assert float(evaluate(planted, L2(), torch.full((1, 3, 32, 32), 0.75))) == pytest.approx(-0.0625)
    assert sum([a, b]).hooks == (HOOK,)


def test_nan_loss_names_the_neuron_and_step(planted):
    class Explodes(Objective):
        hooks = (HOOK,)

        def __call__(self, ctx):
            values = ctx.act(HOOK)[..., 0].mean(dim=(1, 2))
            return torch.where(torch.arange(ctx.n) == 1, torch.full_like(values, float("nan")), values)

    from clipviz.visualization.recipes import get_recipe

    with pytest.raises(RenderError, match=r"not finite for neuron 7 at step 0 of 4"):
        optimise(
            planted, Explodes(), [1, 7], get_recipe("vit-paper", steps=4, copies=1), labels=["neuron 1", "neuron 7"]
        )


def test_a_loss_that_breaks_between_checks_is_reported_at_its_exact_step(planted):
    """The finiteness flags are read every 25 steps (each read waits for the device); the error still names the
    first step at which each loss broke, and the image that broke first."""
    calls = []

    class BreaksLater(Objective):
        hooks = (HOOK,)

        def __call__(self, ctx):
            step = len(calls)
            calls.append(step)
            values = ctx.act(HOOK)[..., 0].mean(dim=(1, 2))
            broken = (torch.arange(ctx.n) == 0) & (step > 31) | (torch.arange(ctx.n) == 1) & (step > 30)
            return torch.where(broken, torch.full_like(values, float("inf")), values)

    from clipviz.visualization.recipes import get_recipe

    with pytest.raises(RenderError, match=r"not finite for neuron 7 at step 30 of 60"):
        optimise(
            planted, BreaksLater(), [1, 7], get_recipe("vit-paper", steps=60, copies=1), labels=["neuron 1", "neuron 7"]
        )
    assert len(calls) == 1 + 50  # the start's evaluation, then steps 0..49: stopped at the check after step 49


def test_out_of_memory_halves_the_batch_and_gives_the_same_images(planted, monkeypatch, tmp_path):
    import clipviz.visualization.visualize as vmod

    real = vmod.optimise
    sizes = []

    def flaky(model, objective, seeds, *args, **kwargs):
        sizes.append(len(seeds))
        if len(seeds) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, objective, seeds, *args, **kwargs)

    kwargs = dict(recipe="vit-paper", steps=4, copies=2, progress=False)
    expected = visualize(planted, HOOK, range(6), batch_size=6, **kwargs)
    monkeypatch.setattr(vmod, "optimise", flaky)
    got = visualize(planted, HOOK, range(6), batch_size=6, **kwargs)
    assert sizes == [6, 3, 1, 2, 2, 1] or sizes[0] == 6 and max(sizes[1:]) <= 3
    for e, g in zip(expected, got, strict=True):
        assert np.array_equal(np.asarray(e.image), np.asarray(g.image))


def test_outputs_sidecars_grid_and_resume(planted, tmp_path, monkeypatch):
    out = tmp_path / "vis"
    first = visualize(planted, HOOK, [0, 1, 2], recipe="vit-paper", steps=4, copies=2, out=out, progress=False)
    meta = json.loads((out / HOOK / "neuron-00001.json").read_text())
    assert meta["model"] == planted.spec and meta["hook"] == HOOK and meta["neuron"] == 1 and meta["seed"] == 1
    assert meta["recipe"]["steps"] == 4 and meta["recipe"]["copies"] == 2 and "torch" in meta["versions"]
    assert meta["objective_end"] == pytest.approx(first[1].meta["objective_end"])
    from clipviz.images import LABEL_HEIGHT

    assert Image.open(out / HOOK / "grid.png").size == (3 * 34 + 2, 32 + LABEL_HEIGHT + 4)  # labelled tiles
    assert not list(out.rglob("*.tmp"))

    import clipviz.visualization.visualize as vmod

    def forbidden(*args, **kwargs):
        raise AssertionError("finished neurons were rendered again")

    monkeypatch.setattr(vmod, "optimise", forbidden)
    again = visualize(planted, HOOK, [0, 1, 2], recipe="vit-paper", steps=4, copies=2, out=out, progress=False)
    assert [np.asarray(v.image).tobytes() for v in again] == [np.asarray(v.image).tobytes() for v in first]
    assert (first.reused, again.reused) == (0, 3)
    with pytest.raises(AssertionError, match="rendered again"):  # other settings: not finished
        visualize(planted, HOOK, [0], recipe="vit-paper", steps=5, copies=2, out=out, progress=False)


def test_two_processes_equal_one(planted, tmp_path):
    """torchrun on the CPU (fresh processes: forking a process that already ran torch can hang OpenMP)."""
    import subprocess
    import sys
    from pathlib import Path

    visualize(
        planted, HOOK, [0, 1, 2, 3, 4], recipe="vit-paper", steps=4, copies=2, out=tmp_path / "one", progress=False
    )
    script = Path(__file__).parent / "multiprocess_visualize.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            planted.spec,
            str(tmp_path / "two"),
            HOOK,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 0 of 2 done" in proc.stdout and "rank 1 of 2 done" in proc.stdout
    for k in range(5):
        name = f"neuron-{k:05d}.png"
        assert (tmp_path / "one" / HOOK / name).read_bytes() == (tmp_path / "two" / HOOK / name).read_bytes()
    assert (tmp_path / "two" / HOOK / "grid.png").is_file()


def test_errors_for_bad_targets(planted):
    with pytest.raises(
        ClipvizError,
        match=r"neuron index 99 out of range for hook 'blocks.0.mlp.hook_post': "
        r"it has 32 neurons \(0..31\)",
    ):
        visualize(planted, HOOK, [1, 99], steps=2, progress=False)
    with pytest.raises(ClipvizError, match="text prompts need a CLIP-like model"):
        visualize(planted, texts=["a red square"], steps=2, progress=False)
    with pytest.raises(ClipvizError, match="unknown recipe 'fancy'; accepted: vit-paper"):
        visualize(planted, HOOK, [0], recipe="fancy", progress=False)


def test_cli_visualize_writes_files_and_reports_errors(planted, tmp_path, capsys):
    spec = planted.spec
    out = tmp_path / "cli"
    code = cli_main(
        ["visualize", spec, "--hook", HOOK, "--neurons", "0:2,5", "--steps", "3", "--copies", "2", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / HOOK).glob("*.png")) == [
        "grid.png",
        "neuron-00000.png",
        "neuron-00001.png",
        "neuron-00005.png",
    ]
    capsys.readouterr()
    bad = tmp_path / "bad"
    for argv, message in [
        (["--hook", "blocks.4.mlp.hook_post", "--neurons", "0"], "layer 4 out of range"),
        (["--hook", HOOK, "--neurons", "40"], "neuron index 40 out of range"),
        (["--hook", HOOK, "--neurons", "a:b"], "bad index list 'a:b'"),
        (["--neurons", "1"], "--neurons needs --hook"),
    ]:
        code = cli_main(["visualize", spec, *argv, "--steps", "2", "--out", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("clipviz: error: ") and message in err and err.count("\n") == 1
    assert not bad.exists() or not any(bad.rglob("*"))


def test_class_and_text_objectives_raise_their_targets(tiny):
    classifier = clipviz.load(tiny["vit-classifier"][1])
    from clipviz.visualization.objectives import ClassLogit

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = classifier(x).log_softmax(-1)[:, 3]
    torch.testing.assert_close(evaluate(classifier, ClassLogit(3), x), expected)
    vis = visualize(classifier, classes=[3], recipe="lucid", steps=30, progress=False)[0]
    assert vis.meta["kind"] == "class" and vis.meta["objective_end"] > vis.meta["objective_start"]
    clip = clipviz.load(tiny["clip"][1])
    vis = visualize(clip, texts=["a red circle"], recipe="clip-inversion", steps=10, copies=2, progress=False)[0]
    assert vis.meta["kind"] == "text" and vis.meta["objective_end"] > vis.meta["objective_start"] + 0.1


def test_diversity_is_minus_the_mean_gram_similarity_within_groups(planted):
    from clipviz.visualization.objectives import Diversity

    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 1.0
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([red, red, noise])
    same = evaluate(planted, Diversity(HOOK, groups=[0, 0, 1]), images)
    assert same[0] == pytest.approx(-1.0, abs=1e-5) and same[1] == pytest.approx(-1.0, abs=1e-5)
    assert same[2] == 0.0  # alone in its group
    mixed = evaluate(planted, Diversity(HOOK, groups=[0, 1, 0]), images)
    assert -1.0 < float(mixed[0]) < 0.0 and mixed[0] == pytest.approx(float(mixed[2]), abs=1e-6)


@pytest.mark.parametrize("recipe", ["default", "pii", "clip-inversion"])
def test_a_non_square_model_sees_its_own_shape_never_a_stretched_square(tmp_path, recipe):
    """A 32x48 (height x width) ViT: the rendered image is 32 high and 48 wide and the model is fed exactly that,
    at every zoom stage of a multi-stage recipe; ``--size`` sets the height and keeps the aspect ratio."""
    from families import _timm

    spec = _timm("vit_tiny_patch16_224", img_size=(32, 48), patch_size=8, embed_dim=32, depth=1, num_heads=2)
    model = clipviz.load(spec(tmp_path / "wide"))
    narrow = clipviz.load(
        _timm("vit_tiny_patch16_224", img_size=(16, 48), patch_size=8, embed_dim=32, depth=1, num_heads=2)(
            tmp_path / "narrow"
        )
    )  # PII's smallest stage keeps the aspect ratio (it used to clamp each side to 8 pixels alone)
    (thin,) = visualize(narrow, HOOK, [0], recipe=recipe, steps=2, copies=1, progress=False)
    assert thin.image.size == (48, 16)
    seen = set()
    stem = model.native.patch_embed
    handle = stem.register_forward_pre_hook(lambda m, args: seen.add(tuple(args[0].shape[-2:])))
    try:
        (vis,) = visualize(model, HOOK, [0], recipe=recipe, steps=3, copies=1, progress=False)
        (big,) = visualize(model, HOOK, [0], recipe="default", steps=2, copies=1, size=64, progress=False)
    finally:
        handle.remove()
    assert seen == {(32, 48)}
    assert vis.image.size == (48, 32) and big.image.size == (96, 64)
