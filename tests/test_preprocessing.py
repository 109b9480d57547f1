"""Example mining feeds photos through each backend's own resize + centre crop, never a stretch to a square."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz.analysis.examples import mine_examples
from clipviz.data import open_source

HOOK = "blocks.1.mlp.hook_post"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Non-square photos that ship with scikit-image and scikit-learn (landscape and portrait)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    arrays = [
        skimage.data.coffee(),
        skimage.data.chelsea(),
        skimage.data.rocket()[:, :300],
        load_sample_images().images[0],
        skimage.data.astronaut()[:, 100:400],
    ]
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, array in enumerate(arrays):
        path = folder / f"{i:02d}.png"
        Image.fromarray(np.ascontiguousarray(array)).save(path)
        paths.append(path)
    assert any(a.shape[0] > a.shape[1] for a in arrays) and any(a.shape[0] < a.shape[1] for a in arrays)
    return paths


def _own_input(name: str, model, spec: str, image: Image.Image) -> torch.Tensor:
    """The backend's own preprocessing, normalisation included: what its users feed the model."""
    if name == "open_clip":
        import open_clip

        _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{spec.split(':', 1)[-1]}")
        return preprocess(image)[None]
    if name == "timm":
        from timm.data import create_transform, resolve_data_config

        config = resolve_data_config(model=model.native)
        config["input_size"] = (3, *model.image_size)
        return create_transform(**config)(image)[None]
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(spec.split(":", 1)[1])(images=image, return_tensors="pt").pixel_values


@pytest.mark.parametrize("name", ["clip-vision", "vit", "open_clip", "timm"])
def test_mining_uses_the_backends_own_preprocessing(tiny, photos, name):
    _, spec = tiny[name]
    model = clipviz.load(spec)
    result = mine_examples(
        model, HOOK, open_source(str(photos[0].parent)), top_k=2, batch=2, progress=False, keep_activations=True
    )
    layout = model.hook_layout(HOOK)
    for row, index in enumerate(result.activation_indices.tolist()):
        image = Image.open(photos[index]).convert("RGB")
        own = _own_input(name, model, spec, image)
        # the same input tensor as the library's own pipeline, to float precision
        torch.testing.assert_close(model.prepare(model.preprocess_pil(image)[None]), own, rtol=0, atol=2e-5)
        block = model.blocks[1]
        seen: list[torch.Tensor] = []
        module = block.act if block.act is not None else block.fc2
        handle = module.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o))
        try:
            with torch.no_grad():
                model.backend.forward(own)
        finally:
            handle.remove()
        expected = seen[0][:, layout.patches].float().mean(1)[0]
        torch.testing.assert_close(result.activations[row].float(), expected, rtol=2e-3, atol=2e-3)


def test_a_non_square_photo_is_cropped_not_stretched(tiny, photos):
    _, spec = tiny["clip-vision"]
    model = clipviz.load(spec)
    wide = Image.fromarray(
        np.concatenate(
            [np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8), np.zeros((64, 64, 3), np.uint8)],
            axis=1,
        )
    )  # black | white | black
    x = model.preprocess_pil(wide)
    assert x.shape == (3, *model.image_size)
    assert float(x.min()) > 0.5  # the centre crop keeps only the white middle; a stretch would keep the black


def test_a_transformers_model_runs_at_its_processors_size_not_its_configs(tmp_path):
    """DINOv2's configs say 518 while their processors crop 224: clipviz feeds what the library's pipeline feeds
    (here config 64, crop 32), not an up-sampled crop."""
    import transformers as T

    directory = tmp_path / "dinov2"
    config = T.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8)
    torch.manual_seed(0)
    T.Dinov2Model(config).eval().save_pretrained(directory)
    crop = {"height": 32, "width": 32}
    T.BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop).save_pretrained(directory)
    model = clipviz.load(f"hf:{directory}")
    assert tuple(model.image_size) == (32, 32) and model.layout(0).grid == (4, 4)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8))
    _, cache = model.run_with_cache(model.preprocess_pil(photo)[None], ["blocks.1.hook_resid_post"])
    with torch.no_grad():
        inputs = T.AutoImageProcessor.from_pretrained(directory)(images=photo, return_tensors="pt")
        native = model.native(**inputs, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], native, rtol=1e-4, atol=1e-5)


