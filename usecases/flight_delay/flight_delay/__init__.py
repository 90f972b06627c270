"""The 2013 New York flights use case's own code: its data, raw-batch contract and ingestion, feature
tables, training sets, serving request models and demo. The engine (`retrain`) reaches it only through
the refs in `usecases/flight_delay/usecase.yaml`."""
