"""The run folder: its file names, and the start-or-resume decision train and pretrain share."""

from __future__ import annotations

import pytest
import yaml

from unetr_app.config import load_run_config
from unetr_app.errors import UsageError
from unetr_app.io.run_dir import RunDir, start_or_resume


def test_every_file_of_a_run_has_one_name(tmp_path):
    run = RunDir(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in (run.config, run.split, run.metrics, run.summary, run.curves,
                                                          run.last, run.best, run.postprocessing, run.validation)] == [
        "config.yaml", "split.json", "metrics.jsonl", "summary.json", "curves.png",
        "checkpoints/last.pt", "checkpoints/best.pt", "postprocessing.json", "validation"]
    assert not run.is_started and not run.is_finished and not run.has_checkpoint and run.read_metrics() == []
    run.metrics.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert [m["step"] for m in run.read_metrics()] == [1, 2]


def _recorded_run(tmp_path):
    config = load_run_config("spleen", profile="cpu-demo")
    RunDir(tmp_path).config.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return config


def _start(out, resume, **kwargs):
    return start_or_resume(out, resume=resume, new_config=lambda: load_run_config("spleen", profile="cpu-demo"),
                           run_name=lambda c: f"{c.task.name}-{c.model.name}", **kwargs)


def test_resume_continues_the_recorded_run(tmp_path):
    recorded = _recorded_run(tmp_path)
    start = _start(tmp_path, True, options={"--model": (recorded.model.name, lambda c: c.model.name)},
                   overrides=[f"optimizer.lr={recorded.optimizer.lr}"])
    assert start.resumed and start.run.path == tmp_path and start.config.to_dict() == recorded.to_dict()


def test_resume_refuses_options_that_would_change_the_run(tmp_path):
    _recorded_run(tmp_path)
    with pytest.raises(UsageError, match=r"would ignore --model vit_base .*; --set optimizer.lr=0.5 \(the run has optimizer.lr="):
        _start(tmp_path, True, options={"--model": ("vit_base", lambda c: c.model.name)}, overrides=["optimizer.lr=0.5"])


def test_a_new_run_gets_a_named_folder_and_resume_needs_out(tmp_path):
    start = _start(None, False)
    assert not start.resumed and start.run.path.parent.name == "runs" and start.run.path.name.startswith("spleen-")
    assert _start(tmp_path, True).resumed is False  # nothing recorded there yet: a new run in that folder
    with pytest.raises(UsageError, match="--resume needs --out"):
        _start(None, True)
