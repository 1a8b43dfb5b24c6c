"""Results collector: tables in the papers' layout, robustness to unfinished runs, the regression check."""

import json
import subprocess
import sys

import pytest
from conftest import RUN_BENCH

from benchmarks.tasks import TASKS
from results.collect import main, read_runs


def write_run(
    root, name, task, backbone, arch, pretrain, protocol, metrics, seed=0, preset="paper", provenance="paper"
):
    """A run folder's metrics.json as the runner writes it (the fields the collector reads)."""
    folder = root / name
    folder.mkdir(parents=True)
    record = {
        "task": task,
        "backbone": backbone,
        "arch": arch,
        "pretrain": pretrain,
        "provenance": provenance,
        "protocol": protocol,
        "preset": preset,
        "seed": seed,
        "metrics": metrics,
    }
    if task in TASKS:  # what the runner records of the task's metrics; a task the suite lacks has none
        record |= {"kind": TASKS[task].kind, "metric_info": [m.to_json() for m in TASKS[task].metrics]}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


@pytest.fixture
def runs(tmp_path):
    r = tmp_path / "runs"
    write_run(r, "a", "coco_det", "mae_vit_b", "vit_base", "mae", "mae_paper", {"box_AP": 50.0, "mask_AP": 44.0})
    write_run(
        r, "b", "coco_det", "mae_vit_b", "vit_base", "mae", "mae_paper", {"box_AP": 51.0, "mask_AP": 45.0}, seed=1
    )
    write_run(
        r,
        "c",
        "coco_det",
        "sup_vit_l",
        "vit_large",
        "supervised_in1k",
        "mae_paper",
        {"box_AP": 49.0, "mask_AP": 43.5},
        provenance="stand-in: DeiT III",
    )
    write_run(
        r, "d", "ade20k_seg", "mae_vit_b", "vit_base", "mae", "upernet", {"mIoU": 48.0, "mAcc": 59.0, "aAcc": 83.0}
    )
    (r / "running").mkdir()
    (r / "running" / "config.yaml").write_text("task: coco_det\n")
    (r / "broken").mkdir()
    (r / "broken" / "metrics.json").write_text('{"task": "coco_det", "metr')
    write_run(r, "other", "keypoints", "mae_vit_b", "vit_base", "mae", "x", {"AP": 1.0})
    return r


def test_paper_layout_with_seeds_stand_ins_and_skipped(runs, capsys):
    assert main([str(runs), "--paper"]) == 0
    out = capsys.readouterr().out
    table4 = out.split("## MAE Table 4")[1].split("##")[0]
    mae_row = next(line for line in table4.splitlines() if line.startswith("| mae "))
    assert (
        "50.5 ± 0.7 (n=2)" in mae_row
    )  # sample std of 50, 51: 0.707 and "50.3 [MAE Table 4]" in mae_row and "+0.2" in mae_row
    assert "supervised_in1k †" in table4  # a stand-in is never passed off as the paper's row
    assert "49.3 [MAE Table 4]" in table4 and "-0.3" in table4  # ViT-L supervised: 49.0 vs 49.3
    table5 = out.split("## MAE Table 5")[1]
    assert "48.0" in table5 and "48.1 [MAE Table 5]" in table5
    skipped = out.split("## Skipped")[1]
    assert "running: no metrics.json" in skipped and "broken: unreadable metrics.json" in skipped
    assert "other: keypoints: metrics.json declares no metric_info" in skipped


@pytest.mark.parametrize("fmt, marker", [("csv", ","), ("latex", "\\begin{tabular}"), ("html", "<table")])
def test_other_formats(runs, tmp_path, fmt, marker):
    out = tmp_path / f"tables.{fmt}"
    assert main([str(runs), "--format", fmt, "--out", str(out)]) == 0
    assert marker in out.read_text()


