"""Human approval (`retrain_require_approval`): a challenger that passed every gate is promoted only when a
person approves; a rejection or the timeout clears it; who, when and why land in the promotion history.

The retrain runs through the real ledger and registry on a SQLite home; the person is a function here
(tests/e2e/test_approval_pause.py answers a real paused Prefect run).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from tests.support.models import RegistryHome, add_fake_version, migrated_home

from retrain.alerts import retraining
from retrain.alerts.approval import ApprovalDecision, describe
from retrain.core import db, events
from retrain.core.config import Settings
from retrain.models import registry

T0 = datetime(2013, 6, 1, 12, 0, tzinfo=UTC)
MODEL = "uc_a"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[RegistryHome]:
    home = migrated_home(Settings(home=tmp_path, model_name=MODEL, retrain_require_approval=True,
                                  retrain_build_bento=False, retrain_cooldown_hours=0))
    with mock.patch("retrain.core.clock.now", lambda _s: T0):
        _add(home.sessions, "v-champion")
        registry.promote(home.sessions, "v-champion", "first champion", "setup", model_name=MODEL)
        yield home


def _add(sessions: db.sessionmaker[db.Session], name: str) -> str:
    return add_fake_version(sessions, MODEL, name)


def _passed(version: str) -> Any:
    """What the evaluator returns when every gate passed and it was told not to act."""
    gate = SimpleNamespace(name="improvement", passed=True, skipped=False, detail="lower bound +0.012 > 0")
    decision = SimpleNamespace(decision="promote", promote=True, gates=[gate])
    return SimpleNamespace(evaluation_id=7, version=version, champion="v-champion", decision=decision,
                           promotion=None, window_from=T0, window_to=T0, n_rows=1234, report_html=None)


def _retrain(home: RegistryHome, answer: ApprovalDecision | None, *, evaluate: Any = None,
             during: Any = None) -> tuple[retraining.RetrainReport, list[Any]]:
    asked: list[Any] = []

    def approve(outcome: Any) -> ApprovalDecision:
        asked.append(outcome)
        if during is not None:
            during()
        assert answer is not None
        return answer

    def recorded(version: str, start: Any, end: Any) -> Any:
        with home.sessions.begin() as s:  # the evaluation row the evaluator would have recorded (id 7)
            s.add(db.Evaluation(id=7, model_name=MODEL, challenger_id=registry.find_version(s, version, MODEL).id,
                                window_from=T0, window_to=T0, n_rows=1234, decision="promote", reasons=[], gates=[],
                                metrics={}))
        return (evaluate or (lambda v, _a, _b: _passed(v)))(version, start, end)

    report = retraining.run_retrain(
        home.settings, home.sessions, events.AlertPayload(kind="manual", dedupe_key=f"k{id(answer)}", model=MODEL),
        T0, train=lambda _a, _b: _add(home.sessions, "v-new"), evaluate=recorded,
        approve=approve)
    return report, asked


def _champion(home: RegistryHome) -> str | None:
    row = registry.get_alias(home.sessions, registry.CHAMPION, MODEL)
    return row.version if row else None


def _challenger(home: RegistryHome) -> str | None:
    row = registry.get_alias(home.sessions, registry.CHALLENGER, MODEL)
    return row.version if row else None


WHEN = datetime(2013, 6, 1, 15, 30, tzinfo=UTC)


def test_approved_challenger_becomes_champion_with_who_when_why(home: RegistryHome) -> None:
    report, asked = _retrain(home, ApprovalDecision(True, "alice", "checked the slices", WHEN))
    assert len(asked) == 1 and report.decision == "promote (approved)"
    assert _champion(home) == "v-new"
    move = registry.history(home.sessions, MODEL, registry.CHAMPION)[-1]
    assert move.actor == "approver:alice" and move.to_version == "v-new"
    assert move.reason == ("evaluation 7: all gates passed; approved by alice at 2013-06-01T15:30:00+00:00: "
                           "checked the slices")
    assert report.approval == {"approved": True, "approver": "alice", "comment": "checked the slices",
                               "decided_at": WHEN.isoformat(), "timed_out": False}


@pytest.mark.parametrize(("answer", "actor", "verdict"), [
    (ApprovalDecision(False, "bob", "too close to the holidays", WHEN), "approver:bob",
     "rejected by bob at 2013-06-01T15:30:00+00:00: too close to the holidays"),
    (ApprovalDecision(False, "timeout", "no decision within 24 h", WHEN, timed_out=True), "approval-timeout",
     "not approved in time at 2013-06-01T15:30:00+00:00: no decision within 24 h"),
])
def test_rejection_or_timeout_keeps_the_champion_and_clears_the_challenger(
        home: RegistryHome, answer: ApprovalDecision, actor: str, verdict: str) -> None:
    report, _ = _retrain(home, answer)
    assert report.decision == ("reject (approval timed out)" if answer.timed_out else "reject (not approved)")
    assert _champion(home) == "v-champion" and _challenger(home) is None
    move = registry.history(home.sessions, MODEL, registry.CHALLENGER)[-1]
    assert move.action == "clear" and move.actor == actor
    assert move.reason == f"evaluation 7: all gates passed; {verdict}"
    assert registry.get_version(home.sessions, "v-new").status == "rejected"


def test_no_question_when_the_gates_reject(home: RegistryHome) -> None:
    def rejected(version: str, _a: Any, _b: Any) -> Any:
        out = _passed(version)
        out.decision = SimpleNamespace(decision="reject", promote=False, gates=[])
        return out

    report, asked = _retrain(home, ApprovalDecision(True, "alice", "", WHEN), evaluate=rejected)
    assert asked == [] and report.decision == "reject" and _champion(home) == "v-champion"


def test_approval_of_a_stale_evaluation_is_refused(home: RegistryHome) -> None:
    """The champion changed while the run waited: the approval no longer applies, nothing is promoted."""
    def operator_promotes() -> None:
        _add(home.sessions, "v-hotfix")
        registry.promote(home.sessions, "v-hotfix", "hotfix", "ops", model_name=MODEL)

    with pytest.raises(registry.RegistryError):
        _retrain(home, ApprovalDecision(True, "alice", "", WHEN), during=operator_promotes)
    assert _champion(home) == "v-hotfix" and _challenger(home) is None


def test_the_form_shows_the_evaluation() -> None:
    text = describe(MODEL, _passed("v-new"))
    assert "Promote `v-new`" in text and "Evaluation **7**" in text and "1,234 labelled rows" in text
    assert "| improvement | yes | lower bound +0.012 > 0 |" in text
