"""What every use case's service runs: model following, the request runtime, the prediction log, metrics."""
