"""Remake the README's figures, each from the real run it pictures (no stand-ins).

    python scripts/make_figures.py review            # docs/review.png from runs/demo (run `make demo` first)
    python scripts/make_figures.py review --checkpoint RUN [--checkpoint RUN2 ...] --data-dir DIR --case NAME
    python scripts/make_figures.py time-to-dice      # benchmarks/results/time_to_dice.png (~40 min, a quiet 2-core CPU)
    python scripts/make_figures.py attention         # benchmarks/results/pretrain_attention_montage.png (~1 h)
    python scripts/make_figures.py all

`review` predicts the dataset's test scans (imagesTs) with the run(s) (several: an ensemble) and
their post-processing, then renders `unetr review` with the reference (labelsTs) as a contour on the
case of median Dice (neither the best nor the worst), or on `--case`. Rendering needs an X server; one is started with Xvfb when there is none. The other
figures are drawn by the benchmarks that measure them, which also write their JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# figure -> the benchmark command that measures and draws it
BENCHMARK_FIGURES = {
    "time-to-dice": ["benchmarks/time_to_dice.py", "--minutes", "2", "5", "10"],
    "attention": ["benchmarks/pretrain.py"],
}


def review_figure(checkpoints: list[Path], data_dir: Path, case: str | None, out: Path, device: str) -> int:
    from unetr_app.pipelines.predict import PredictRequest, run_predict
    from unetr_app.errors import UnetrError
    from unetr_app.review.session import ReviewSession
    from unetr_app.review.viewer import screenshot_review

    missing = [c for c in checkpoints if not c.exists()]
    if missing or not (data_dir / "imagesTs").is_dir():
        print(f"error: needs a trained run and a dataset with imagesTs: {', '.join(map(str, missing)) or data_dir / 'imagesTs'} "
              "not found (`make demo` makes both)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="unetr-figures-") as work:
        predictions = Path(work) / "predictions"
        report = run_predict(PredictRequest(input=data_dir / "imagesTs", output_dir=predictions, checkpoint=tuple(checkpoints), device=device))
        if report["summary"]["failed"]:
            print(f"{report['summary']['failed']} cases failed; see {predictions / 'predict_report.json'}", file=sys.stderr)
            return 1
        session = ReviewSession(data_dir / "imagesTs", predictions, data_dir / "labelsTs", Path(work) / "corrections")
        try:
            index = session.index_of(case) if case else median_dice_case(session)
        except UnetrError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        screenshot_review(session, out, index)
        dice = case_dice(session.cases[index])
    print(f"wrote {out} ({session.cases[index].name}, Dice {dice:.3f}, predicted by {', '.join(map(str, checkpoints))})")
    return 0


def case_dice(case) -> float:
    from unetr_app.evaluation.postprocess import dice
    from unetr_app.io.scans import read_volume, source_for

    return dice(read_volume(source_for(case.prediction)).array > 0, read_volume(case.reference).array > 0)


def median_dice_case(session) -> int:
    scores = [case_dice(c) for c in session.cases]
    return sorted(range(len(scores)), key=scores.__getitem__)[len(scores) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=["review", *BENCHMARK_FIGURES, "all"])
    parser.add_argument("--checkpoint", action="append", type=Path, help="review: run folder or checkpoint; repeat for an ensemble (default runs/demo)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "Task09_Spleen", help="review: dataset with imagesTs and labelsTs")
    parser.add_argument("--case", default=None, help="review: the case shown (default: the test case of median Dice)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "review.png", help="review: where the picture goes")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    if args.figure in ("review", "all"):
        status = review_figure(args.checkpoint or [ROOT / "runs" / "demo"], args.data_dir, args.case, args.out, args.device)
        if status:
            return status
    for name, command in BENCHMARK_FIGURES.items():
        if args.figure in (name, "all"):
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