def test_a_crop_size_the_processor_does_not_apply_is_not_the_input_size(tmp_path):
    """A processor that resizes without cropping (``do_center_crop=False``) still carries a default ``crop_size``;
    the model runs at what the processor outputs (here its 48-px resize), not at that crop."""
    import transformers as T

    directory = tmp_path / "vit"
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=48, patch_size=8)
    T.ViTModel(config).eval().save_pretrained(directory)
    T.CLIPImageProcessor(
        do_center_crop=False, size={"height": 48, "width": 48}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(directory)
    model = clipviz.load(f"hf:{directory}")
    assert tuple(model.image_size) == (48, 48) and model.layout(0).grid == (6, 6)
    photo = Image.fromarray(np.zeros((30, 70, 3), dtype=np.uint8))
    assert tuple(model.preprocess_pil(photo).shape) == (3, 48, 48)


@pytest.mark.parametrize(
    "processor",
    [
        {"kind": "CLIPImageProcessor", "size": {"shortest_edge": 32}, "do_center_crop": False},
        {"kind": "DPTImageProcessor", "size": {"height": 32, "width": 32}, "keep_aspect_ratio": True},
        {"kind": "ViTImageProcessor", "size": {"height": 32, "width": 32}},
    ],
    ids=["shortest-edge-no-crop", "dpt-keep-aspect-ratio", "vit-fixed-resize"],
)
def test_a_processor_that_keeps_the_aspect_ratio_is_centre_cropped_not_stretched(tmp_path, processor):
    """Where the processor's output follows the photo's shape, clipviz runs at its fixed size by centre-cropping
    that output (and says so), never by stretching it: a photo whose left and right thirds are black and whose
    middle third is white comes out white (a stretch would keep the black sides)."""
    import transformers as T

    directory = tmp_path / "vit"
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    T.ViTModel(config).eval().save_pretrained(directory)
    options = dict(processor)
    getattr(T, options.pop("kind"))(**options).save_pretrained(directory)
    model = clipviz.load(f"hf:{directory}")
    assert tuple(model.image_size) == (32, 32)
    assert any("aspect ratio" in note for note in model.summary()["notes"])
    photo = np.zeros((64, 192, 3), dtype=np.uint8)
    photo[:, 64:128] = 255
    x = model.preprocess_pil(Image.fromarray(photo))
    assert tuple(x.shape) == (3, 32, 32)
    assert x.min() > 0.9, "the black sides of the photo were kept: it was stretched, not cropped"


def test_a_processor_that_needs_more_than_a_photo_is_replaced_and_said(tmp_path):
    """ViTPose's processor needs person boxes: clipviz resizes and centre-crops photos itself, and says so."""
    import transformers as T

    directory = tmp_path / "vitpose"
    backbone = T.VitPoseBackboneConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=[64, 48], patch_size=[8, 8]
    )
    T.VitPoseForPoseEstimation(T.VitPoseConfig(backbone_config=backbone)).eval().save_pretrained(directory)
    T.VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(directory)
    model = clipviz.load(f"hf:{directory}")
    notes = model.summary()["notes"]
    assert any("cannot preprocess a photo alone" in n for n in notes) and any("backbone alone" in n for n in notes)
    photo = np.zeros((100, 300, 3), dtype=np.uint8)
    photo[:, 100:200] = 255
    x = model.preprocess_pil(Image.fromarray(photo))
    assert tuple(x.shape) == (3, 64, 48) and x.min() > 0.9


def test_tensors_of_another_aspect_ratio_are_refused_not_stretched(tiny):
    """``prepare`` resizes tensors of the model's aspect ratio and refuses any other shape: never a stretch."""
    from clipviz.errors import ClipvizError

    model = clipviz.load(tiny["clip"][1])
    h, w = model.image_size
    x = torch.rand(1, 3, h, w)
    assert model.prepare(x.repeat_interleave(2, 2).repeat_interleave(2, 3)).shape == x.shape
    with pytest.raises(ClipvizError, match="would stretch them"):
        model.prepare(torch.rand(1, 3, h, 2 * w))


