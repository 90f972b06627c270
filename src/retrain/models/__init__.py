"""Training, the BentoML model store, the registry (versions and aliases) and promotion."""
