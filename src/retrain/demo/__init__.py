"""`retrain demo`: a use case's history replayed through the whole loop with real servers."""