def test_check_passes_then_fails_on_drop_and_missing(runs, tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    assert main([str(runs), "--update-baseline", str(baseline)]) == 0
    data = json.loads(baseline.read_text())
    box = data["cells"]["coco_det/mae_vit_b/paper/mae_paper"]["box_AP"]
    assert box == {"mean": 50.5, "std": 0.7071, "n": 2, "values": [50.0, 51.0], "seeds": [0, 1]}
    assert main([str(runs), "--check", str(baseline)]) == 0

    box["mean"] = 51.2  # now 50.5 is 0.7 below
    data["cells"]["ade20k_seg/beit_vit_b/paper/upernet"] = {"mIoU": {"mean": 45.0, "std": None, "n": 1}}  # no run
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert main([str(runs), "--check", str(baseline), "--tolerance", "0.5"]) == 1
    err = capsys.readouterr().err
    assert (
        "coco_det/mae_vit_b/paper/mae_paper box_AP: 50.50 (n=2) vs baseline 51.20 ± 0.71 (n=2): -0.70, allowed ±0.50"
        in err
    )
    assert "ade20k_seg/beit_vit_b/paper/upernet mIoU: missing" in err
    assert main([str(runs), "--check", str(baseline), "--tolerance", "1.0"]) == 1  # still missing


def test_only_runs_that_differ_in_the_seed_are_averaged(tmp_path, capsys):
    """Two protocols of one backbone, and a 2-iteration run on another dataset beside the CPU preset:
    each its own row and baseline cell, labelled by what differs; only the two seeds are averaged."""
    r = tmp_path / "runs"
    common = dict(task="coco_det", backbone="random_vit_tiny", arch="vit_tiny", pretrain="random", preset="cpu")
    for name, protocol, seed, box, extra in [
        ("cpu0", "vitdet", 0, 30.0, {"dataset": "datasets/synthetic_coco", "iterations": 400, "config_digest": "aaa"}),
        ("cpu1", "vitdet", 1, 32.0, {"dataset": "datasets/synthetic_coco", "iterations": 400, "config_digest": "aaa"}),
        (
            "sample",
            "vitdet",
            0,
            0.5,
            {"dataset": "../shared/data/coco_sample", "iterations": 2, "config_digest": "bbb"},
        ),
        (
            "paper",
            "mae_paper",
            0,
            10.0,
            {"dataset": "datasets/synthetic_coco", "iterations": 400, "config_digest": "ccc"},
        ),
    ]:
        folder = write_run(r, name, protocol=protocol, seed=seed, metrics={"box_AP": box, "mask_AP": box}, **common)
        record = json.loads((folder / "metrics.json").read_text()) | extra
        (folder / "metrics.json").write_text(json.dumps(record))
    baseline = tmp_path / "b.json"
    assert main([str(r), "--update-baseline", str(baseline), "--out", str(tmp_path / "t.md")]) == 0
    cells = json.loads(baseline.read_text())["cells"]
    seeds = cells["coco_det/random_vit_tiny/cpu/vitdet [dataset synthetic_coco, config aaa, 400 it]"]["box_AP"]
    assert (seeds["mean"], seeds["n"]) == (31.0, 2)
    assert cells["coco_det/random_vit_tiny/cpu/vitdet [dataset coco_sample, config bbb, 2 it]"]["box_AP"]["mean"] == 0.5
    assert cells["coco_det/random_vit_tiny/cpu/mae_paper"]["box_AP"]["mean"] == 10.0
    assert len(cells) == 3
    table = (tmp_path / "t.md").read_text()
    assert "31.0 ± 1.4 (n=2)" in table and "(n=3)" not in table and "15.8" not in table


def test_a_re_evaluation_is_not_a_second_seed(tmp_path, capsys):
    r = tmp_path / "runs"
    write_run(r, "run", "coco_det", "mae_vit_b", "vit_base", "mae", "vitdet", {"box_AP": 50.0, "mask_AP": 44.0})
    again = write_run(
        r / "run", "eval-1", "coco_det", "mae_vit_b", "vit_base", "mae", "vitdet", {"box_AP": 40.0, "mask_AP": 34.0}
    )
    record = json.loads((again / "metrics.json").read_text()) | {"evaluation_of": str(r / "run")}
    (again / "metrics.json").write_text(json.dumps(record))
    assert main([str(r)]) == 0
    out = capsys.readouterr().out
    assert "re-evaluation of" in out and "45.0" not in out and "n=2" not in out


def test_missing_folder_and_missing_baseline_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([str(tmp_path), "--check", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "no baseline" in err and "--update-baseline" in err


def test_empty_folder_still_reports(tmp_path, capsys):
    assert main([str(tmp_path)]) == 0
    assert "no finished runs" in capsys.readouterr().out
    assert read_runs(tmp_path).df.empty


def test_an_lr_off_by_100x_fails_the_check(tmp_path):
    """Two real CPU runs of the shrunk ADE20K preset: the baseline, then lr / 100 (too small to learn in 30 its)."""
    opts = [
        "backbone.img_size=64",
        "data.crop=64",
        "data.scale=[256,64]",
        "test.crop=64",
        "test.stride=40",
        "test.scale=[256,64]",
        f"data.synthetic.root={tmp_path / 'syn'}",
        "data.synthetic.num_train=16",
        "data.synthetic.num_val=4",
        "data.workers=0",
        "train.iterations=30",
        "train.checkpoint_period=30",
        "train.log_period=10",
        "train.images_per_batch=4",
        "train.schedule.warmup_iters=5",
        "train.schedule.poly_begin=5",
    ]
    base = [
        sys.executable,
        RUN_BENCH,
        "--task",
        "ade20k_seg",
        "--backbone",
        "random_vit_tiny",
        "--preset",
        "cpu",
        "--device",
        "cpu",
    ]
    good, bad = tmp_path / "good" / "run", tmp_path / "bad" / "run"
    subprocess.run([*base, "--output-dir", str(good), "--opts", *opts], check=True, capture_output=True)
    subprocess.run([*base, "--output-dir", str(bad), "--opts", *opts, "optim.lr=4e-6"], check=True, capture_output=True)
    baseline = tmp_path / "cpu.json"
    assert main([str(good.parent), "--update-baseline", str(baseline), "--out", str(tmp_path / "t.md")]) == 0
    assert main([str(good.parent), "--check", str(baseline), "--out", str(tmp_path / "t.md")]) == 0
    assert main([str(bad.parent), "--check", str(baseline), "--out", str(tmp_path / "t.md")]) == 1


def test_plot_writes_pngs(runs, tmp_path):
    (runs / "a" / "train_log.jsonl").write_text(
        "".join(json.dumps({"iter": i, "loss": 2.0 / i, "lr": 1e-4}) + "\n" for i in range(1, 6))
    )
    figures = tmp_path / "figures"
    assert main([str(runs), "--plot", str(figures), "--out", str(tmp_path / "t.md")]) == 0
    names = sorted(p.name for p in figures.glob("*.png"))
    assert "coco_det_mae_paper_box_AP.png" in names and "ade20k_seg_upernet_mIoU.png" in names
    assert "coco_det_training.png" in names
    assert all((figures / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_imagenet_tables_and_the_partial_fine_tuning_figure(tmp_path, capsys):
    """Runs of the ImageNet tasks fill MAE Table 3 / Table 12 and the Fig. 9 points by their recorded setting,
    with no collector edit: the tasks declare their metrics, the tables live in configs/tables/."""
    r = tmp_path / "runs"
    write_run(r, "ft", "in1k_finetune", "mae_vit_b", "vit_base", "mae", "finetune", {"top1": 83.5, "top5": 96.4})
    write_run(r, "lp", "in1k_linprobe", "mae_vit_b", "vit_base", "mae", "linprobe", {"top1": 67.9, "top5": 88.0})
    for name, blocks, top1 in (("k1", 1, 80.5), ("k4", 4, 83.9)):
        folder = write_run(r, name, "in1k_finetune", "mae_vit_l", "vit_large", "mae", "finetune", {"top1": top1})
        record = json.loads((folder / "metrics.json").read_text())
        record |= {"settings": {"finetune_blocks": blocks}, "config_digest": name}
        (folder / "metrics.json").write_text(json.dumps(record))
    assert main([str(r), "--paper", "--plot", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    table3 = out.split("## MAE Table 3")[1].split("##")[0]
    mae_row = next(line for line in table3.splitlines() if line.startswith("| mae "))
    assert "83.5" in mae_row and "83.6 [MAE Table 3]" in mae_row and "-0.1" in mae_row
    assert "68.0 [MAE Table 12]" in out.split("## MAE Table 12")[1].split("##")[0]
    figure = out.split("## MAE Fig. 9")[1].split("##")[0]
    row = {line.split("|")[1].strip(): line for line in figure.splitlines() if line.startswith("|")}
    assert "80.5" in row["1"] and "81.0 [MAE Fig. 9]" in row["1"] and "83.9" in row["4"]
    assert "79.1 [MAE Fig. 9]" in row["0.5"]
    assert (tmp_path / "fig" / "mae_fig9.png").read_bytes()[:4] == b"\x89PNG"


def seed_runs(root, values, name="s", backbone="random_vit_tiny"):
    """CI-like runs of one experiment, one per seed: box AP = mask AP = each value."""
    for seed, v in enumerate(values):
        write_run(
            root,
            f"{name}{seed}",
            "coco_det",
            backbone,
            "vit_tiny",
            "random",
            "vitdet",
            {"box_AP": v, "mask_AP": v},
            seed=seed,
            preset="ci",
        )
    return root


BASELINE_SEEDS = (30.0, 31.0, 29.5, 30.5, 29.0, 30.0, 31.5, 28.5)  # mean 30.0, sample std 1.0


def test_tolerance_auto_passes_inside_the_seed_spread_and_fails_outside(tmp_path, capsys):
    """Baseline: 8 seeds, mean 30.0, sd 1.0. With 3 CI seeds at alpha 0.01 the allowed difference is
    t(0.995, 7) x 1.0 x sqrt(1/3 + 1/8) = 3.499 x 0.677 = 2.37 points, both ways."""
    baseline = tmp_path / "b.json"
    assert (
        main(
            [
                str(seed_runs(tmp_path / "base", BASELINE_SEEDS)),
                "--update-baseline",
                str(baseline),
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 0
    )
    recorded = json.loads(baseline.read_text())["cells"]["coco_det/random_vit_tiny/ci/vitdet"]["box_AP"]
    assert (recorded["mean"], recorded["std"], recorded["n"]) == (30.0, 1.0, 8)
    cases = {"inside": (28.5, 29.5, 29.0), "below": (27.0, 28.0, 27.5), "above": (33.0, 32.0, 32.5)}  # -1.0, -2.5, +2.5
    verdicts = {}
    for case, values in cases.items():
        capsys.readouterr()
        verdicts[case] = main(
            [
                str(seed_runs(tmp_path / case, values)),
                "--check",
                str(baseline),
                "--tolerance",
                "auto",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        err = capsys.readouterr().err
        assert "allowed ±2.37" in err, err
    assert verdicts == {"inside": 0, "below": 1, "above": 1}
    # a looser false-alarm rate narrows the band: -1.0 fails at alpha 0.5 (t(0.75, 7) x 0.677 = 0.48)
    assert (
        main(
            [
                str(tmp_path / "inside"),
                "--check",
                str(baseline),
                "--tolerance",
                "auto",
                "--alpha",
                "0.5",
                "--out",
                str(tmp_path / "t"),
            ]
        )
        == 1
    )


def test_tolerance_auto_refuses_a_baseline_without_spread(tmp_path, capsys):
    runs = seed_runs(tmp_path / "runs", (30.0,))
    old = tmp_path / "old.json"  # format 1: a mean per metric, no spread
    old.write_text(json.dumps({"coco_det/random_vit_tiny/ci/vitdet": {"box_AP": 30.0, "mask_AP": 30.0}}))
    assert main([str(runs), "--check", str(old), "--tolerance", "1", "--out", str(tmp_path / "t")]) == 0
    assert main([str(runs), "--check", str(old), "--tolerance", "auto", "--out", str(tmp_path / "t")]) == 2
    assert "re-record it with --update-baseline" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(runs), "--check", str(old), "--tolerance", "lots"])


def test_one_rounding_in_every_table(tmp_path, capsys):
    """Seeds 34.04 and 35.07 (mean 34.555, sample std 0.728): 34.6 ± 0.7 in the all-runs table and in
    the CPU table alike (the old code rounded the mean to 34.55 first, then printed 34.5)."""
    seed_runs(tmp_path / "r", (34.04, 35.07))
    assert main([str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("34.6 ± 0.7 (n=2)") >= 2 and "34.5" not in out


def test_against_paper_uses_published_seed_spread_where_there_is_one(tmp_path, capsys):
    """MAE FINETUNE.md: ViT-B 83.57 ± 0.08 over 4 seeds (Table 3: 83.6). At k = 3 a run at 83.3 passes and one
    at 83.2 fails; COCO publishes no seed spread, so its cell is reported as not checked."""
    r = tmp_path / "runs"
    write_run(r, "ft", "in1k_finetune", "mae_vit_b", "vit_base", "mae", "finetune", {"top1": 83.2, "top5": 96.4})
    write_run(r, "det", "coco_det", "mae_vit_b", "vit_base", "mae", "mae_paper", {"box_AP": 50.0, "mask_AP": 44.0})
    assert main([str(r), "--against", "paper", "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert "mae vit_b top1: 83.20 (n=1) vs published 83.6 - 3.0 x 0.08 = 83.36" in err
    assert "mae vit_b box_AP: not checked, MAE Table 4 publishes no seed spread" in err
    assert main([str(r), "--against", "paper", "--k", "5", "--out", str(tmp_path / "t")]) == 0


def test_robustness_of_a_released_in1k_model_is_a_table13_cell_not_a_released_row(tmp_path):
    released = {"released": "mae_finetuned_vit_large", "published": {"top1": 85.952}, "source": "MAE FINETUNE.md"}
    for name, task, metrics, released_for in (
        ("rob", "in1k_robustness", {"in1k_a_top1": 56.3, "in1k_c_mCE": 42.0}, "in1k_finetune"),
        ("ft", "in1k_finetune", {"top1": 85.9}, "in1k_finetune"),
    ):
        protocol = "robustness" if task == "in1k_robustness" else "finetune"
        folder = write_run(tmp_path, name, task, "mae_vit_l", "vit_large", "mae", protocol, metrics)
        record = json.loads((folder / "metrics.json").read_text())
        record["checkpoint"] = {**released, "released_for": released_for}
        (folder / "metrics.json").write_text(json.dumps(record))
    df = read_runs(tmp_path).df.set_index("task")
    assert df.loc["in1k_robustness", "protocol"] == "robustness"  # its own task's cell (Table 13)
    assert df.loc["in1k_finetune", "protocol"] == "released"  # evaluated on the task it was released for
