"""A flow that asks for approval exactly as the retrain flow does (run as a script by
tests/e2e/test_approval_pause.py).

Prints `RESULT <json>` with the decision once someone answers, or the timeout rejects.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from prefect import flow

from retrain.alerts import approval


@flow(name="approval-check")
def ask(timeout_hours: float) -> dict[str, Any]:
    decision = approval.ask_in_prefect("### Promote `v-new`?", timeout_hours, poll_seconds=1, key="approval-1")
    return decision.as_json()


if __name__ == "__main__":
    print("RESULT " + json.dumps(ask(float(sys.argv[1]))), flush=True)
