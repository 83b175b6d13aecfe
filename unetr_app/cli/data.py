"""`unetr data synth` and `unetr data check`."""
