"""`unetr compare`: one-line errors before any work; a killed comparison resumes, finished runs untouched."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = ("unetr", "unet_small")


def _args(dataset, tiny_profile, out):
    # two runs at once, one core each: the kill lands with runs in flight side by side
    return ["compare", "--models", ",".join(MODELS), "--folds", "2", "--steps", "6", "--profile", str(tiny_profile),
            "--data-dir", str(dataset), "--out", str(out), "--device", "cpu", "--processes", "2"]


def test_bad_model_name_is_a_one_line_error_before_any_work(cli, phantom_dir, tiny_profile, tmp_path):
    dataset = shutil.copytree(phantom_dir, tmp_path / "Task09_Spleen")
    result = cli("compare", "--models", "unetr,segformr_b0", "--steps", "1", "--profile", tiny_profile, "--data-dir", dataset, "--out", tmp_path / "exp")
    assert result.exit_code == 2
    assert result.output.startswith("error: unknown model 'segformr_b0'") and "segformer_b0" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists() and not (dataset / "splits.json").exists()


def _run_dirs(out):
    return [out / model / f"fold_{fold}" for model in MODELS for fold in range(2)]


def _killable_moment(out) -> bool:
    """One run finished and another has a checkpoint but is not finished."""
    runs = _run_dirs(out)
    finished = [r for r in runs if (r / "summary.json").is_file()]
    midway = [r for r in runs if (r / "checkpoints" / "last.pt").is_file() and not (r / "summary.json").is_file()]
    return bool(finished) and bool(midway)


@pytest.mark.slow
def test_compare_resumes_after_a_kill_and_leaves_finished_runs_alone(cli, phantom_dir, tiny_profile, tmp_path):
    dataset = shutil.copytree(phantom_dir, tmp_path / "Task09_Spleen")
    out = tmp_path / "exp"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "unetr_app", *_args(dataset, tiny_profile, out)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _killable_moment(out):
            assert first.poll() is None, "compare ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the comparison and its training subprocess, no chance to clean up
        first.wait()
    finished = {r: (r / "summary.json").stat().st_mtime_ns for r in _run_dirs(out) if (r / "summary.json").is_file()}
    killed = [r for r in _run_dirs(out) if (r / "checkpoints" / "last.pt").is_file() and r not in finished]
    best_before = {r: next((r / "checkpoints").glob("best.*")).stat().st_mtime_ns for r in finished}

    result = cli(*_args(dataset, tiny_profile, out))
    assert result.exit_code == 0, result.output
    for run in finished:  # untouched
        assert (run / "summary.json").stat().st_mtime_ns == finished[run]
        assert next((run / "checkpoints").glob("best.*")).stat().st_mtime_ns == best_before[run]
    for run in killed:  # resumed, not restarted: every validation step exactly once
        assert f"{run.parent.name} fold {run.name[-1]}: resuming" in result.output
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        assert steps == [2, 4, 6]
    for run in _run_dirs(out):
        assert (run / "summary.json").is_file()
        scores = json.loads((run / "compare_scores.json").read_text(encoding="utf-8"))
        assert scores["checkpoint"] == "last" and len(scores["case_dice"]) == len(json.loads((run / "split.json").read_text(encoding="utf-8"))["validation"])
    # every model validated on the same cases in each fold
    for fold in range(2):
        splits = [json.loads((out / m / f"fold_{fold}" / "split.json").read_text(encoding="utf-8"))["validation"] for m in MODELS]
        assert splits[0] == splits[1]
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["model"] for r in rows] == list(MODELS) and all(r["folds"] == "2" for r in rows)
    for name in ("report.md", "dice_vs_parameters.png", "dice_vs_seconds.png", "learning_curves.png", "per_case_dice.png", "receptive_fields.png"):
        assert (out / name).is_file(), name
    assert all((out / m / "nested_postprocessing.json").is_file() for m in MODELS)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Checkpoint: the last one" in report and "nested cross-validation" in report

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    assert cli(*_args(dataset, tiny_profile, out)).exit_code == 0  # a third time: nothing left to train
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == mtimes
    # a second seed later: the first seed's runs are kept, the new ones are paired with them
    more = cli(*_args(dataset, tiny_profile, out), "--seeds", "2", "--reference", "unet_small", "--no-receptive-field")
    assert more.exit_code == 0, more.output
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert all((out / m / "seed_1" / f"fold_{k}" / "summary.json").is_file() for m in MODELS for k in range(2))
    from unetr_app.io.run_dir import RunDir

    assert {RunDir(out / m / "seed_1" / "fold_0").read_config_dict()["training"]["seed"] for m in MODELS} == {1}
    rows = {r["model"]: r for r in csv.DictReader((out / "comparison.csv").open())}
    assert rows["unetr"]["seeds"] == "2" and rows["unetr"]["dice_seed_std"] and rows["unetr"]["diff_low"] and not rows["unet_small"]["diff_low"]
    assert float(rows["unetr"]["diff_low"]) <= float(rows["unetr"]["diff_to_reference"]) <= float(rows["unetr"]["diff_high"])
    changed = cli(*[a if a != "6" else "8" for a in _args(dataset, tiny_profile, out)])
    assert changed.exit_code == 2 and "budget" in changed.output  # another budget would mix incomparable runs


def test_runs_are_spread_over_the_visible_gpus(monkeypatch):
    from unetr_app.pipelines import scheduling as compare

    monkeypatch.setattr(compare.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(compare.torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert compare.visible_gpus("auto") == ["0", "1"] and compare.visible_gpus("cpu") == []
    assert compare.device_slots(4, ["0", "1"]) == ["0", "1", "0", "1"]  # more runs at once than GPUs: they share
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")  # the user's choice of GPUs is kept, not renumbered
    assert compare.device_slots(2, compare.visible_gpus("cuda")) == ["2", "5"]
    env = compare.child_env(2, "5")
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["OMP_NUM_THREADS"]
    assert compare.device_slots(3, []) == [None, None, None]
    assert compare.child_env(1, None)["CUDA_VISIBLE_DEVICES"] == "2,5"  # no slot: the environment as the user set it


@pytest.mark.parametrize("extra, expected", [
    (("--reference", "segresnet_small"), "error: --reference 'segresnet_small' is not among --models unetr,unet_small; name one of unetr, unet_small"),
    (("--seeds", "0"), "error: --seeds 0: give 1 or more"),
    (("--epochs", "2"), "error: --steps and --epochs: give one of them"),
])
def test_bad_comparison_options_are_one_line_errors_before_any_work(cli, phantom_dir, tiny_profile, tmp_path, extra, expected):
    dataset = shutil.copytree(phantom_dir, tmp_path / "Task09_Spleen")
    result = cli("compare", "--models", "unetr,unet_small", "--steps", "1", "--profile", tiny_profile, "--data-dir", dataset, "--out", tmp_path / "exp", *extra)
    assert result.exit_code == 2
    assert result.output.startswith(expected), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists() and not (dataset / "splits.json").exists()


def test_seeds_and_equal_time_runs_are_paired_across_models(tmp_path):
    from unetr_app.pipelines.compare import CompareRequest, describe_run, plan_runs, train_command

    request = CompareRequest(task="spleen", models=("unetr", "configs/models/my_unet.yaml"), out=tmp_path, folds=2, steps=40, minutes=1.5,
                             seeds=2, reference="my_unet", overrides=("optimizer.lr=3e-4",))
    assert request.budgets() == {"steps": {"steps": 40}, "time": {"minutes": 1.5}} and request.reference_model == "my_unet"
    runs = plan_runs(request, n_folds=2, base_seed=3)
    assert len(runs) == 2 * 2 * 2 * 2  # budgets x seeds x models x folds
    folders = {(r.budget, r.seed, r.model, r.fold): Path(r.run_dir).relative_to(tmp_path).as_posix() for r in runs}
    assert folders[("steps", 3, "unetr", 1)] == "unetr/fold_1"  # the first seed where a one-seed comparison has it
    assert folders[("steps", 4, "my_unet", 0)] == "my_unet/seed_4/fold_0"
    assert folders[("time", 4, "unetr", 0)] == "unetr/equal_time/seed_4/fold_0"
    # the same seeds for every model: paired
    assert {(r.budget, r.seed, r.fold) for r in runs if r.model == "unetr"} == {(r.budget, r.seed, r.fold) for r in runs if r.model == "my_unet"}

    by_key = {(r.budget, r.seed, r.model, r.fold): r for r in runs}
    steps_run, time_run = by_key[("steps", 4, "my_unet", 0)], by_key[("time", 3, "unetr", 1)]
    command = train_command(steps_run, request, tmp_path / "data", line_every=5)
    assert command[command.index("--steps") + 1] == "40" and "--minutes" not in command
    assert command[command.index("--model") + 1] == "configs/models/my_unet.yaml"
    sets = [command[i + 1] for i, a in enumerate(command) if a == "--set"]
    assert sets == ["optimizer.lr=3e-4", "training.seed=4"]  # the seed last: it wins over a --set training.seed
    command = train_command(time_run, request, tmp_path / "data", line_every=5)
    assert command[command.index("--minutes") + 1] == "1.5" and "--steps" not in command
    assert [command[i + 1] for i, a in enumerate(command) if a == "--set"][-2:] == ["training.val_every_steps=0", "training.log_every_steps=5"]
    assert describe_run(steps_run) == "my_unet seed 4 fold 0" and describe_run(time_run) == "unetr fold 1 (equal time)"

    alone = CompareRequest(task="spleen", models=("unetr",), out=tmp_path, minutes=2)
    assert alone.budgets() == {"steps": {"minutes": 2}}  # a time budget alone is the budget of every run, no second set
