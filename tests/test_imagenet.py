"""ImageNet fine-tuning and linear probing: the readers (class folders; the flat validation archive through the
devkit), the views, the device-side augmentation, partial fine-tuning, the MAE repo's files, the parity
harness on the MAE repo's own outputs, the CPU presets, and --eval-only of a MAE-layout classifier on real
images against predictions computed here with timm's own ViT."""

import argparse
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import timm
import torch
from conftest import ROOT, RUN_BENCH
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms

from backbones import CheckpointError, LoadReport, VisionTransformer
from benchmarks.common.classification import (
    DeviceAugment,
    SingleDrawRandomResizedCrop,
    ViTClassifier,
    eval_transform,
    finetune_train_transform,
    freeze_all_but_the_last_blocks,
    normalize,
    posterize_keeping_zero_bits,
)
from benchmarks.common.classification_task import load_mae_classifier
from benchmarks.common.datasets import DatasetError
from benchmarks.common.imagenet import ImageNet, imagenet_classes
from benchmarks.config import CONFIG_DIR, load_config

FIXTURE = ROOT.parent / "shared" / "reference" / "parity" / "mae_classification"
COCO_VAL = ROOT.parent / "shared" / "data" / "coco_sample" / "val2017"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason="../shared/reference/parity is not here")
needs_sample = pytest.mark.skipif(not COCO_VAL.is_dir(), reason="../shared/data/coco_sample is not here")


def jpeg(path, colour=(120, 30, 200), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# ---------------------------------------------------------------------------------------------- readers


def test_class_folders_are_sorted_wnids_and_val_uses_the_training_classes(tmp_path):
    for wnid in ("n02", "n01", "n10"):
        jpeg(tmp_path / "train" / wnid / "a.JPEG")
    jpeg(tmp_path / "val" / "n10" / "v.JPEG")
    jpeg(tmp_path / "val" / "n01" / "w.jpeg")
    assert imagenet_classes(tmp_path) == ["n01", "n02", "n10"]
    val = ImageNet(tmp_path, "val")
    assert sorted((p.rsplit("/", 1)[-1], label) for p, label in val.samples) == [("v.JPEG", 2), ("w.jpeg", 0)]
    jpeg(tmp_path / "val" / "n99" / "x.JPEG")  # a class the training set lacks
    with pytest.raises(DatasetError, match="class folders the training set lacks: \\['n99'\\]"):
        ImageNet(tmp_path, "val")


def write_devkit(root, synsets, truth):
    """The devkit's meta.mat (a struct array, as ILSVRC2012_devkit_t12 ships it) and its ground truth."""
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    table = np.array(
        [(i, w, c) for i, w, c in synsets], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    )
    scipy.io.savemat(data / "meta.mat", {"synsets": table})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in truth))


