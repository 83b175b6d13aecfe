"""`python -m unetr_app ...` (and `torchrun -m unetr_app ...`) runs the CLI."""

from unetr_app.cli.app import main

main()
