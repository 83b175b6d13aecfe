"""The `unetr` command line. `app.py` wires the command groups; each module holds one group."""
