"""Options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="replace outputs that already exist")]
OutDirOption = Annotated[Path | None, typer.Option("--out", help="output folder")]
