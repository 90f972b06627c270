"""Retraining policies replayed over a labelled history, period by period, with their results and report."""