def test_a_tiling_processor_gives_the_whole_photo_never_one_tile(tmp_path):
    """GOT-OCR2's processor (Aya Vision, InternVL) splits a photo into tiles plus a thumbnail: clipviz turns the
    tiling off and sees the whole photo. LLaVA-OneVision's any-resolution grid cannot be turned off: clipviz resizes
    and centre-crops the photo itself and says so; it never takes one of the crops."""
    import transformers as T

    photo = np.zeros((40, 80, 3), dtype=np.uint8)
    photo[:, 40:] = 255  # left half black, right half white: any tile is all one colour, the whole photo is half
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    processors = {
        "tiles": T.GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, max_patches=4),
        "anyres": T.LlavaOnevisionImageProcessor(
            size={"height": 32, "width": 32}, image_grid_pinpoints=[[32, 32], [32, 64], [64, 64]]
        ),
    }
    for name, processor in processors.items():
        directory = tmp_path / name
        T.ViTModel(config).eval().save_pretrained(directory)
        processor.save_pretrained(directory)
        model = clipviz.load(f"hf:{directory}")
        x = model.preprocess_pil(Image.fromarray(photo))
        assert tuple(x.shape) == (3, 32, 32), name
        assert abs(float(x.mean()) - 0.5) < 0.05, f"{name}: not the whole photo (mean {float(x.mean()):.2f})"
        notes = model.summary()["notes"] or []
        assert (name == "anyres") == any("pixel values" in n for n in notes), (name, notes)


def test_a_transparent_photo_is_flattened_as_the_library_does(tiny, tmp_path):
    """transformers' processors composite transparent pixels on white; clipviz's reading of a folder keeps the
    alpha channel to the model's preprocessing, so the tensors equal the processor's own."""
    from transformers import CLIPImageProcessor

    _, spec = tiny["clip"]
    model = clipviz.load(spec)
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 30:, 3] = 255  # the left half transparent (black underneath), the right half opaque red
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rgba, "RGBA").save(folder / "clear.png")
    ((_, image, _),) = list(open_source(str(folder)))
    ours = model.prepare(model.preprocess_pil(image)[None])
    theirs = CLIPImageProcessor.from_pretrained(spec[3:])(images=Image.open(folder / "clear.png"), return_tensors="pt")
    torch.testing.assert_close(ours, theirs["pixel_values"], rtol=1e-4, atol=1e-4)


def test_timm_border_padding_is_the_mean_colour_as_in_timm(tmp_path):
    """timm's ``crop_mode="border"`` (DeepSeek's ViTs) pads a non-square photo with the mean colour: clipviz's
    preprocessing equals timm's own transform, padding included."""
    from families import _timm
    from timm.data import create_transform, resolve_data_config

    spec = _timm("deepseek_vit_412m", img_size=42, patch_size=7, embed_dim=32, depth=1, num_heads=2)(tmp_path / "m")
    model = clipviz.load(spec)
    config = resolve_data_config(model=model.native)
    assert config["crop_mode"] == "border"
    photo = Image.fromarray(np.full((45, 70, 3), 200, dtype=np.uint8))
    ours = model.prepare(model.preprocess_pil(photo)[None])[0]
    torch.testing.assert_close(ours, create_transform(**config)(photo), rtol=1e-4, atol=1e-4)


def test_a_16_bit_photo_is_scaled_to_8_bits_and_images_of_unknown_range_are_refused(tmp_path):
    """PIL's convert clips a 16-bit image at 255 (a grey ramp becomes almost all white): clipviz scales it, the
    way the file means it; a 32-bit integer or floating-point image has no agreed range and is refused, never
    guessed: skipped (as unreadable) in a folder, refused by name as a seed image."""
    from clipviz.errors import ClipvizError
    from clipviz.visualization.guidance import _seed_image

    folder = tmp_path / "photos"
    folder.mkdir()
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "a_ramp16.png")
    Image.fromarray(ramp.astype(np.float32) / 65535).save(folder / "b_float.tiff")
    with Image.open(folder / "a_ramp16.png") as opened:
        assert opened.mode.startswith("I;16")  # what the test is about: PIL opens it as 16-bit
    items = list(open_source(str(folder)))
    assert [i for i, img, _ in items if img is None] == [1]
    grey = np.asarray(items[0][1])[..., 0].astype(float)
    assert np.abs(grey - ramp / 257.0).max() <= 0.5 and (grey == 255).mean() < 0.01
    model = clipviz.load("world-clip")
    with pytest.raises(ClipvizError, match="floating-point image .* no agreed value range"):
        _seed_image(model, folder / "b_float.tiff")
    seed = _seed_image(model, folder / "a_ramp16.png")
    assert abs(float(seed.mean()) - 0.5) < 0.02  # the ramp's mean grey, not white


