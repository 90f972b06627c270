"""The data a model reads: the landed parquet parts and the use case's Feast store."""
