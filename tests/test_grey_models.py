"""Models that read one channel (grey scans, X-rays): what they are shown is what they read, and nothing else is.

A grey model gets each image's luminance (0.299 R + 0.587 G + 0.114 B); photos are made grey as they are read, and
visualizations are rendered grey, so a picture never shows a colour its model did not see. Models with other
channel counts are refused in one line. (``clipviz.model.channels``)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz.cli import main as cli_main
from clipviz.errors import UnsupportedModelError

SIDE = 32


def _luminance(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _save_vit(directory, channels: int, mean, std) -> str:
    import transformers as T

    torch.manual_seed(0)
    config = T.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIDE,
        patch_size=8,
        num_channels=channels,
    )
    T.ViTModel(config).eval().save_pretrained(directory)
    T.ViTImageProcessor(size={"height": SIDE, "width": SIDE}, image_mean=mean, image_std=std).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def grey_vit(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clipviz.load(_save_vit(tmp_path_factory.mktemp("grey-vit"), 1, [0.45], [0.25]))


def test_a_grey_model_reads_the_luminance_of_rgb_images(grey_vit):
    assert grey_vit.input_channels == 1
    assert grey_vit.statistics == ((0.45,), (0.25,))
    x = torch.rand(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    native = grey_vit.native(pixel_values=(_luminance(x) - 0.45) / 0.25, output_hidden_states=True).hidden_states
    names = [f"blocks.{i}.hook_resid_post" for i in range(2)]
    _, cache = grey_vit.run_with_cache(x, names, stop_early=False)
    for i, name in enumerate(names):
        torch.testing.assert_close(cache[name], native[i + 1], rtol=0, atol=1e-6)
    # a grey image is read as its grey level, whichever channel count it comes in
    flat = torch.full((1, 1, SIDE, SIDE), 0.3)
    torch.testing.assert_close(grey_vit(flat.expand(-1, 3, -1, -1)), grey_vit(flat), rtol=0, atol=0)
    summary = grey_vit.summary()
    assert summary["input_channels"] == 1 and summary["mean"] == [0.45]
    assert any("0.299 R + 0.587 G + 0.114 B" in note for note in summary["notes"])
    assert grey_vit.identity()["grey"] == [0.299, 0.587, 0.114]


def test_photos_reach_a_grey_model_in_grey_as_pil_converts_them(grey_vit):
    rgb = (np.random.default_rng(0).random((SIDE, SIDE, 3)) * 255).astype(np.uint8)
    photo = Image.fromarray(rgb)
    seen = grey_vit.preprocess_pil(photo)
    assert seen.shape == (3, SIDE, SIDE)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2])  # what thumbnails and guides show
    by_pil = torch.from_numpy(np.asarray(photo.convert("L"), dtype=np.float32) / 255)
    assert (seen[0] - by_pil).abs().max() <= 0.5 / 255 + 1e-6  # PIL rounds to 8 bits


@pytest.mark.parametrize("recipe", ["default", "vit-paper", "maco"])
def test_a_grey_models_visualizations_are_grey_and_score_what_it_reads(grey_vit, recipe):
    hook = "blocks.1.mlp.hook_post"
    vis = clipviz.visualize(grey_vit, hook, [3, 5], recipe=recipe, steps=12, progress=False)
    for v, neuron in zip(vis, (3, 5), strict=True):
        pixels = np.asarray(v.image).astype(int)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        image = torch.from_numpy(pixels[..., 0].astype(np.float32) / 255)[None, None]
        _, cache = grey_vit.run_with_cache(image, [hook])
        seen = float(cache[hook][0, 1:, neuron].mean())  # the patch mean, as visualize reduces it
        assert seen == pytest.approx(v.meta["objective_end"], abs=0.02 * max(1.0, abs(seen)))


def test_a_timm_model_made_with_in_chans_1_is_normalised_as_timm_resolves_it():
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "deit3_small_patch16_224", pretrained=False, img_size=SIDE, patch_size=8, depth=2, in_chans=1, num_classes=4
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = clipviz.wrap(model)
    (mean,), (std,) = hooked.statistics
    assert mean == pytest.approx((0.485 + 0.456 + 0.406) / 3, abs=1e-3)  # timm averages ImageNet's three
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(hooked(x), model((_luminance(x) - mean) / std), rtol=0, atol=1e-5)


def test_models_reading_other_channel_counts_are_refused_in_one_line(tmp_path, capsys):
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=SIDE, patch_size=8, depth=1, in_chans=4
    )
    with pytest.raises(UnsupportedModelError, match=r"^the model takes 4 input channels; clipviz shows models RGB"):
        clipviz.wrap(model)
    spec = _save_vit(tmp_path / "two", 2, [0.5, 0.5], [0.5, 0.5])
    capsys.readouterr()
    assert cli_main(["info", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipviz: error: the model takes 2 input channels") and err.count("\n") == 1


def test_a_grey_model_whose_processor_states_three_means_is_refused(tmp_path):
    spec = _save_vit(tmp_path / "three", 1, [0.4, 0.45, 0.5], [0.25, 0.25, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsupportedModelError, match=r"normalises 3 with mean \(0\.4, 0\.45, 0\.5\)") as error:
            clipviz.load(spec)
    assert "\n" not in str(error.value)


def test_seed_and_reference_tensors_reach_a_grey_model_in_grey(grey_vit):
    from clipviz.visualization.guidance import prepare_guidance
    from clipviz.visualization.recipes import get_recipe

    colour = torch.rand(4, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    hook = "blocks.1.mlp.hook_post"
    guided = prepare_guidance(grey_vit, hook, [3], get_recipe("vital"), {3: colour}, None, "patches")
    seeded = prepare_guidance(grey_vit, hook, [3], get_recipe("accentuate"), None, colour[0], "patches")
    for images in (guided.given[3], seeded.seed_image[None]):
        torch.testing.assert_close(images, _luminance(images).expand_as(images), rtol=0, atol=1e-6)
    torch.testing.assert_close(seeded.seed_image[0], _luminance(colour[:1])[0, 0], rtol=0, atol=1e-6)