# ------------------------------------------------------------------ found by an outside audit (2026-12-02)
def _vit_dir(directory: Path, processor, image_size: int = 32) -> str:
    import transformers as T

    config = T.ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=8
    )
    torch.manual_seed(0)
    T.ViTModel(config).eval().save_pretrained(directory)
    processor.save_pretrained(directory)
    return f"hf:{directory}"


def _native_input(directory: Path, photo: Image.Image) -> torch.Tensor:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(directory)(images=photo, return_tensors="pt").pixel_values


def _photo(height: int = 40, width: int = 70, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_a_timm_model_through_transformers_is_fed_as_its_repo_says(tmp_path):
    """A TimmWrapper repo's saved ``pretrained_cfg`` (mean, std, crop) is what its processor applies; the timm
    registry entry of the architecture (mean 0.5, crop 0.9 here) is not. clipviz's input equals the processor's."""
    import transformers as T

    pretrained = {"input_size": [3, 32, 32], "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "crop_pct": 0.5,
                  "interpolation": "bilinear", "crop_mode": "center"}  # fmt: skip
    config = T.TimmWrapperConfig(
        architecture="vit_tiny_patch16_224",
        model_args=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2),
        pretrained_cfg=pretrained,
    )
    T.TimmWrapperModel(config).eval().save_pretrained(tmp_path / "wrapped")
    model = clipviz.load(f"hf:{tmp_path / 'wrapped'}")
    photo = _photo(50, 50)
    ours = model.prepare(model.preprocess_pil(photo)[None])
    torch.testing.assert_close(ours, _native_input(tmp_path / "wrapped", photo), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        dict(rescale_factor=2 / 255, image_mean=[1.0] * 3, image_std=[1.0] * 3),  # pixels to [-1, 1] by rescaling
        dict(do_rescale=False, image_mean=[123.7, 116.3, 103.5], image_std=[58.4, 57.1, 57.4]),  # 0-255 statistics
        dict(image_mean=0.25, image_std=0.75),  # one value for every channel, as transformers accepts
    ],
    ids=["rescale-2/255", "no-rescale", "scalar-statistics"],
)
def test_the_processors_rescale_and_statistics_are_the_models_input(tmp_path, options):
    """The processor's ``rescale_factor`` / ``do_rescale`` and scalar statistics are part of what the model sees:
    [0, 1] tensors and photos both reach it as the processor's own pixel values."""
    from transformers import ViTImageProcessor

    spec = _vit_dir(tmp_path / "vit", ViTImageProcessor(size={"height": 32, "width": 32}, **options))
    model = clipviz.load(spec)
    photo = _photo(32, 32)
    native = _native_input(tmp_path / "vit", photo)
    torch.testing.assert_close(model.prepare(model.preprocess_pil(photo)[None]), native, rtol=1e-4, atol=1e-4)
    pixels = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    torch.testing.assert_close(model.prepare(pixels), native, rtol=1e-4, atol=1e-4)


def test_a_processor_that_keeps_the_aspect_of_a_non_square_model_is_fitted_whatever_the_photo(tmp_path):
    """A 32x48 model with a shortest-edge processor: a 3:2 photo comes out at the model's size by chance, others do
    not; every photo must come out at 32x48 with the aspect-ratio note, never a stretch note."""
    import transformers as T

    directory = tmp_path / "vit"
    config = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=[32, 48], patch_size=8)
    T.ViTModel(config).eval().save_pretrained(directory)
    T.CLIPImageProcessor(size={"shortest_edge": 32}, do_center_crop=False).save_pretrained(directory)
    model = clipviz.load(f"hf:{directory}")
    notes = model.summary()["notes"]
    assert any("aspect ratio" in n for n in notes) and not any("stretch" in n for n in notes), notes
    for height, width in ((7, 5), (50, 50), (1000, 667), (96, 144)):
        assert tuple(model.preprocess_pil(_photo(height, width)).shape) == (3, 32, 48)


