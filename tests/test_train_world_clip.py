"""The training script's speed-ups compute the same model: same outputs, same gradients, same saved keys."""

from __future__ import annotations

import copy

import numpy as np
import open_clip
import pytest
import torch
from script_loader import loaded_script

from clipviz import world


@pytest.fixture(scope="module")
def train():
    with loaded_script("train_world_clip") as module:
        yield module


@pytest.fixture(scope="module")
def batch():
    b = world.generate(24, seed=5)
    tokenizer = open_clip.SimpleTokenizer(context_length=24)
    images = (torch.from_numpy(b.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    return images, tokenizer(b.captions), tokenizer


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Equal up to float32 rounding, relative to the tensor's largest entry (gradients span many scales)."""
    err = (actual - expected).abs().max().item()
    assert err <= 2e-5 * expected.abs().max().item() + 1e-7, (name, err, expected.abs().max().item())


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_batched_attention_matches_multihead_attention(train, batch):
    images, tokens, _ = batch
    torch.manual_seed(0)
    native = open_clip.CLIP(**train.MODEL_CFG)
    fast = copy.deepcopy(native)
    train.use_batched_attention(fast)
    assert list(fast.state_dict()) == list(native.state_dict())  # saved checkpoints are unchanged
    assert type(fast.transformer.resblocks[0].attn).__name__ == "BatchedSelfAttention"
    for model in (native, fast):  # image tower (no mask) and text tower (causal mask)
        (model.encode_image(images).square().sum() + model.encode_text(tokens).square().sum()).backward()
    torch.testing.assert_close(fast.encode_image(images), native.encode_image(images), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(fast.encode_text(tokens), native.encode_text(tokens), atol=2e-5, rtol=1e-4)
    g_native, g_fast = _grads(native), _grads(fast)
    assert g_native.keys() == g_fast.keys()
    for name, grad in g_native.items():
        _assert_close(g_fast[name], grad, name)


def test_text_on_used_positions_and_rows_gives_the_native_embeddings_and_gradients(train, batch):
    _, tokens, tokenizer = batch
    lengths = tokens.argmax(-1) + 1
    assert lengths.max() < tokens.shape[1] and lengths.min() < lengths.max()  # there is padding to skip
    torch.manual_seed(0)
    native = open_clip.CLIP(**train.MODEL_CFG)
    fast = copy.deepcopy(native)
    embed = train.UsedRowsEmbedding.for_world(fast.token_embedding, tokenizer)
    assert 60 <= len(embed.rows) < 200  # the world's words, not the 49,408-row vocabulary
    fast.token_embedding.requires_grad_(False)

    out = train.encode_text_used(fast, tokens, embed, buckets=3)
    ref = native.encode_text(tokens)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    weights = torch.randn_like(ref)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()

    full_grad = native.token_embedding.weight.grad
    unused = torch.ones(len(full_grad), dtype=torch.bool)
    unused[embed.rows] = False
    assert full_grad[unused].abs().max() == 0  # why the unused rows need no optimizer state
    _assert_close(embed.weight.grad, full_grad[embed.rows])
    for name, grad in _grads(native).items():
        if name != "token_embedding.weight":
            _assert_close(_grads(fast)[name], grad, name)

    with torch.no_grad():
        embed.weight.add_(1.0)
    embed.write_back()
    trained = fast.token_embedding.weight.detach()
    assert torch.equal(trained[embed.rows], embed.weight.detach())
    assert not torch.equal(trained[embed.rows], native.token_embedding.weight.detach()[embed.rows])
    assert torch.equal(trained[unused], native.token_embedding.weight.detach()[unused])


def test_a_token_outside_the_world_vocabulary_is_refused(train, batch):
    _, _, tokenizer = batch
    embed = train.UsedRowsEmbedding.for_world(torch.nn.Embedding(49408, 8), tokenizer)
    known = tokenizer(["a red circle"])
    assert embed(known).shape == (1, 24, 8)
    with pytest.raises(ValueError, match="outside world.vocabulary"):
        embed(tokenizer(["a red zebra"]))


def test_adversarial_images_stay_in_the_ball_and_climb_a_linear_loss_almost_by_the_radius(train):
    pixels = torch.full((3, 3, 16, 16), 0.5)
    w = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    radius = 1.0

    def loss_of(images: torch.Tensor) -> torch.Tensor:
        return (images * w).sum()

    adv = train.l2_adversarial(pixels, loss_of, radius, generator=torch.Generator().manual_seed(1))
    dist = (adv - pixels).flatten(1).norm(dim=1)
    assert torch.all(dist <= radius + 1e-5) and torch.all(dist >= 0.99 * radius)
    assert adv.min() >= 0 and adv.max() <= 1
    # gradient step of length r after a random start of length r/2, projected back: r / sqrt(1 + 1/4) along w
    gain = ((adv - pixels) * w).flatten(1).sum(1) / w.norm()
    assert torch.all(gain > 0.85 * radius) and torch.all(gain < radius)
    clean_grad_step = train.l2_adversarial(pixels, lambda x: -loss_of(x), radius, torch.Generator().manual_seed(1))
    assert torch.all(((clean_grad_step - pixels) * w).flatten(1).sum(1) < 0)  # it follows the loss it is given


def test_a_larger_world_clip_is_trained_and_measured_at_its_own_resolution(train, tmp_path, monkeypatch, capsys):
    """``--image-size`` renders the world at the tower's input size, and the ground-truth tools render it there
    too (no 64-px images resized without a word)."""
    import clipviz
    from clipviz.world.groundtruth import world_images, world_size, zero_shot_accuracy

    assert train.configs(64, 4, 128) == (train.MODEL_CFG, train.PREPROCESS_CFG)  # the defaults are the shipped model
    for bad in ((60, 4, 128), (0, 4, 128), (64, 4, 0), (64, 0, 128)):
        with pytest.raises(ValueError, match="multiple of 8"):
            train.configs(*bad)
    out = tmp_path / "wc96"
    argv = ["train_world_clip.py", "--out", str(out), "--steps", "1", "--batch", "8", "--warmup", "1"]
    argv += ["--image-size", "96", "--vision-layers", "2", "--vision-width", "64", "--workers", "0", "--threads", "1"]
    monkeypatch.setattr("sys.argv", argv)
    train.main()
    again = ["train_world_clip.py", "--out", str(tmp_path / "again"), "--steps", "1", "--init-from", str(out)]
    monkeypatch.setattr("sys.argv", again)
    with pytest.raises(SystemExit):  # a 64-px tower (the default) cannot start from the 96-px one
        train.main()
    assert "has an image tower of 2 blocks of 64 at 96 px" in capsys.readouterr().err
    model = clipviz.load(str(out))
    assert tuple(model.image_size) == (96, 96) and model.n_blocks == 2 and world_size(model) == 96
    images, _ = world_images(4, seed=3, size=world_size(model))
    assert images.shape == (4, 3, 96, 96)
    assert torch.equal(images, torch.from_numpy(world.generate(4, seed=3, size=96).images).permute(0, 3, 1, 2) / 255)
    from clipviz.world import groundtruth

    sizes = []

    def recorded(*args, **kwargs):
        sizes.append(kwargs.get("size"))
        return world_images(*args, **kwargs)

    monkeypatch.setattr(groundtruth, "world_images", recorded)
    assert set(zero_shot_accuracy(model, n=16)) >= {"colour", "shape", "position"}
    groundtruth.selectivity(model, n=16)
    assert sizes == [96, 96]
    # bundled, it guides its visualizations and sweeps with its world drawn at 96 px: the same scenes, not resized
    from clipviz.plugins import Registry
    from clipviz.world import plugin

    monkeypatch.setattr(plugin, "MODELS", tmp_path)
    bundled = Registry()
    plugin.register(bundled)
    assert bundled.guides["wc96"] == bundled.datasets["wc96"] == "world:2000@96"
    _, image, caption = next(iter(bundled.sources["world"]("3@96").items()))
    drawn = world.generate(3, seed=plugin.source_seed(), size=96)
    assert image.size == (96, 96) and (torch.tensor(np.asarray(image)) == torch.from_numpy(drawn.images[0])).all()
    assert caption == drawn.captions[0]
    at_64 = world.generate(3, seed=plugin.source_seed()).factors
    assert all((drawn.factors[family] == at_64[family]).all() for family in world.FACTORS)  # the same scenes
