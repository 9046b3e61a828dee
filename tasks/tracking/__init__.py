"""Single-object RGB+X tracking (in progress: metrics so far)."""
