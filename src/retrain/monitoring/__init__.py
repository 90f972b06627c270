"""Drift and decay of the champion over a window: statistics, rules, and the alerts they send."""
