"""The CPU miniature's plan and scheduler, the shared synthetic-data lock, and supervised pretraining."""

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, RUN_BENCH
from omegaconf import OmegaConf

from backbones import get_spec, load_pretrained
from backbones.vit import VisionTransformer
from benchmarks.common.datasets import dataset_root
from benchmarks.engine.distributed import DistInfo
from benchmarks.tools.miniature import Step, run_steps, steps

COCO_SAMPLE = ROOT.parent / "shared" / "data" / "coco_sample"


def test_plan_pretrains_first_and_fine_tunes_each_row_on_both_tasks(tmp_path):
    plan = steps(tmp_path, pretrain_opts=["model.mask_ratio=0.5"], seed=3)
    names = [s.folder.relative_to(tmp_path).as_posix() for s in plan]
    assert names[:2] == ["mae_pretrain", "sup_pretrain"] and len(plan) == 14
    tasks = ("coco_det", "ade20k_seg", "in1k_finetune", "in1k_linprobe")
    assert {f"{t}/{b}" for t in tasks for b in ("random_vit_tiny", "sup_vit_tiny", "mae_vit_tiny")} == set(names[2:])
    by_name = dict(zip(names, plan, strict=True))
    assert by_name["coco_det/mae_vit_tiny"].after == [tmp_path / "mae_pretrain"]
    assert by_name["ade20k_seg/random_vit_tiny"].after == []
    assert by_name["mae_pretrain"].argv[-2:] == ["--opts", "model.mask_ratio=0.5"]
    assert all("--opts" not in s.argv for s in plan[1:])  # the overrides are the MAE pretraining's only
    assert all(s.argv[s.argv.index("--seed") + 1] == "3" for s in plan)
    weights = by_name["ade20k_seg/sup_vit_tiny"].argv
    assert weights[weights.index("--weights") + 1] == str(tmp_path / "sup_pretrain" / "sup_pretrain_encoder.pth")
    only_mae = steps(tmp_path, rows=["mae"])
    assert [s.folder.name for s in only_mae] == ["mae_pretrain"] + ["mae_vit_tiny"] * 4
    imagenet = steps(tmp_path, rows=["random", "mae"], tasks=["in1k_linprobe", "in1k_finetune"])
    assert [str(s.folder.relative_to(tmp_path)) for s in imagenet] == [
        "mae_pretrain",
        "in1k_finetune/random_vit_tiny",
        "in1k_finetune/mae_vit_tiny",
        "in1k_linprobe/random_vit_tiny",
        "in1k_linprobe/mae_vit_tiny",
    ]


class FakeStep(Step):
    """A step whose command records its start / end in ``journal`` and writes metrics.json (or fails)."""

    def __init__(self, folder: Path, journal: Path, after=(), fail=False):
        super().__init__(folder, [], list(after))
        self.journal, self.fail = journal, fail

    def command(self) -> list[str]:
        script = (
            "import pathlib, sys, time\n"
            f"j = open({str(self.journal)!r}, 'a')\n"
            f"j.write('start {self.folder.name} %f\\n' % time.time()); j.flush()\n"
            "time.sleep(0.3)\n"
            f"if {self.fail}: sys.exit(3)\n"
            f"p = pathlib.Path({str(self.folder)!r}); p.mkdir(parents=True, exist_ok=True)\n"
            "(p / 'metrics.json').write_text('{}')\n"
            f"j.write('end {self.folder.name} %f\\n' % time.time())\n"
        )
        return [sys.executable, "-c", script]


def journal_events(path: Path) -> dict[str, dict[str, float]]:
    events: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        kind, name, t = line.split()
        events.setdefault(name, {})[kind] = float(t)
    return events


