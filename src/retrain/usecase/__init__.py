"""Use cases: the spec that declares a domain, finding and loading use-case folders, and `retrain init`."""