def test_the_model_runs_at_what_its_processor_produces_not_at_a_crop_it_never_applies(tmp_path):
    """ViT's processor has no centre crop: a ``crop_size`` left in its config is not its output."""
    import json

    from transformers import ViTImageProcessor

    spec = _vit_dir(tmp_path / "vit", ViTImageProcessor(size={"height": 48, "width": 48}), image_size=48)
    path = tmp_path / "vit" / "preprocessor_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "crop_size": {"height": 32, "width": 32}}))
    model = clipviz.load(spec)
    assert tuple(model.image_size) == (48, 48)
    photo = _photo(48, 48)
    torch.testing.assert_close(
        model.prepare(model.preprocess_pil(photo)[None]), _native_input(tmp_path / "vit", photo), rtol=1e-4, atol=1e-4
    )


def _squashing(kind: str, directory: Path) -> str:
    from families import _open_clip, _timm

    if kind == "open_clip":
        spec = _open_clip(dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16))(directory)
        path = directory / "open_clip_config.json"
        config = json.loads(path.read_text())
        config["preprocess_cfg"]["resize_mode"] = "squash"
        path.write_text(json.dumps(config))
        return spec
    spec = _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)(directory)
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config["pretrained_cfg"].update(crop_mode="squash", crop_pct=0.8)
    path.write_text(json.dumps(config))
    return spec


@pytest.mark.parametrize("kind", ["open_clip", "timm"])
def test_a_library_that_squashes_photos_gets_them_centre_cropped_as_transformers_does(tmp_path, kind):
    """open_clip's ``resize_mode="squash"`` and timm's ``crop_mode="squash"`` stretch a photo to the model's shape;
    clipviz centre-crops it to the model's aspect ratio first (as it does for transformers' SigLIP processor), and
    says so: black sides around a white middle third must not be kept."""
    model = clipviz.load(_squashing(kind, tmp_path / kind))
    assert any("stretch" in note for note in model.summary()["notes"])
    photo = np.zeros((64, 192, 3), dtype=np.uint8)
    photo[:, 64:128] = 255
    assert model.preprocess_pil(Image.fromarray(photo)).min() > 0.9


def test_open_clip_flattens_transparency_after_its_resize_as_open_clip_does(tmp_path):
    """open_clip resizes an RGBA photo and then drops its alpha: clipviz hands its transform the image as read."""
    import open_clip
    from families import _open_clip

    spec = _open_clip(dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16))(tmp_path / "oc")
    model = clipviz.load(spec)
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1] = 200, 50
    rgba[:, 30:, 3] = 255  # the left half transparent (its colour hidden), the right half opaque
    (tmp_path / "photos").mkdir()
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photos" / "clear.png")
    ((_, image, _),) = list(open_source(str(tmp_path / "photos")))
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    theirs = preprocess(Image.open(tmp_path / "photos" / "clear.png"))[None]
    torch.testing.assert_close(model.prepare(model.preprocess_pil(image)[None]), theirs, rtol=1e-4, atol=1e-4)


def test_a_photo_is_read_upright_from_a_folder_as_from_a_dataset(tmp_path):
    """A JPEG whose EXIF says "rotate 90" (as phones save them) is read upright, as ``datasets``, transformers'
    ``load_image`` and image viewers show it, so one photo gives one answer from a folder or a dataset."""
    import datasets

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    (tmp_path / "photos").mkdir()
    _photo(40, 80).save(tmp_path / "photos" / "phone.jpg", exif=exif)
    ((_, from_folder, _),) = list(open_source(str(tmp_path / "photos")))
    assert from_folder.size == (40, 80)  # width 40, height 80: upright
    features = datasets.Features({"image": datasets.Image()})
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [str(tmp_path / "photos" / "phone.jpg")]}, features=features).save_to_disk(
        saved
    )
    ((_, from_dataset, _),) = list(open_source(str(saved)))
    assert np.array_equal(np.asarray(from_folder), np.asarray(from_dataset))


def test_a_damaged_row_of_a_dataset_is_skipped_and_a_column_of_text_is_refused(tmp_path):
    """Like a damaged file in a folder, a damaged image in a dataset comes out as None (skipped and counted), not a
    traceback from inside ``datasets``; a column that holds no images is refused in one line."""
    import io

    import datasets

    from clipviz.errors import ClipvizError

    good = io.BytesIO()
    _photo().save(good, format="PNG")
    rows = [{"bytes": good.getvalue(), "path": None}, {"bytes": b"\x89PNG not really", "path": None}]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": rows, "caption": ["good", "bad"]}, features=features).save_to_disk(saved)
    read = [(i, image is not None) for i, image, _ in open_source(str(saved))]
    assert read == [(0, True), (1, False)]
    with pytest.raises(ClipvizError, match="column 'caption' .* not images; its image columns: image") as refused:
        open_source(str(saved), image_column="caption")
    assert "\n" not in str(refused.value)


