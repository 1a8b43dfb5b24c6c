"""run_bench.py: --list-backbones and the --dry-run load report, as a user runs them."""

import json
import subprocess
import sys

import official_layouts as L
import pytest
import torch
from conftest import ROOT, RUN_BENCH
from official_layouts import VIT_B

from backbones import zoo

REQUIRED = [
    "mae_vit_b",
    "mae_vit_l",
    "mae_vit_h",
    "sup_vit_b",
    "sup_vit_l",
    "sup21k_vit_b",
    "sup21k_vit_l",
    "mocov3_vit_b",
    "beit_vit_b",
    "beit22k_vit_b",
    "beit22k_vit_l",
    "random_vit_b",
    "random_vit_l",
    "random_vit_h",
    "random_vit_tiny",
    "random_vit_small",
]


def run(*args, check=True):
    proc = subprocess.run([sys.executable, RUN_BENCH, *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_zoo_entries_are_complete():
    specs = zoo()
    assert set(REQUIRED) <= set(specs)
    for s in specs.values():
        assert (s.url is None) == (s.file is None) or s.url is None, s.name
        if s.pretrain == "mae" and s.url:
            assert s.provenance == "paper"
        if s.pretrain not in ("mae", "random"):
            assert s.is_stand_in, f"{s.name} must be marked as a stand-in"


def test_list_backbones():
    out = run("--list-backbones").stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(REQUIRED) <= set(lines)
    assert "md5:8cad7c" in lines["mae_vit_b"] and "mae_pretrain_vit_base.pth" in lines["mae_vit_b"]
    assert "stand-in" in lines["sup_vit_b"] and "sha256:b5f2ef4d" in lines["sup_vit_b"]
    assert "none published" in lines["mocov3_vit_b"] and "stand-in" in lines["beit22k_vit_l"]


def test_dry_run_mae_vit_b_vitdet(tmp_path):
    weights = tmp_path / "my_mae_b.pth"
    torch.save(L.mae_pretrain(VIT_B), weights)
    out = tmp_path / "run"
    proc = run(
        "--task",
        "coco_det",
        "--backbone",
        "mae_vit_b",
        "--weights",
        str(weights),
        "--dry-run",
        "--output-dir",
        str(out),
    )
    assert "loaded 146  resized 1" in proc.stdout and "unused 3" in proc.stdout
    report = json.loads((out / "load_report.json").read_text())
    enc = "backbone.encoder."
    assert report["resized"] == {
        enc + "pos_embed": {"from": [1, 197, 768], "to": [1, 196, 768], "how": "cls slot dropped"}
    }
    rel_pos = {f"{enc}blocks.{i}.attn.rel_pos_{a}" for i in range(12) for a in "hw"}
    assert rel_pos <= set(report["new"])
    assert all(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in report["new"])
    assert not any(k.startswith(enc) for k in set(report["new"]) - rel_pos)  # no encoder weight left random
    assert report["new"][enc + "blocks.2.attn.rel_pos_h"] == [127, 64]  # global block on the 64x64 grid
    assert report["new"][enc + "blocks.0.attn.rel_pos_h"] == [27, 64]  # 14x14 window
    assert set(report["unused"]) == {"cls_token", "norm.weight", "norm.bias"}
    assert report["weights"]["sha256"] and report["weights"]["verified"] is False
    assert abs(report["num_params"] - 111e6) / 111e6 < 0.01
    assert report["num_params_backbone"] == 85_888_256
    assert report["encoder"]["global_blocks"] == [2, 5, 8, 11] and report["task"] == "coco_det"


def test_dry_run_upernet_resizes_pos_embed(tmp_path):
    weights = tmp_path / "deit_tiny.pth"
    size = L.Size(dim=192, depth=12, heads=3)
    torch.save(L.mae_pretrain(size), weights)
    out = tmp_path / "run"
    run(
        "--task",
        "ade20k_seg",
        "--backbone",
        "mae_vit_tiny",
        "--weights",
        str(weights),
        "--dry-run",
        "--output-dir",
        str(out),
    )
    report = json.loads((out / "load_report.json").read_text())
    enc = "backbone.encoder."
    assert report["resized"][enc + "pos_embed"]["to"] == [1, 1025, 192]
    assert "bicubic 14x14 -> 32x32" in report["resized"][enc + "pos_embed"]["how"]
    assert report["new"][enc + "blocks.0.attn.relative_position_bias_table"] == [63 * 63 + 3, 3]
    assert report["new"][enc + "blocks.0.ls1.gamma"] == [192]
    assert report["new"]["decode_head.classifier.weight"] == [150, 768, 1, 1]
    assert set(report["unused"]) == {"norm.weight", "norm.bias"}


def test_dry_run_random_needs_no_weights(tmp_path):
    run("--task", "coco_det", "--backbone", "random_vit_tiny", "--dry-run", "--output-dir", str(tmp_path))
    report = json.loads((tmp_path / "load_report.json").read_text())
    assert report["weights"] is None and not report["loaded"] and len(report["new"]) > 100


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "coco_det", "--backbone", "mae_vit_z", "--dry-run"], "unknown backbone 'mae_vit_z'; registered:"),
        (["--task", "coco_det", "--backbone", "mae_vit_b", "--weights", "/no/such.pth", "--dry-run"], "no such file"),
        (["--task", "ade20k_seg", "--backbone", "mae_vit_h", "--dry-run"], "no upernet config for a vit_huge"),
        (["--sweep", "mae_table9", "--dry-run"], "no sweep 'mae_table9'"),
        (["--task", "coco_det", "--backbone", "mae_vit_b", "mae_vit_z", "--launcher", "slurm"], "mae_vit_z"),
    ],
)
def test_errors_exit_2_with_a_message(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_list_configs_names_every_file():
    out = run("--list-configs").stdout
    for path in (ROOT / "configs" / "coco_det").glob("*.yaml"):
        assert f"coco_det    {path.stem} " in out
    assert "ade20k_seg  upernet_vit_b " in out and "mmseg" in out
    for path in (ROOT / "configs" / "tables").glob("*.yaml"):  # the paper tables, each a --sweep
        assert f"table       {path.stem} " in out


def test_torchrun_launcher_runs_two_processes(tmp_path):
    out = tmp_path / "tr"
    proc = run(
        "--launcher",
        "torchrun",
        "--nproc-per-node",
        "2",
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_tiny",
        "--dry-run",
        "--device",
        "cpu",
        "--output-dir",
        str(out),
    )
    first = proc.stdout.splitlines()[0]
    assert "torch.distributed.run" in first and "--nproc_per_node=2" in first and "--launcher" not in first
    assert proc.stdout.count("wrote ") == 1 and (out / "load_report.json").exists()


def test_sweep_runs_every_task_x_backbone_locally(tmp_path):
    proc = run(
        "--task",
        "coco_det",
        "ade20k_seg",
        "--backbone",
        "random_vit_tiny",
        "random_vit_small",
        "--dry-run",
        "--device",
        "cpu",
        "--output-dir",
        str(tmp_path),
    )
    assert "4/4 runs finished" in proc.stdout
    for task in ("coco_det", "ade20k_seg"):
        for backbone in ("random_vit_tiny", "random_vit_small"):
            report = json.loads((tmp_path / task / backbone / "load_report.json").read_text())
            assert report["task"] == task and report["backbone"] == backbone


def test_sweep_refuses_a_finished_run_before_starting_any(tmp_path):
    (tmp_path / "coco_det" / "random_vit_small").mkdir(parents=True)
    (tmp_path / "coco_det" / "random_vit_small" / "metrics.json").write_text("{}")
    proc = run(
        "--task",
        "coco_det",
        "--backbone",
        "random_vit_tiny",
        "random_vit_small",
        "--output-dir",
        str(tmp_path),
        check=False,
    )
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert not (tmp_path / "coco_det" / "random_vit_tiny").exists()


def test_print_sbatch_shows_the_job_array_slurm_gets(tmp_path):
    proc = run(
        "--sweep",
        "mae_table4",
        "--launcher",
        "slurm",
        "--print-sbatch",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--partition",
        "learnfair",
        "--account",
        "acct",
        "--qos",
        "high",
        "--mem",
        "480",
        "--constraint",
        "volta32gb",
        "--timeout",
        "2880",
        "--output-dir",
        str(tmp_path),
    )
    out = proc.stdout
    for line in (
        "--array=0-5%6",
        "--nodes=2",
        "--gpus-per-node=8",
        "--ntasks-per-node=8",
        "--partition=learnfair",
        "--account=acct",
        "--qos=high",
        "--mem=480GB",
        "--constraint=volta32gb",
        "--time=2880",
        "--signal=USR2@120",
    ):
        assert f"#SBATCH {line}\n" in out, line
    jobs = [line for line in out.splitlines() if line.startswith("# job ")]
    assert len(jobs) == 6 and all("--protocol mae_paper" in j and j.endswith(" --resume") for j in jobs)
    assert f"--output-dir {tmp_path}/coco_det/mae_vit_l " in jobs[-1]
    assert not any(tmp_path.iterdir())  # nothing submitted, no folder made


def test_stop_request_defers_the_signal_only_inside_the_loop():
    import signal

    from benchmarks.engine.preemption import StopRequest

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: seen.append("forwarded"))
    try:
        stop = StopRequest(signal.SIGUSR2)
        with stop.deferred():
            signal.raise_signal(signal.SIGUSR2)
            assert stop.requested and seen == []  # recorded; the loop checkpoints, then forwards
        stop.forward()
        assert seen == ["forwarded"]
        signal.raise_signal(signal.SIGUSR2)  # outside the loop: straight to the scheduler's handler
        assert seen == ["forwarded", "forwarded"]
    finally:
        signal.signal(signal.SIGUSR2, previous)
