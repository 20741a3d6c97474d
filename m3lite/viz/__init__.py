"""Plotting helpers for the notebooks: pure functions that return matplotlib figures."""
