"""Tracking data (in progress: readers of the real layouts so far)."""
