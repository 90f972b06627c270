"""Champion vs challenger on fresh data: metrics, the promotion gates, the decision and its report."""