def test_tiny_tensors_are_not_stretched_and_preprocess_pil_takes_only_images(tiny):
    from clipviz.errors import ClipvizError

    model = clipviz.load(tiny["clip"][1])
    for height, width in ((1, 2), (4, 5), (8, 9)):
        with pytest.raises(ClipvizError, match="would stretch them"):
            model.prepare(torch.rand(1, 3, height, width))
    h, w = model.image_size
    assert model.prepare(torch.rand(1, 3, 4 * h, 4 * w + 1)).shape[-2:] == (h, w)  # a pixel's rounding of a big image
    for wrong in ("photo.png", np.zeros((8, 8, 3), dtype=np.uint8), torch.rand(3, 8, 8), None):
        with pytest.raises(ClipvizError, match="preprocess_pil takes a PIL image"):
            model.preprocess_pil(wrong)


def test_a_probe_set_goes_through_the_models_own_preprocessing_masks_alike(tmp_path):
    """``analyze``'s probe images are what ``preprocess_pil`` makes of them (here a DINOv2-style resize to 36 and a
    32-px crop), and a dataset's masks go through the same resize and crop, so they stay on their objects."""
    import datasets
    import transformers as T

    from clipviz.analysis.studies import load_probe

    spec = _vit_dir(
        tmp_path / "vit", T.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
    )
    model = clipviz.load(spec)
    square = np.zeros((60, 90, 3), dtype=np.uint8)
    square[10:40, 50:80] = 255  # a white square off centre, and its mask
    photos, masks = (
        [Image.fromarray(square), _photo(60, 90)],
        [Image.fromarray(square[..., 0]), Image.fromarray(square[..., 0])],
    )
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    datasets.Dataset.from_dict({"image": photos, "mask": masks}, features=features).save_to_disk(tmp_path / "saved")
    probe = load_probe(
        str(tmp_path / "saved"), model.image_size, 2, mask_column="mask", preprocess=model.preprocess_pil
    )
    for image, photo in zip(probe.images, photos, strict=True):
        torch.testing.assert_close(image, model.preprocess_pil(photo))
    assert torch.equal(probe.masks[0], model.preprocess_pil(photos[0]).mean(0) > 0.5)
    assert probe.masks[0].any() and not probe.masks[0].all()


def test_a_folder_lists_every_image_format_pil_reads_and_counts_a_broken_link_as_unreadable(tmp_path):
    import os

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.ppm")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.jfif", format="JPEG")
    os.symlink(tmp_path / "gone.png", tmp_path / "d.png")
    source = open_source(str(tmp_path))
    assert source.describe == ["a.png", "b.ppm", "c.jfif", "d.png"]
    assert [image is not None for _, image, _ in source] == [True, True, True, False]


def test_a_folder_follows_linked_sub_folders_once(tmp_path):
    """Found from outside: images in a linked sub-folder (a common way to gather a dataset) were not listed; a link
    back up the tree must not list anything twice or loop."""
    shared = tmp_path / "elsewhere"
    shared.mkdir()
    Image.new("RGB", (8, 8), "red").save(shared / "cat.png")
    top = tmp_path / "data"
    (top / "own").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(top / "own" / "dog.png")
    (top / "linked").symlink_to(shared)
    (top / "own" / "up").symlink_to(top)
    source = open_source(str(top))
    assert source.describe == ["linked/cat.png", "own/dog.png"]
    assert [image.getpixel((0, 0)) for _, image, _ in source] == [(255, 0, 0), (0, 0, 255)]


def test_a_saved_datasets_missing_caption_column_or_split_is_refused_not_ignored(tmp_path):
    import datasets

    from clipviz.errors import ClipvizError

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [_photo()], "caption": ["a photo"]}, features=features).save_to_disk(saved)
    assert [c for _, _, c in open_source(str(saved))] == ["a photo"]
    for options, message in (
        ({"caption_column": "nope"}, "no caption column 'nope'"),
        ({"split": "validation"}, "saved without splits"),
    ):
        with pytest.raises(ClipvizError, match=message):
            open_source(str(saved), **options)
