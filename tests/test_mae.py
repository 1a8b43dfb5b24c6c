"""MAE pretraining: masking, the visible-only encoder, the loss, the official export, pictures, data, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RUN_BENCH
from PIL import Image

from backbones import get_spec, load_pretrained
from backbones.vit import VisionTransformer
from benchmarks.common.datasets import DatasetError
from benchmarks.common.image_folder import ImageFolder
from benchmarks.tasks.mae_pretrain.data import pretrain_transform
from benchmarks.tasks.mae_pretrain.export import export, load_full, official_state_dict
from benchmarks.tasks.mae_pretrain.masking import make_masking, num_visible
from benchmarks.tasks.mae_pretrain.model import MaskedAutoencoder, masked_mse, patchify, sincos_pos_embed, unpatchify
from benchmarks.tasks.mae_pretrain.visualize import maskings, save_grid

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 16, "img_size": 64}  # 4x4 patches


def tiny_mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    return MaskedAutoencoder(VisionTransformer(**TINY), decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw)


@pytest.mark.parametrize(
    "strategy, ratio",
    [("random", 0.75), ("random", 0.5), ("random", 0.9), ("block", 0.5), ("block", 0.75), ("grid", 0.75)],
)
def test_masking_keeps_exactly_and_restores_order(strategy, ratio):
    grid, n = (14, 14), 6
    m = make_masking(strategy, n, grid, ratio, torch.Generator().manual_seed(1))
    keep = num_visible(196, ratio)
    assert m.ids_keep.shape == (n, keep)
    assert torch.equal(m.mask.sum(1), torch.full((n,), 196.0 - keep))
    for b in range(n):  # the visible patches are exactly the unmasked ones
        assert set(m.ids_keep[b].tolist()) == set(torch.nonzero(m.mask[b] == 0).flatten().tolist())
    tokens = torch.arange(196).expand(n, -1)
    shuffled = torch.gather(tokens, 1, torch.argsort(m.ids_restore, 1))  # the encoder-side order
    assert torch.equal(torch.gather(shuffled, 1, m.ids_restore), tokens)
    assert torch.equal(shuffled[:, :keep], m.ids_keep)
    distinct = len({tuple(r) for r in m.ids_keep.sort(1).values.tolist()})
    assert distinct == n or (strategy == "grid" and distinct > 1)  # each sample its own mask (grid: 4 offsets)


def test_grid_keeps_one_of_every_two_by_two_and_block_masks_rectangles():
    m = make_masking("grid", 4, (14, 14), 0.75, torch.Generator().manual_seed(0))
    for b in range(4):
        kept = [(i // 14, i % 14) for i in m.ids_keep[b].tolist()]
        assert len({(r % 2, c % 2) for r, c in kept}) == 1  # one lattice offset
    with pytest.raises(ValueError, match="grid masking keeps 1 of 4"):
        make_masking("grid", 1, (14, 14), 0.5)
    block = make_masking("block", 1, (14, 14), 0.5, torch.Generator().manual_seed(0)).mask.view(14, 14)
    neighbours = sum(int(block[r, c] == block[r, c + 1]) for r in range(14) for c in range(13))
    assert neighbours > 0.8 * 14 * 13  # blocks, not salt and pepper (random masking gives about half)


def test_loss_counts_masked_patches_only():
    target, pred = torch.randn(2, 16, 48), torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    base = masked_mse(target, pred, mask, norm_pix=True)
    visible_changed = pred.clone()
    visible_changed[:, 12:] += 5.0
    assert torch.equal(masked_mse(target, visible_changed, mask, norm_pix=True), base)
    masked_changed = pred.clone()
    masked_changed[:, 0] += 5.0
    assert masked_mse(target, masked_changed, mask, norm_pix=True) > base
    per_patch = ((pred - target) ** 2).mean(-1)
    assert torch.allclose(masked_mse(target, pred, mask, norm_pix=False), per_patch[:, :12].mean())


def test_encoder_sees_only_the_visible_patches_and_all_tokens_mode_agrees_without_masking():
    model = tiny_mae()
    seen = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    images = torch.rand(3, 3, 64, 64)
    model(images)
    assert seen == [1 + num_visible(16, 0.75)]  # cls + 4 of 16 patches

    full = tiny_mae(encoder_sees="all", mask_ratio=0.0)
    visible = tiny_mae(mask_ratio=0.0)
    full.load_state_dict(visible.state_dict(), strict=False)
    masking = visible.random_masking(3)  # ratio 0: a pure shuffle, undone by ids_restore
    a = visible.forward_decoder(visible.forward_encoder(visible.normalize(images), masking), masking)
    b = full.forward_decoder(full.forward_encoder(full.normalize(images), masking), masking)
    assert torch.allclose(a, b, atol=1e-5)


def test_sincos_table_is_maes_and_patchify_round_trips():
    table = sincos_pos_embed(16, (3, 3))[0]
    omega = 1.0 / 10000 ** (np.arange(4) / 4)
    r, c = 1, 2
    expected = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
    assert torch.allclose(table[1 + r * 3 + c], torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(table[0], torch.zeros(16))
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(unpatchify(patchify(x, 16), 16, (4, 4)), x)
    assert torch.equal(patchify(x, 16)[0, 1].view(16, 16, 3), x[0, :, :16, 16:32].permute(1, 2, 0))


def test_export_loads_through_the_mae_converter_with_nothing_unused_or_new(tmp_path):
    model = tiny_mae()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # weights that differ from any init
        model(torch.rand(2, 3, 64, 64))["loss"].backward()
        opt.step()
        opt.zero_grad()
    encoder_file, full_file = export(model, tmp_path, "vit_test")
    state = torch.load(encoder_file, weights_only=True)
    assert list(state) == ["model"] and not any(k.startswith(("decoder", "mask_token")) for k in state["model"])
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.1.mlp.fc2.bias"} <= set(
        state["model"]
    )

    spec = get_spec("mae_vit_tiny")
    spec = type(spec)(
        **{**spec.__dict__, "arch_kwargs": {k: TINY[k] for k in ("embed_dim", "depth", "num_heads", "patch_size")}}
    )
    encoder = VisionTransformer(**TINY)
    report = load_pretrained(encoder, spec, encoder_file)
    assert report.new == {} and report.unused == {} and report.resized == {}
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key

    full = torch.load(full_file, weights_only=True)["model"]
    assert {"mask_token", "decoder_embed.weight", "decoder_pos_embed", "decoder_pred.bias"} <= set(full)
    fresh = tiny_mae()
    fresh.mask_token.data.zero_()
    load_full(fresh, full_file)
    for key, value in official_state_dict(model, full=True).items():
        assert torch.equal(official_state_dict(fresh, full=True)[key], value), key
    with pytest.raises(Exception, match="not a full MAE checkpoint"):
        load_full(tiny_mae(), encoder_file)


def write_images(folder, n, size=(80, 96)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"img_{i}.jpg")


def test_image_folder_imagenet_layout_flat_folder_and_bad_files(tmp_path):
    write_images(tmp_path / "inet" / "train" / "n01440764", 3)
    write_images(tmp_path / "inet" / "train" / "n01443537", 2)
    ds = ImageFolder(tmp_path / "inet" / "train", pretrain_transform(64, (0.2, 1.0), True))
    image, target = ds[0]
    assert len(ds) == 5 and image.shape == (3, 64, 64) and image.dtype == torch.uint8 and target == {}
    write_images(tmp_path / "flat", 2)
    assert len(ImageFolder(tmp_path / "flat", pretrain_transform(64, (0.2, 1.0), True))) == 2
    (tmp_path / "flat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        ImageFolder(tmp_path / "flat", pretrain_transform(64, (0.2, 1.0), True))[0]
    with pytest.raises(DatasetError, match="--data-root"):
        ImageFolder(tmp_path / "nowhere", None)


def test_visualization_writes_a_png_with_a_row_per_masking(tmp_path):
    write_images(tmp_path / "imgs", 1, size=(64, 64))
    ds = ImageFolder(tmp_path / "imgs", pretrain_transform(64, (1.0, 1.0), False))
    path = save_grid(tiny_mae(), ds, tmp_path / "grid.png", images=1, scale=1)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[1] >= len(maskings()) * 64
    assert len(maskings()) == 9  # random and block at 0.5 / 0.75 / 0.85 / 0.95, grid at 0.75


def test_cli_pretrains_on_an_image_folder_exports_and_visualizes(tmp_path):
    write_images(tmp_path / "inet" / "train" / "a", 8)
    write_images(tmp_path / "inet" / "val" / "a", 4)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        RUN_BENCH,
        "--task",
        "mae_pretrain",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--data-root",
        str(tmp_path / "inet"),
        "--output-dir",
        str(out),
        "--opts",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.images_per_batch=4",
        "backbone.img_size=64",
        "data.crop=64",
        "data.workers=0",
        "test.images=4",
        "test.images_per_batch=4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mae_pretrain" and metrics["iterations"] == 4  # 2 epochs x ceil(8 / 4)
    assert 0 < metrics["metrics"]["val_loss"] < 10
    config = (out / "config.yaml").read_text()
    assert "iterations: 4" in config and "lr: 3.125e-05" in config  # blr 2e-3 x 4 / 256 (the CPU preset's blr)
    assert (out / "mae_pretrain_vit_tiny.pth").exists() and (out / "mae_pretrain_vit_tiny_full.pth").exists()
    records = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    vis = subprocess.run(
        cmd[: cmd.index("--opts")] + ["--visualize"] + cmd[cmd.index("--opts") :], capture_output=True, text=True
    )
    assert vis.returncode == 0, vis.stderr[-2000:]
    (folder,) = out.glob("visualize-*")  # the finished run's own files are left as they were
    assert (folder / "reconstructions.png").exists() and json.loads((folder / "run.json").read_text())["of_run"]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == records


def test_speed_benchmark_prints_the_ratio_last():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.tools.speed",
            "mae",
            "--arch",
            "vit_tiny",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--img-size",
            "64",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("speedup: ") and float(last.split()[1]) > 0
