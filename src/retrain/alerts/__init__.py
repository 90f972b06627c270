"""Alert events, the ledger that admits or dedupes them, reconciliation of ended runs, and one retrain."""
