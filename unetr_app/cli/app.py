"""The root of the `unetr` CLI: wires the command groups and formats errors in one place.

A `UnetrError` (bad input, missing data, invalid config) becomes one line on stderr and its exit
code; set UNETR_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from typer.core import TyperGroup

from unetr_app.errors import UnetrError


class ErrorReportingGroup(TyperGroup):
    """Runs the chosen command and turns our errors into `error: <message>` + exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UnetrError as err:
            if os.environ.get("UNETR_DEBUG"):
                raise
            typer.secho(f"error: {err}", fg="red", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", fg="yellow", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=ErrorReportingGroup,
    help="UNETR and the vision-transformer family for 3D medical image segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"unetr {version('unetr')}")
        except PackageNotFoundError:  # running from a checkout that was never installed
            from unetr_app import __version__

            typer.echo(f"unetr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """UNETR and the vision-transformer family for 3D medical image segmentation."""


data_app = typer.Typer(help="Make, check and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _register_commands() -> None:
    # One line per command or group; each module keeps its options next to its command.
    from unetr_app.cli import data, train

    data_app.command("synth")(data.synth)
    data_app.command("check")(data.check)
    app.command("train")(train.train)
    from unetr_app.cli import predict; app.command("predict")(predict.predict)  # noqa: E702
    from unetr_app.cli import evaluate; app.command("evaluate")(evaluate.evaluate)  # noqa: E702
    from unetr_app.cli import review

    app.command("review")(review.review)
    from unetr_app.cli import export; app.command("export")(export.export)  # noqa: E702
    from unetr_app.cli.models import models_app; app.add_typer(models_app, name="models")  # noqa: E702
    from unetr_app.cli import compare, postprocess; app.command("compare")(compare.compare); app.command("postprocess")(postprocess.postprocess)  # noqa: E702
    from unetr_app.cli import attention; app.command("attention")(attention.attention)  # noqa: E702
    from unetr_app.cli import probe; app.command("probe")(probe.probe)  # noqa: E702
    from unetr_app.cli import qc; app.command("qc")(qc.qc)  # noqa: E702
    from unetr_app.cli import pretrain; app.command("pretrain")(pretrain.pretrain)  # noqa: E702
    from unetr_app.cli import plan; app.command("plan")(plan.plan)  # noqa: E702
    from unetr_app.cli import card; app.command("card")(card.card)  # noqa: E702


_register_commands()


def main() -> None:
    logging.basicConfig(level=os.environ.get("UNETR_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app(prog_name="unetr")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