def test_the_flat_validation_archive_is_labelled_through_the_devkit_by_wnid(tmp_path):
    """ILSVRC2012_ID order is not the sorted-wnid order: ID 1 is the kit fox n02119789, the middle class here."""
    for wnid in ("n01440764", "n02119789", "n04589890"):
        jpeg(tmp_path / "train" / wnid / "a.JPEG")
    write_devkit(
        tmp_path,
        [(1, "n02119789", 0), (2, "n04589890", 0), (3, "n01440764", 0), (1001, "n00001740", 3)],
        truth=[2, 1, 3, 1],
    )
    for k in range(1, 5):
        jpeg(tmp_path / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    val = ImageNet(tmp_path, "val")
    assert val.targets.tolist() == [2, 1, 0, 1]  # by wnid; the raw IDs minus 1 would give [1, 0, 2, 0]
    shutil.rmtree(tmp_path / "ILSVRC2012_devkit_t12")
    with pytest.raises(DatasetError, match="meta.mat is missing: put the devkit"):
        ImageNet(tmp_path, "val")


def test_a_corrupt_image_is_named(tmp_path):
    jpeg(tmp_path / "train" / "n01" / "a.JPEG")
    (tmp_path / "train" / "n01" / "b.JPEG").write_bytes(b"not a jpeg")
    dataset = ImageNet(tmp_path, "train")
    with pytest.raises(DatasetError, match="b.JPEG"):
        dataset[1]


# ---------------------------------------------------------------------------------------------- views


def test_eval_view_follows_crop_pct_224_over_256_up_to_224_and_1_above():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    for size, resize in ((224, 256), (448, 448), (96, 109)):
        want = transforms.Compose(
            [
                transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(size),
                transforms.PILToTensor(),
            ]
        )(image)
        assert torch.equal(eval_transform(size)(image), want), size


def test_the_linear_probe_crop_draws_once():
    """MAE's util/crop: area, aspect and the corner drawn once each (torchvision's loops up to 10 times)."""
    image = Image.new("RGB", (200, 100))
    torch.manual_seed(0)
    i, j, h, w = SingleDrawRandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
    torch.manual_seed(0)
    area = 200 * 100 * torch.empty(1).uniform_(0.08, 1.0).item()
    log_ratio = torch.log(torch.tensor((3 / 4, 4 / 3)))
    aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
    w_want, h_want = min(round((area * aspect) ** 0.5), 200), min(round((area / aspect) ** 0.5), 100)
    assert (h, w) == (h_want, w_want)
    assert (i, j) == (torch.randint(0, 100 - h + 1, (1,)).item(), torch.randint(0, 200 - w + 1, (1,)).item())


def test_randaugment_at_its_magnitude_cap_posterizes_to_black_instead_of_raising():
    """timm's PosterizeIncreasing at magnitude 10 asks for 0 bits; Pillow 13 raises there, older Pillow gave
    black. Every posterize op of the recipe's transform is swapped, and a transform made of nothing but
    posterize at the cap runs (the unpatched one raises whenever the installed Pillow checks ``bits``)."""
    from timm.data import auto_augment

    image = Image.fromarray(np.random.default_rng(0).integers(1, 255, (64, 48, 3), dtype=np.uint8))
    black = posterize_keeping_zero_bits(image, 0)
    assert black.size == image.size and black.mode == image.mode and not np.asarray(black).any()
    assert np.array_equal(np.asarray(posterize_keeping_zero_bits(image, 3)), np.asarray(image) & 0b11100000)
    assert posterize_keeping_zero_bits(image, 8) is image

    view = finetune_train_transform(32, "rand-m9-mstd0.5-inc1")
    ops = [op for t in view.transforms for op in getattr(t, "ops", [])]
    posterizes = [op for op in ops if op.name == "PosterizeIncreasing"]
    assert posterizes and all(op.aug_fn is posterize_keeping_zero_bits for op in posterizes)
    assert not any(op.aug_fn is auto_augment.posterize for op in ops)

    capped = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert capped.level_fn(capped.magnitude, capped.hparams) == (0,)
    capped.aug_fn = posterize_keeping_zero_bits
    assert not np.asarray(capped(image)).any()


def aug_cfg(**changes):
    base = {
        "reprob": 0.25,
        "remode": "pixel",
        "recount": 1,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
    }
    return OmegaConf.create(base | changes)


def test_device_augment_normalises_erases_and_mixes_into_smoothed_soft_targets():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    plain = DeviceAugment(aug_cfg(reprob=0.0, mixup=0.0, cutmix=0.0), 5, 0.1)
    x, y = plain(images, labels)
    assert torch.equal(x, normalize(images)) and torch.equal(y, labels)  # nothing but the normalisation
    torch.manual_seed(0)
    x, y = DeviceAugment(aug_cfg(reprob=1.0), 5, 0.1)(images, labels)
    assert y.shape == (4, 5) and torch.allclose(y.sum(1), torch.ones(4)) and y.min() >= 0.1 / 5 - 1e-6
    assert not torch.equal(x, normalize(images))


# ---------------------------------------------------------------------------------------------- model


def tiny_classifier(pool="avg", classes=7):
    return ViTClassifier(
        VisionTransformer(embed_dim=24, depth=4, num_heads=2, img_size=32, final_norm=pool == "cls"), classes, pool
    )


def test_partial_fine_tuning_trains_the_last_k_blocks_and_the_head():
    def trainable(blocks):
        model = tiny_classifier()
        freeze_all_but_the_last_blocks(model, blocks)
        return {
            n.split(".")[0] if not n.startswith("encoder.blocks.") else ".".join(n.split(".")[:3])
            for n, p in model.named_parameters()
            if p.requires_grad
        }

    assert trainable(1) == {"encoder.blocks.3", "fc_norm", "head"}
    assert trainable(0) == {"fc_norm", "head"}
    assert {"encoder", *(f"encoder.blocks.{i}" for i in range(4))} <= trainable(None)  # cls token, pos-embed too
    with pytest.raises(ValueError, match="finetune_blocks=5"):
        freeze_all_but_the_last_blocks(tiny_classifier(), 5)


def test_heads_start_as_mae_s():
    ft, lp = tiny_classifier("avg"), tiny_classifier("cls")
    assert ft.head.weight.std() < 1e-4 and (ft.head.bias == 0).all()  # trunc_normal std 2e-5
    assert 0.005 < lp.head[1].weight.std() < 0.02 and not lp.head[0].affine  # std 0.01; BN without affine


def test_a_classifier_file_of_another_class_count_names_both(tmp_path):
    model = tiny_classifier(classes=7)
    state = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(1000, 24), torch.zeros(1000)
    with pytest.raises(CheckpointError, match="a 1000-class head, but the dataset has 7 classes"):
        load_mae_classifier(model, {"model": state}, LoadReport("x", None, None), tmp_path / "f.pth")


def test_released_fine_tuned_files_are_registered_with_their_md5_prefixes():
    from benchmarks.checkpoints import released_models

    released = {r.name: r for r in released_models().values() if r.task == "in1k_finetune"}
    assert {n: r.checksum for n, r in released.items()} == {
        "mae_finetuned_vit_base": "md5:1b25e9",
        "mae_finetuned_vit_large": "md5:51f550",
        "mae_finetuned_vit_huge": "md5:2541f2",
    }
    assert [r.published["top1"] for r in released.values()] == [83.664, 85.952, 86.928]


def test_recipes_are_finetune_md_s():
    values = {}
    for size in ("b", "l", "h"):
        c = load_config(CONFIG_DIR / "in1k_finetune" / f"finetune_vit_{size}.yaml")
        values[size] = (c.optim.blr, c.optim.layer_decay, c.backbone.drop_path_rate, c.train.epochs)
        assert c.train.images_per_batch == 1024 and c.train.warmup_epochs == 5 and c.train.schedule.min_lr == 1e-6
    assert values == {"b": (5e-4, 0.65, 0.1, 100), "l": (1e-3, 0.75, 0.2, 50), "h": (1e-3, 0.75, 0.3, 50)}
    lp = load_config(CONFIG_DIR / "in1k_linprobe" / "linprobe_vit_b.yaml")
    assert (lp.optim.name, lp.optim.blr, lp.train.images_per_batch, lp.train.epochs, lp.optim.weight_decay) == (
        "lars",
        0.1,
        16384,
        90,
        0.0,
    )


# ---------------------------------------------------------------------------------------------- parity


@needs_fixture
def test_parity_with_the_mae_repo_passes_every_stage():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.parity", str(FIXTURE)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "parity: 30/30 stages pass", proc.stdout
    for stage in (
        "eval.input (source images)",
        "finetune.param_groups",
        "finetune.after.pos_embed",
        "linprobe.after.bn.running_var",
    ):
        assert stage in proc.stdout


# ---------------------------------------------------------------------------------------------- runs


def run_bench(*args):
    proc = subprocess.run([sys.executable, RUN_BENCH, "--device", "cpu", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("task", ["in1k_finetune", "in1k_linprobe", "inat2018_finetune", "places365_finetune"])
def test_the_cpu_presets_train_and_evaluate(tmp_path, task):  # the transfer presets: their dataset's own layout
    out = tmp_path / "run"
    run_bench(
        "--task",
        task,
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--output-dir",
        str(out),
        "--opts",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=60",
        "data.synthetic.num_val=20",
        "train.epochs=2",
        "train.images_per_batch=20",
        "train.per_device_batch=20",
        "test.images_per_batch=10",
        "data.workers=0",
    )
    record = json.loads((out / "metrics.json").read_text())
    assert record["iterations"] == 6 and set(record["metrics"]) == {"top1", "top5"}  # 2 epochs x floor(60 / 20)
    assert record["kind"] == "transfer" and record["metric_info"][0]["name"] == "top1"
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses))
    if task == "in1k_linprobe":  # the frozen encoder is the random init it started from
        state = torch.load(out / "last_checkpoint.pth", weights_only=True)["model"]
        first = (
            torch.load(out / "previous_checkpoint.pth", weights_only=True)["model"]
            if (out / "previous_checkpoint.pth").exists()
            else state
        )
        assert torch.equal(state["encoder.blocks.0.attn.qkv.weight"], first["encoder.blocks.0.attn.qkv.weight"])


def fixture_imagenet_and_config(tmp_path):
    """The 50 COCO sample images filed into the fixture's class folders, and finetune_vit_b.yaml at the
    fixture's width, depth, patch and input size."""
    meta = json.loads((FIXTURE / "meta.json").read_text())
    m = meta["model"]
    images = sorted(COCO_VAL.glob("*.jpg"))
    wnids = [f"n{c:08d}" for c in range(m["num_classes"])]
    for k, path in enumerate(images):
        for split in ("train", "val"):
            (tmp_path / "in" / split / wnids[k % len(wnids)]).mkdir(parents=True, exist_ok=True)
            (tmp_path / "in" / split / wnids[k % len(wnids)] / f"{path.stem}.JPEG").symlink_to(path)
    cfg = load_config(CONFIG_DIR / "in1k_finetune" / "finetune_vit_b.yaml")
    cfg.backbone.update(
        {
            "embed_dim": m["embed_dim"],
            "depth": m["depth"],
            "num_heads": m["num_heads"],
            "patch_size": m["patch_size"],
            "img_size": m["input_size"],
        }
    )
    cfg.data.input_size, cfg.data.workers, cfg.test.images_per_batch = m["input_size"], 0, 16
    OmegaConf.save(cfg, tmp_path / "fixture.yaml")
    return meta, images, wnids


@needs_fixture
@needs_sample
def test_eval_only_of_a_mae_layout_classifier_on_real_images_equals_timm_s_predictions(tmp_path):
    """The fixture's fine-tuned MAE file on 50 real COCO images filed into 10 class folders; the same file in
    timm's own ViT (global_pool='avg' has MAE's keys) through torchvision's own transform, scored here."""
    meta, images, wnids = fixture_imagenet_and_config(tmp_path)
    m = meta["model"]
    out = tmp_path / "eval"
    run_bench(
        "--task",
        "in1k_finetune",
        "--backbone",
        "random_vit_b",
        "--config",
        str(tmp_path / "fixture.yaml"),
        "--eval-only",
        "--checkpoint",
        str(FIXTURE / "checkpoint_finetuned.pth"),
        "--data-root",
        str(tmp_path / "in"),
        "--output-dir",
        str(out),
    )
    record = json.loads((out / "metrics.json").read_text())
    assert record["checkpoint"]["sha256"] == meta["sha256"]["checkpoint_finetuned.pth"]

    model = timm.models.VisionTransformer(
        img_size=m["input_size"],
        patch_size=m["patch_size"],
        embed_dim=m["embed_dim"],
        depth=m["depth"],
        num_heads=m["num_heads"],
        num_classes=m["num_classes"],
        global_pool="avg",
    )
    with torch.serialization.safe_globals([argparse.Namespace]):  # main_finetune.py's save_model stores args
        model.load_state_dict(torch.load(FIXTURE / "checkpoint_finetuned.pth", weights_only=True)["model"])
    view = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.no_grad():
        logits = model.eval()(torch.stack([view(Image.open(p).convert("RGB")) for p in images]))
    labels = torch.tensor([k % len(wnids) for k in range(len(images))])
    top1 = 100 * int((logits.argmax(1) == labels).sum()) / len(images)
    top5 = 100 * int((logits.topk(5, 1).indices == labels[:, None]).any(1).sum()) / len(images)
    assert record["metrics"]["top1"] == pytest.approx(top1, abs=1e-9) and record["metrics"]["top5"] == pytest.approx(
        top5, abs=1e-9
    )


@needs_fixture
@needs_sample
def test_a_released_classifier_downloads_once_is_verified_evaluated_and_tabled_beside_its_paper(
    tmp_path, monkeypatch, capsys
):
    """``--checkpoint mae_finetuned_vit_base`` with the release pointed at the fixture's MAE-layout file:
    fetched into torch hub's cache, md5-checked, evaluated, then the collector's released-weights table."""
    import dataclasses
    import hashlib

    from benchmarks import checkpoints
    from benchmarks.cli import main
    from results.collect import main as collect

    fixture_imagenet_and_config(tmp_path)
    served = tmp_path / "served" / "mae_finetuned_vit_base.pth"
    served.parent.mkdir()
    shutil.copy(FIXTURE / "checkpoint_finetuned.pth", served)
    release = dataclasses.replace(
        checkpoints.released_models()["mae_finetuned_vit_base"],
        url=served.as_uri(),
        checksum="md5:" + hashlib.md5(served.read_bytes()).hexdigest()[:6],
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(checkpoints, "released_models", lambda: {release.name: release})
    argv = ["--task", "in1k_finetune", "--backbone", "mae_vit_b", "--config", str(tmp_path / "fixture.yaml")]
    argv += ["--device", "cpu", "--eval-only", "--checkpoint", release.name, "--data-root", str(tmp_path / "in")]
    assert main([*argv, "--output-dir", str(tmp_path / "runs" / "released")]) == 0
    assert (tmp_path / "home" / "hub" / "checkpoints" / "mae_finetuned_vit_base.pth").is_file()
    record = json.loads((tmp_path / "runs" / "released" / "metrics.json").read_text())
    assert record["checkpoint"]["verified"] and record["checkpoint"]["published"] == {"top1": 83.664, "top5": 96.53}

    capsys.readouterr()
    assert collect([str(tmp_path / "runs"), "--paper"]) == 0
    table = capsys.readouterr().out.split("## Released weights, evaluated here")[1]
    row = next(line for line in table.splitlines() if "mae_finetuned_vit_base" in line)
    assert f"{record['metrics']['top1']:.1f}" in row and "83.7" in row
    assert "## MAE Table 3" not in table  # a released model is not a fine-tuning run of ours

    served.unlink()  # offline, with no cached copy: the error names where to put the file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError) as err:
        checkpoints.resolve_checkpoint(release.name, "in1k_finetune")
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / "mae_finetuned_vit_base.pth") in str(err.value)
