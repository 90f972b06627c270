"""Settings, the SQL system of record, time, JSON state files and the local servers: what every stage uses."""
