"""The regression check's tools: the CI plan, the power script's patches (each still applies to the source,
so that the power table measures what it names) and its verdict table."""

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from benchmarks.config import load_config, preset_config_path
from benchmarks.tools import regression, regression_power


def test_the_ci_plan_runs_each_task_at_each_seed_longest_first(tmp_path):
    s = regression.settings()
    steps = regression.plan(tmp_path, s["tasks"], s["ci_seeds"], ["optim.lr=1"])
    assert [st.folder.relative_to(tmp_path).parts for st in steps][:2] == [("coco_det", "seed0"), ("coco_det", "seed1")]
    assert len(steps) == len(s["tasks"]) * len(s["ci_seeds"])
    assert all(st.argv[-2:] == ["--opts", "optim.lr=1"] and "ci" in st.argv for st in steps)
    assert not set(s["ci_seeds"]) & set(s["baseline_seeds"])  # independent draws
    for task in s["tasks"]:
        assert preset_config_path(task, "ci").is_file()


def changes():
    return OmegaConf.to_container(OmegaConf.load(regression_power.CHANGES), resolve=True)["changes"]


@pytest.mark.parametrize("change", [c for c in changes() if "patch" in c], ids=lambda c: c["name"])
def test_every_patch_of_the_power_list_still_applies_once(change):
    for patch in regression_power.patches(change["patch"]):
        text = (ROOT / patch["file"]).read_text()
        assert text.count(patch["old"]) == 1, f"{change['name']}: the patched text moved in {patch['file']}"


def test_every_opts_change_names_keys_the_presets_have():
    s = regression.settings()
    for change in changes():
        for task, opts in change.get("opts", {}).items():
            assert task in s["tasks"], change["name"]
            cfg = load_config(preset_config_path(task, "ci"))  # merged over its bases
            for opt in opts:
                key = opt.split("=")[0]
                assert OmegaConf.select(cfg, key) is not None, f"{change['name']}: {task} ci preset has no {key}"


def test_a_patched_tree_is_a_copy(tmp_path):
    target = "benchmarks/engine/trainer.py"
    before = (ROOT / target).read_text()
    patch = {"file": target, "old": "loss = sum(losses.values())", "new": "loss = 0 * sum(losses.values())"}
    with regression_power.patched_tree(patch) as tree:
        assert tree != ROOT and "loss = 0 * sum(losses.values())" in (tree / target).read_text()
        assert (tree / "configs" / "regression.yaml").is_file()  # untracked files of this tree travel too
    assert (ROOT / target).read_text() == before and not tree.exists()
    with pytest.raises(SystemExit, match="occurs 0 times"), regression_power.patched_tree({**patch, "old": "nowhere"}):
        pass


def test_the_power_table_marks_a_false_alarm_and_a_miss():
    rows = [
        {"change": "seeds", "kind": "benign", "moved": {"coco_det box_AP": -0.4}, "verdict": "fail"},
        {"change": "lr x 10", "kind": "harmful", "moved": {"coco_det box_AP": -3.0}, "verdict": "fail"},
        {"change": "dp", "kind": "harmful", "moved": {"coco_det box_AP": -0.1}, "verdict": "pass"},
    ]
    lines = regression_power.table(rows).splitlines()
    assert lines[2].endswith("| fail | **no** |") and lines[3].endswith("| fail | yes |")
    assert lines[4].endswith("| pass | **no** |") and "coco_det box_AP -0.10" in lines[4]
