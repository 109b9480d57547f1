"""Loading: spec resolution, preprocessing inside the model, CLIP image/text embeddings, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import clipviz
from clipviz.apps.cli import main as cli_main
from clipviz.errors import ClipvizError

torch.manual_seed(1)
IMAGES = torch.rand(3, 3, 32, 32)


def test_spec_resolution_rules(tiny, tmp_path):
    _, hf_spec = tiny["clip"]
    hf_dir = hf_spec[3:]
    assert clipviz.resolve_spec(hf_spec) == ("hf", hf_dir)
    assert clipviz.resolve_spec(hf_dir) == ("hf", hf_dir)  # bare directory: by its files
    assert clipviz.resolve_spec(tiny["open_clip"][1])[0] == "open_clip"
    assert clipviz.resolve_spec(tiny["timm"][1])[0] == "timm"
    assert clipviz.resolve_spec("openai/clip-vit-base-patch32") == ("hf", "openai/clip-vit-base-patch32")
    assert clipviz.resolve_spec("hf-hub:timm/ViT-B-16-SigLIP") == ("open_clip", "hf-hub:timm/ViT-B-16-SigLIP")
    assert clipviz.resolve_spec("ViT-B-32/openai") == ("open_clip", "ViT-B-32/openai")
    assert clipviz.resolve_spec("vit_base_patch16_224") == ("timm", "vit_base_patch16_224")
    assert clipviz.resolve_spec("open_clip:ViT-B-16/laion2b_s34b_b88k") == ("open_clip", "ViT-B-16/laion2b_s34b_b88k")
    with pytest.raises(ClipvizError, match="cannot tell which library saved"):
        clipviz.resolve_spec(str(tmp_path))
    with pytest.raises(ClipvizError, match="^unknown model 'no-such-model'; accepted: hf:"):
        clipviz.resolve_spec("no-such-model")


def test_preprocessing_matches_the_image_processor(tiny):
    from transformers import CLIPImageProcessor

    _, spec = tiny["clip"]
    model = clipviz.load(spec)
    processor = CLIPImageProcessor.from_pretrained(spec[3:])
    ref = processor(
        images=[img.permute(1, 2, 0).numpy() for img in IMAGES],
        do_rescale=False,
        do_resize=False,
        do_center_crop=False,
        return_tensors="pt",
    )["pixel_values"]
    torch.testing.assert_close(model.prepare(IMAGES), ref)
    # Other sizes of the same shape are resized to the model's own, other shapes refused; one channel is repeated.
    assert model.prepare(torch.rand(1, 3, 64, 64)).shape == (1, 3, 32, 32)
    with pytest.raises(ClipvizError, match="would stretch them"):
        model.prepare(torch.rand(1, 3, 50, 40))
    gray = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model.prepare(gray), model.prepare(gray.expand(-1, 3, -1, -1)))
    with pytest.raises(ClipvizError, match=r"images must be a \(B, 3, H, W\) tensor"):
        model.prepare(torch.rand(1, 4, 32, 32))


def test_hf_clip_image_and_text_embeddings_match_the_backend(tiny):
    from transformers import CLIPImageProcessor, CLIPTokenizer

    _, spec = tiny["clip"]
    model = clipviz.load(spec)
    assert model.is_clip
    native = model.native
    pixels = CLIPImageProcessor.from_pretrained(spec[3:])(
        images=[img.permute(1, 2, 0).numpy() for img in IMAGES],
        do_rescale=False,
        do_resize=False,
        do_center_crop=False,
        return_tensors="pt",
    )["pixel_values"]
    with torch.no_grad():
        expected = native.visual_projection(native.vision_model(pixel_values=pixels).pooler_output)
        got = model.encode_image(IMAGES)
    torch.testing.assert_close(got, expected)
    texts = ["a red circle", "two blue striped squares on the left"]
    tokenizer = CLIPTokenizer.from_pretrained(spec[3:])
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_text = native.text_projection(native.text_model(**tokens).pooler_output)
        got_text = model.encode_text(texts)
    torch.testing.assert_close(got_text, expected_text)
    # The tokenizer is the real CLIP BPE: the same ids as open_clip's offline tokenizer.
    import open_clip

    oc_ids = open_clip.SimpleTokenizer()(texts[1:])[0]
    n = int((oc_ids != 0).sum())
    assert tokens["input_ids"][1, :n].tolist() == oc_ids[:n].tolist()


def test_open_clip_image_and_text_embeddings_match_the_backend(tiny):
    import open_clip

    _, spec = tiny["open_clip"]
    model = clipviz.load(spec)
    assert model.backend.mean == (0.3, 0.4, 0.5) and model.backend.std == (0.2, 0.3, 0.4)
    native, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{spec}")
    native.eval()
    mean = torch.tensor([0.3, 0.4, 0.5]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(IMAGES), native.encode_image((IMAGES - mean) / std))
        tokens = open_clip.get_tokenizer(f"local-dir:{spec}")(["a dog", "a photo of a cat"])
        torch.testing.assert_close(model.encode_text(["a dog", "a photo of a cat"]), native.encode_text(tokens))
    # The image embedding is ln_post(CLS) @ proj: the projection clipviz exposes for the direct lens.
    _, cache = model.run_with_cache(IMAGES, [f"blocks.{model.n_blocks - 1}.hook_resid_post"])
    proj = model.backend.projection
    cls = cache[f"blocks.{model.n_blocks - 1}.hook_resid_post"][:, proj.pooled_token]
    torch.testing.assert_close(proj.final_norm(cls) @ proj.matrix().T, model.encode_image(IMAGES))


def test_non_clip_model_refuses_text(tiny):
    model = clipviz.load(tiny["vit"][1])
    assert not model.is_clip
    with pytest.raises(ClipvizError, match="has no text tower"):
        model.encode_text(["a dog"])


def test_clip_without_tokenizer_files_has_no_text_tower(tmp_path):
    import transformers as T

    cfg = T.CLIPConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        projection_dim=16,
    )
    T.CLIPModel(cfg).save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no image processor config"):
        model = clipviz.load(f"hf:{tmp_path}")
    assert model.backend.text is None and not model.is_clip


def test_weights_are_frozen_and_model_is_in_eval_mode(tiny):
    model = clipviz.load(tiny["clip"][1])
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.native.training
    # Gradients still flow to the input image (what feature visualization needs).
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    _, cache = model.run_with_cache(images, ["blocks.1.mlp.hook_post"], detach=False)
    cache["blocks.1.mlp.hook_post"][0, 1:, 5].mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def _cli(capsys, *argv):
    code = cli_main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_info_prints_summary_and_hooks(tiny, capsys):
    code, out, err = _cli(capsys, "info", tiny["dinov2-registers"][1])
    assert code == 0, err
    assert "prefix_tokens" in out and "'register', 'register', 'register', 'register'" in out
    assert "blocks.<i>.mlp.hook_post" in out and "encoder.layer.0.mlp.activation_fn" in out
    code, out, _ = _cli(capsys, "info", tiny["timm"][1], "--json")
    data = json.loads(out)
    assert data["backend"] == "timm" and data["n_blocks"] == 3 and "blocks.2.mlp.hook_post" in data["hooks"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("no-such-model", "clipviz: error: unknown model 'no-such-model'; accepted: hf:<hub id or dir>"),
        ("hf:", "clipviz: error: model spec 'hf:' names no model after 'hf:'"),
        ("open_clip:ViT-B-3", "clipviz: error: unknown open_clip model 'ViT-B-3'; did you mean"),
        ("timm:vit_nope", "clipviz: error: unknown timm model 'vit_nope'"),
        (
            "hf:clipviz-test/does-not-exist",
            "clipviz: error: model 'hf:clipviz-test/does-not-exist' is not in the local cache and the Hugging Face Hub "
            "cannot be reached (offline)",
        ),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(spec, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    code, out, err = _cli(capsys, "info", spec)
    assert code == 2
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_unsupported_architecture(tmp_path, capsys):
    import transformers as T

    T.BertModel(
        T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    capsys.readouterr()
    code, _, err = _cli(capsys, "info", str(tmp_path))
    assert code == 2
    assert err.startswith("clipviz: error: unsupported architecture BertModel: no pre-norm transformer blocks found")
    assert err.count("\n") == 1


def test_cli_as_a_process_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "clipviz.cli", "info", "nope/../nowhere"],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("clipviz: error:") and "Traceback" not in proc.stderr


def test_trust_remote_code_is_off_by_default(tiny, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    clipviz.load(tiny["vit"][1])
    assert seen["trust_remote_code"] is False


def test_timm_prefix_and_output(tiny):
    model = clipviz.load(tiny["timm"][1])
    assert model.prefix_tokens == ("cls", "register", "register")
    with torch.no_grad():
        logits = model(IMAGES)
    assert logits.shape == (3, 7) and np.isfinite(logits.numpy()).all()


def test_unavailable_device_is_a_one_line_error(tiny, capsys):
    code = cli_main(["info", tiny["vit"][1], "--device", "cuda:99"])  # no machine here has 100 GPUs
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("clipviz: error: device 'cuda:99' is not available here")
    assert err.count("\n") == 1
