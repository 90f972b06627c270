"""Optional human approval of a promotion (`retrain_require_approval`, per use case).

When a use case requires approval, the retrain flow evaluates without acting; a challenger that passed
every gate waits in a paused flow run for a person. The run pauses with a Prefect `RunInput` form
(approve, comment, approver) whose description is the evaluation summary and the report's path;
approve or reject it from the Prefect UI ("Resume") or with `retrain approve|reject RUN --comment`.
No answer within `retrain_approval_timeout_hours` rejects. Who decided, when and why is written into
the promotion history (the champion move, or the challenger's clearing).
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

TIMEOUT_APPROVER = "timeout"


@lru_cache(maxsize=1)
def approval_form() -> Any:
    """The `RunInput` a paused retrain shows: approve (or not), why, and who (Prefect imported here)."""
    from prefect.input import RunInput

    class ApprovalInput(RunInput):
        approve: bool = False
        comment: str = ""
        approver: str = ""

    return ApprovalInput


@dataclass(frozen=True)
class ApprovalDecision:
    """A person's (or the timeout's) answer to a promotion waiting for approval."""

    approved: bool
    approver: str
    comment: str
    decided_at: datetime
    timed_out: bool = False

    @property
    def actor(self) -> str:
        """The promotion history's actor: `approver:<name>`, or `approval-timeout`."""
        return "approval-timeout" if self.timed_out else f"approver:{self.approver or 'unknown'}"

    def reason(self, evaluation_id: int | None) -> str:
        """The promotion history's reason: the evaluation, the verdict, who, when and the comment."""
        verdict = "approved" if self.approved else ("not approved in time" if self.timed_out else "rejected")
        who = "" if self.timed_out else f" by {self.approver or 'unknown'}"
        note = f": {self.comment}" if self.comment else ""
        return (f"evaluation {evaluation_id}: all gates passed; {verdict}{who} at "
                f"{self.decided_at.isoformat(timespec='seconds')}{note}")[:2000]

    def as_json(self) -> dict[str, Any]:
        return {"approved": self.approved, "approver": self.approver, "comment": self.comment,
                "decided_at": self.decided_at.isoformat(), "timed_out": self.timed_out}


def describe(model_name: str, outcome: Any) -> str:
    """Markdown the approval form shows: the evaluation's decision, gates and report."""
    decision = outcome.decision
    lines = [f"### Promote `{outcome.version}` as the champion of `{model_name}`?",
             "",
             f"Evaluation **{outcome.evaluation_id}** on [{outcome.window_from:%Y-%m-%d}, "
             f"{outcome.window_to:%Y-%m-%d}) over {outcome.n_rows:,} labelled rows: every gate passed against "
             f"the champion `{outcome.champion or 'none'}`.", ""]
    gates = getattr(decision, "gates", []) or []
    if gates:
        lines += ["| gate | passed | detail |", "|---|---|---|"]
        for gate in gates:
            skipped = " (skipped)" if gate.skipped else ""
            lines.append(f"| {gate.name} | {'yes' if gate.passed else 'no'}{skipped} | "
                         f"{gate.detail.replace('|', '/')} |")
        lines.append("")
    if outcome.report_html:
        lines.append(f"Report: `{outcome.report_html}`")
    lines += ["", "Tick **approve** to promote, leave it unticked to reject; say why in **comment**."]
    return "\n".join(lines)


def ask_in_prefect(description: str, timeout_hours: float, *, poll_seconds: int = 5,
                   key: str | None = None) -> ApprovalDecision:
    """Pause the current flow run until someone answers the form, or the timeout rejects."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    timeout = max(1, round(timeout_hours * 3600))
    form = approval_form().with_initial_data(description=description, approve=False, comment="", approver="")
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=poll_seconds, key=key)
    except FlowPauseTimeout:
        return ApprovalDecision(False, TIMEOUT_APPROVER, f"no decision within {timeout_hours:g} h "
                                "(retrain_approval_timeout_hours)", datetime.now(UTC), timed_out=True)
    return ApprovalDecision(bool(answer.approve), answer.approver or "prefect-ui", answer.comment, datetime.now(UTC))


def answer(flow_run_id: str, *, approve: bool, comment: str, approver: str | None = None) -> None:
    """Resume a paused retrain with a decision (what `retrain approve|reject` does)."""
    from prefect.flow_runs import resume_flow_run

    try:
        run_id = UUID(flow_run_id)
    except ValueError as exc:
        raise ValueError(f"RUN: {flow_run_id!r} is not a flow run id (see `retrain approvals`)") from exc
    resume_flow_run(run_id, run_input={"approve": approve, "comment": comment,
                                       "approver": approver or getpass.getuser()})


def waiting(limit: int = 50) -> list[dict[str, Any]]:
    """Retrain runs paused for approval: id, name, since when, and the form's description."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            limit=limit)
        out = []
        for run in runs:
            params = run.parameters or {}
            out.append({"id": str(run.id), "name": run.name, "model": params.get("model_name"),
                        "since": run.state.timestamp.isoformat() if run.state and run.state.timestamp else None})
    return out
