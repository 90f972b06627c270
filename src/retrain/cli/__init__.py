"""The `retrain` command: one module per area, each with `register(app)`."""
