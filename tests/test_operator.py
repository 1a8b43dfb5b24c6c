"""What an operator meets: records that later commands never change, inputs checked before a run
folder exists, resume and evaluation without the backbone file, logs and TensorBoard scalars, and
one clear line for each mistake on the command line."""

import json
import subprocess
import sys

import official_layouts as L
import pytest
import torch
from conftest import ROOT, RUN_BENCH
from helpers import kill_after_first_checkpoint
from test_coco_run import tiny_opts

TINY_VIT = L.Size(dim=192, depth=12, heads=3)  # vit_tiny, the size of the mae_vit_tiny backbone


def bench(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, str(ROOT / RUN_BENCH), *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def coco(out, weights, *extra, opts=()):
    return [
        "--task",
        "coco_det",
        "--backbone",
        "mae_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        *(["--weights", str(weights)] if weights else []),
        *extra,
        "--opts",
        *opts,
    ]


def files_of(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run killed after its first checkpoint, its backbone file then deleted, resumed to the end.

    4 iterations, checkpoints every 2, an evaluation every 2 (train.eval_period)."""
    tmp = tmp_path_factory.mktemp("finished")
    weights = tmp / "mae_tiny.pth"
    torch.save(L.mae_pretrain(TINY_VIT), weights)
    out = tmp / "run"
    opts = [*tiny_opts(tmp, iterations=4, period=2), "train.eval_period=2"]
    cmd = [sys.executable, str(ROOT / RUN_BENCH), *coco(out, weights, opts=opts)]
    assert kill_after_first_checkpoint(cmd, out, cwd=tmp) == 2
    weights.unlink()  # resume needs only the run's checkpoint, not the pretrained file (nor its hash)
    resumed = bench(*coco(out, None, "--resume", opts=opts), cwd=tmp)
    return {"tmp": tmp, "out": out, "opts": opts, "stderr": resumed.stderr}


def test_resume_needs_no_backbone_file_and_keeps_the_first_records(finished):
    out = finished["out"]
    log = (out / "log.txt").read_text()
    assert "resumed from" in log and "at iteration 2" in log
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 4
    report = json.loads((out / "load_report.json").read_text())
    assert report["weights"]["path"].endswith("mae_tiny.pth") and len(report["loaded"]) > 100  # the first run's


def test_periodic_evaluation_goes_into_the_train_log(finished):
    out = finished["out"]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["iter"] for r in evals] == [2] and "box_AP" in evals[0]["eval"]  # the end is metrics.json
    assert (out / "eval_iter2" / "coco_results.json").exists()


def test_log_and_tensorboard_hold_what_a_cluster_user_needs(finished):
    out = finished["out"]
    log = (out / "log.txt").read_text()
    for needle in (
        "command: run_bench.py --task coco_det",
        '"torch": "',
        "load report:",
        "s/it",
        "data ",
        "eta ",
        "trained 2 iterations in",
        "wrote",
    ):
        assert needle in log, needle
    assert "\r" not in finished["stderr"] and "it/s]" not in finished["stderr"]  # no bar off a terminal
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "loss_classifier", "eval/box_AP"} <= tags, tags


def test_side_commands_never_change_a_finished_run(finished):
    out, tmp, opts = finished["out"], finished["tmp"], finished["opts"]
    before = files_of(out)
    weights = tmp / "again.pth"
    torch.save(L.mae_pretrain(TINY_VIT), weights)
    bench(*coco(out, weights, "--dry-run", opts=opts), cwd=tmp)
    bench(*coco(out, None, "--eval-only", opts=["test.images_per_batch=1"]), cwd=tmp)  # no backbone file
    assert files_of(out) == before
    evals = sorted(out.glob("eval-*"))
    assert len(evals) == 1 and len(list(out.glob("dry-run-*"))) == 1
    record = json.loads((evals[0] / "metrics.json").read_text())
    assert record["evaluation_of"] == str(out) and record["iterations"] == 4
    saved = (evals[0] / "config.yaml").read_text()
    assert "iterations: 4" in saved and "images_per_batch: 1" in saved  # the run's config, with the eval's opts
    other = bench(
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_small",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--eval-only",
        cwd=tmp,
        check=False,
    )
    assert other.returncode == 2 and "is a run of --backbone mae_vit_tiny" in other.stderr
    changed = bench(*coco(out, None, "--resume", opts=[*opts, "optim.lr=1.0"]), cwd=tmp, check=False)
    assert changed.returncode == 2 and "optim.lr" in changed.stderr and "differs from" in changed.stderr
    assert files_of(out) == before


def test_inputs_are_checked_before_a_run_folder_exists(tmp_path):
    """A missing weights file or dataset is found before runs/... (or log.txt, config.yaml) is written."""
    for args, message in [
        (["--backbone", "mae_vit_b", "--weights", str(tmp_path / "no.pth"), "--dry-run"], "no such file"),
        (["--backbone", "random_vit_tiny", "--data-root", str(tmp_path / "nodata")], "missing:"),
    ]:
        proc = bench("--task", "coco_det", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


def coco_without_categories(root):
    for split in ("train2017", "val2017"):
        (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text('{"images": [], "annotations": []}')
    return str(root)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            lambda t: [
                "--backbone",
                "mae_vit_b",
                "--weights",
                write_bytes(t / "w.pth", bytes(range(256)) * 4),
                "--dry-run",
            ],
            "not a checkpoint: it is not a known checkpoint format",
        ),
        (
            lambda t: ["--backbone", "random_vit_tiny", "--data-root", coco_without_categories(t / "coco")],
            "has no 'categories' list",
        ),
        (lambda t: ["--backbone", "random_vit_tiny", "--device", "gpu0", "--dry-run"], "expected cpu, cuda or cuda:N"),
        (
            lambda t: ["--backbone", "random_vit_tiny", "--dry-run", "--opts", "model.neck=fpn"],
            "model.neck must be simple_pyramid or multiscale_taps",
        ),
        (
            lambda t: ["--backbone", "random_vit_tiny", "--dry-run", "--opts", "train.amp=fp8"],
            "train.amp='fp8': expected one of",
        ),
        (
            lambda t: ["--backbone", "random_vit_tiny", "--dry-run", "--opts", "trian.iterations=2"],
            "did you mean train?",
        ),
        (lambda t: ["--backbone", "random_vit_tiny", "--resume"], "--resume continues the run in --output-dir"),
        (lambda t: ["--backbone", "random_vit_tiny", "--preset", "vitdet_vit_b"], "invalid choice: 'vitdet_vit_b'"),
    ],
)
def test_each_mistake_gets_one_line_naming_it(tmp_path, args, message):
    args = args(tmp_path)
    out = [] if "--resume" in args else ["--output-dir", str(tmp_path / "out")]  # --resume: no folder named
    proc = bench("--task", "coco_det", *out, *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "error: 63" not in proc.stderr
    assert not (tmp_path / "out" / "config.yaml").exists() or "categories" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is visible")
def test_device_cuda_without_a_gpu(tmp_path):
    proc = bench(
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_tiny",
        "--device",
        "cuda",
        "--dry-run",
        "--output-dir",
        str(tmp_path / "o"),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "no CUDA GPU is visible" in proc.stderr and "Traceback" not in proc.stderr


def test_help_shows_defaults_and_examples(tmp_path):
    out = bench("--help", cwd=tmp_path).stdout
    assert "(default: paper)" in out and "(default: 8)" in out and "examples:" in out
    assert "run-bench --task coco_det --backbone mae_vit_b" in out


def test_submitit_is_in_the_range_its_internals_were_tested_with():
    """benchmarks/launch.py sbatch_script reads two submitit internals; pyproject pins the tested range."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in deps if Requirement(d).name == "submitit"]
    assert pin.specifier.contains(version("submitit"))  # what is installed is what the pin admits
    assert pin.specifier.contains("1.5.9") and not pin.specifier.contains("1.6.0")  # one minor version


def test_a_failure_reaches_log_txt_with_its_traceback(tmp_path):
    out = tmp_path / "out"
    proc = bench(
        "--task",
        "ade20k_seg",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
        "--opts",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=2",
        "data.synthetic.num_val=1",
        "train.iterations=1",
        "train.schedule.name=linear",
        "data.workers=0",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "train.schedule.name must be" in proc.stderr
    log = (out / "log.txt").read_text()
    assert "run failed" in log and "Traceback" in log and "train.schedule.name must be" in log


def test_configs_are_found_through_the_import_system():
    """An installed copy has no source tree around it: configs/ is a package, found by importlib."""
    import configs
    from backbones.registry import CONFIG_DIR

    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve() == type(CONFIG_DIR)(configs.__file__).parent.resolve()
    import fnmatch
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "configs" in setuptools["packages"]["find"]["include"]
    shipped = setuptools["package-data"]["configs"]  # every config file is package data of the wheel
    for path in (ROOT / "configs").rglob("*.yaml"):
        relative = path.relative_to(ROOT / "configs").as_posix()
        assert any(
            fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/") for pattern in shipped
        ), relative
