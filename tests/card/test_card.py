"""`unetr card`: the card read back field by field against what the run recorded."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml

from unetr_app.io.run_dir import RunDir


def read_card(folder):
    return json.loads((folder / "model_card.json").read_text(encoding="utf-8")), (folder / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_a_run_card_holds_what_the_run_recorded(cli, card_run):
    result = cli("card", card_run)
    assert result.exit_code == 0, result.output
    card, markdown = read_card(card_run)
    run = RunDir(card_run)
    config, summary, split = run.read_config_dict(), run.read_summary(), run.read_split()

    assert card["kind"] == "run" and card["task"]["labels"] == {"background": 0, "spleen": 1}
    assert card["data"]["dataset"] == "Task09_Spleen" and card["data"]["licence"] == "CC-BY-SA 4.0"  # from data_manifests/spleen.yaml
    assert card["data"]["train_cases_per_run"] == [len(split["train"])] and card["data"]["validation_cases_per_run"] == [len(split["validation"])]
    fingerprint = json.loads(run.file("fingerprint.json").read_text(encoding="utf-8"))
    assert card["data"]["fingerprint"] == fingerprint
    assert card["preprocessing"] == config["preprocessing"] and card["model"]["params"] == config["model"]["params"]
    assert card["model"]["parameters"] == summary["parameters"]
    assert card["recipe"]["budget"] == {"steps": 8} and card["recipe"]["steps"] == [summary["steps"]]
    assert card["compute"]["device"] == "cpu" and card["compute"]["seconds"] == [summary["seconds"]]
    assert card["recipe"]["precision"] == summary["precision"] == "float32", "what the network computed in (a CPU: float32 unless cpu_amp)"

    # validation: the best step's per-case Dice; its mean is the summary's best Dice
    best_line = next(line for line in run.read_metrics() if line["step"] == summary["best_step"] and "val_dice_per_case" in line)
    per_case = best_line["val_dice_per_case"]
    assert card["validation"]["case_dice"] == pytest.approx(per_case)
    assert card["validation"]["dice"]["mean"] == pytest.approx(summary["best_val_dice"])
    assert card["validation"]["dice"]["std"] == pytest.approx(float(np.std(list(per_case.values()))))
    assert card["validation"]["dice_per_label"]["spleen"]["cases"] == len(split["validation"])
    assert "optimistic" in card["validation"]["selection"]

    weights = {w["file"]: w["sha256"] for w in card["weights"]}
    best = card_run / "checkpoints" / "best.safetensors"
    assert weights["checkpoints/best.safetensors"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert card["calibration"] is None and card["quality_model"] is None

    assert "CC-BY-SA 4.0" in markdown and f"{summary['best_val_dice']:.4f}" in markdown and weights["checkpoints/best.safetensors"] in markdown
    assert "Known failure modes" in markdown and min(per_case, key=per_case.get) in markdown


def test_an_experiment_card_pools_its_folds_and_reads_qc_files(cli, card_experiment):
    # temperature.json as `unetr qc` writes it for an experiment: in the experiment folder
    from unetr_app.quality.calibration import write_temperature

    write_temperature(card_experiment / "temperature.json", np.array([1.0, 1.7]), {"background": 0, "spleen": 1},
                      {"validation_cases": 6, "voxels": 1000, "ece_validation": {"before": 0.2, "after": 0.05}})
    result = cli("card", card_experiment)
    assert result.exit_code == 0, result.output
    card, markdown = read_card(card_experiment)

    assert card["kind"] == "experiment" and card["runs"] == ["fold_0", "fold_1"] and card["data"]["folds"] == [0, 1]
    summaries = [RunDir(card_experiment / f"fold_{k}").read_summary() for k in (0, 1)]
    assert card["validation"]["dice_per_run"] == [s["best_val_dice"] for s in summaries]
    assert card["data"]["cases"] == 6 and card["validation"]["dice"]["cases"] == 6, "every case validated once"
    assert len(card["weights"]) >= 2 and {w["file"].split("/")[0] for w in card["weights"]} == {"fold_0", "fold_1"}
    assert card["calibration"]["temperature"] == {"background": 1.0, "spleen": 1.7}
    assert card["postprocessing"] is not None, "decided when the last fold finished"
    assert "0.05" in markdown and "spleen" in markdown


def test_card_of_a_folder_that_is_no_run_is_one_line(cli, tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "notes.txt").write_text("not a run")
    result = cli("card", tmp_path / "scans")
    assert result.exit_code == 2
    assert "scans: not a run" in result.output and "unetr train" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "scans" / "MODEL_CARD.md").exists()


def test_card_of_several_models_names_them(cli, card_run, card_experiment, tmp_path):
    import shutil

    shutil.copytree(card_experiment, tmp_path / "compare" / "unetr")
    other = shutil.copytree(card_run, tmp_path / "compare" / "swin" / "fold_0")
    config = yaml.safe_load((other / "config.yaml").read_text(encoding="utf-8"))
    config["model"]["name"] = "swin_unetr"
    (other / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    result = cli("card", tmp_path / "compare")
    assert result.exit_code == 2 and "2 models (swin_unetr, unetr)" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_monai_bundle_of_a_run_embeds_its_card(cli, card_run, tmp_path):
    bundle = tmp_path / "bundle"
    result = cli("export", card_run, bundle, "--format", "monai-bundle")
    assert result.exit_code == 0, result.output
    card = json.loads((bundle / "docs" / "model_card.json").read_text(encoding="utf-8"))
    assert card["name"] == card_run.name and card["data"]["licence"] == "CC-BY-SA 4.0"
    assert card["bundle"]["weights"]["sha256"] == hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert card["bundle"]["checkpoint"] == "checkpoints/best.safetensors"
    assert "Model card" in (bundle / "docs" / "MODEL_CARD.md").read_text(encoding="utf-8")
    report = json.loads((bundle / "export_report.json").read_text(encoding="utf-8"))
    assert "docs/MODEL_CARD.md" in report["files"]
