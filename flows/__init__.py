"""Prefect flows: thin orchestration over src/retrain."""
