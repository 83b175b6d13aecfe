"""Remake docs/review.png from a trained model's predictions (not a stand-in mask).

    python scripts/make_figures.py --checkpoint RUN_DIR [--checkpoint RUN_DIR2 ...] \
        --data-dir data/Task09_Spleen [--case spleen_2] [--out docs/review.png]

Predicts the dataset's test scans (imagesTs) with the checkpoint(s) (several: an ensemble) and
its post-processing, then renders `unetr review` on one case with the reference (labelsTs) as a
contour. Rendering needs an X server; one is started with Xvfb when there is none.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, type=Path, help="run folder or checkpoint; repeat for an ensemble")
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset with imagesTs and labelsTs (e.g. the phantom)")
    parser.add_argument("--case", default=None, help="case to show (default: the first)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "review.png")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    from pipelines.predict import PredictRequest, run_predict
    from unetr_app.review.session import ReviewSession
    from unetr_app.review.viewer import screenshot_review

    with tempfile.TemporaryDirectory(prefix="unetr-figures-") as work:
        predictions = Path(work) / "predictions"
        report = run_predict(PredictRequest(input=args.data_dir / "imagesTs", output_dir=predictions, checkpoint=tuple(args.checkpoint), device=args.device))
        if report["summary"]["failed"]:
            print(f"{report['summary']['failed']} cases failed; see {predictions / 'predict_report.json'}", file=sys.stderr)
            return 1
        session = ReviewSession(args.data_dir / "imagesTs", predictions, args.data_dir / "labelsTs", Path(work) / "corrections")
        index = session.index_of(args.case) if args.case else 0
        screenshot_review(session, args.out, index)
    print(f"wrote {args.out} ({session.cases[index].name}, predicted by {', '.join(map(str, args.checkpoint))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