def test_scheduler_respects_dependencies_and_the_job_limit(tmp_path):
    journal = tmp_path / "journal.txt"
    pre = FakeStep(tmp_path / "pre", journal)
    plan = [
        pre,
        FakeStep(tmp_path / "a", journal, after=[pre.folder]),
        FakeStep(tmp_path / "b", journal),
        FakeStep(tmp_path / "c", journal, after=[pre.folder]),
    ]
    assert run_steps(plan, jobs=2, threads=1, logs=tmp_path / "logs")
    ev = journal_events(journal)
    assert set(ev) == {"pre", "a", "b", "c"} and all(s.done for s in plan)
    assert ev["a"]["start"] >= ev["pre"]["end"] and ev["c"]["start"] >= ev["pre"]["end"]
    times = sorted((t, +1 if k == "start" else -1) for e in ev.values() for k, t in e.items())
    running = [sum(d for _, d in times[: i + 1]) for i in range(len(times))]
    assert max(running) == 2  # two side by side, never three

    journal.unlink()
    assert run_steps(plan, jobs=2, threads=1, logs=tmp_path / "logs")  # everything done: nothing runs again
    assert not journal.exists()

    other = FakeStep(tmp_path / "pre", journal)
    other.argv = ["--opts", "model.mask_ratio=0.5"]  # e.g. a variant pointed at the same --out
    with pytest.raises(SystemExit, match="made by other arguments"):
        run_steps([other], jobs=1, threads=1, logs=tmp_path / "logs")
    assert not journal.exists()


def test_scheduler_stops_the_dependents_of_a_failed_step(tmp_path, capsys):
    journal = tmp_path / "journal.txt"
    pre = FakeStep(tmp_path / "pre", journal, fail=True)
    plan = [pre, FakeStep(tmp_path / "after_pre", journal, after=[pre.folder])]
    assert not run_steps(plan, jobs=2, threads=1, logs=tmp_path / "logs")
    assert set(journal_events(journal)) == {"pre"}
    assert "step failed (exit 3" in capsys.readouterr().err


def slow_write_synthetic(root, num_train, num_val, seed):
    """Stands in for write_synthetic_*: writes slowly, recording when it wrote."""
    with open(root.parent / "writes.txt", "a") as f:
        f.write(f"{time.time()}\n")
    time.sleep(0.5)
    (root / "data.txt").write_text("complete")


def open_dataset(root: str, results) -> None:
    cfg = OmegaConf.create(
        {"dataset": "synthetic", "synthetic": {"root": root, "num_train": 1, "num_val": 1, "seed": 0}}
    )
    got = dataset_root(cfg, None, DistInfo(), "UNUSED_ENV", "unused", slow_write_synthetic, lambda p: None)
    results.put((got / "data.txt").exists())


def test_side_by_side_runs_write_a_synthetic_set_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=open_dataset, args=(str(tmp_path / "set"), results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [results.get(timeout=5) for _ in procs] == [True] * 3  # every run found the set complete
    assert len((tmp_path / "writes.txt").read_text().splitlines()) == 1


@pytest.mark.skipif(not COCO_SAMPLE.is_dir(), reason="../shared/data/coco_sample is not here")
def test_supervised_pretraining_on_the_coco_sample_exports_a_deit_layout_encoder(tmp_path):
    out = tmp_path / "sup"
    cmd = [
        sys.executable,
        RUN_BENCH,
        "--task",
        "sup_pretrain",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--data-root",
        str(COCO_SAMPLE),
        "--output-dir",
        str(out),
        "--opts",
        "train.iterations=3",
        "train.images_per_batch=8",
        "backbone.img_size=32",
        "data.crop=32",
        "data.workers=0",
        "test.images_per_batch=64",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "sup_pretrain" and metrics["iterations"] == 3
    state = torch.load(out / "sup_pretrain_encoder.pth", weights_only=True)["model"]
    assert state["head.weight"].shape[0] == 80  # the sample's 80 COCO categories

    spec = get_spec("sup_vit_tiny")
    encoder = VisionTransformer(**spec.arch_kwargs, img_size=32)
    report = load_pretrained(encoder, spec, out / "sup_pretrain_encoder.pth")
    assert report.new == {} and set(report.unused) == {"head.weight", "head.bias"}
    for key, value in encoder.state_dict().items():
        assert torch.equal(state[key], value), key
    # the exported encoder and head on the sample's val crops, counted here: metrics.json's top-1
    from benchmarks.common.classifier import Classifier
    from benchmarks.tasks.sup_pretrain.task import ObjectCrops

    model = Classifier(encoder, 80).eval()
    model.head.load_state_dict({"weight": state["head.weight"], "bias": state["head.bias"]})
    crops = ObjectCrops(COCO_SAMPLE, "val2017", 32, train=False)
    with torch.no_grad():
        correct = sum(
            int(model.logits(crops[i][0][None].float() / 255).argmax()) == crops[i][1]["label"]
            for i in range(len(crops))
        )
    assert metrics["metrics"]["top1"] == round(100 * correct / len(crops), 2)
