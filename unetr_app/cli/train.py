"""`unetr train`."""
