"""Registry: promotion history, rollback as an undo, statuses following aliases, concurrent moves."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.support.models import fake_version_fields, registry_home
from tests.support.pg import scratch_database

from retrain.core.db import Alias, ModelVersion, Promotion
from retrain.models import registry

NAME = "flight_delay"


def _versions(sessions: sessionmaker[Session], n: int) -> list[str]:
    return [registry.register_version(sessions, **fake_version_fields(i + 1)).version for i in range(n)]


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return registry_home(tmp_path)[1]


def test_versions_are_numbered_and_resolvable_by_tag(sessions: sessionmaker[Session]) -> None:
    assert _versions(sessions, 3) == ["v1", "v2", "v3"]
    assert registry.get_version(sessions, "flight_delay:fake2").version == "v2"
    assert registry.get_version(sessions, "fake3").version == "v3"
    assert [v.status for v in registry.list_versions(sessions, NAME)] == ["candidate"] * 3
    with pytest.raises(registry.UnknownVersionError, match="v9"):
        registry.get_version(sessions, "v9")


def test_promote_promote_rollback_restores_first_champion(sessions: sessionmaker[Session]) -> None:
    v1, v2, _ = _versions(sessions, 3)
    registry.promote(sessions, v1, "first champion", "alice")
    registry.promote(sessions, v2, "better on June", "flow:evaluate", None)
    before, after = registry.rollback(sessions, "v2 misbehaves in serving", "bob", NAME)

    assert (before.version, after.version) == (v2, v1)
    assert registry.get_alias(sessions, registry.CHAMPION, NAME).version == v1  # type: ignore[union-attr]
    rows = registry.history(sessions, NAME)
    assert [(h.action, h.from_version, h.to_version) for h in rows] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1)]
    assert [h.reason for h in rows] == ["first champion", "better on June", "v2 misbehaves in serving"]
    assert [h.actor for h in rows] == ["alice", "flow:evaluate", "bob"]
    statuses = {v.version: v.status for v in registry.list_versions(sessions, NAME)}
    assert statuses == {"v1": "champion", "v2": "archived", "v3": "candidate"}


def test_rollback_is_an_undo_stack_and_stops_at_the_first_champion(sessions: sessionmaker[Session]) -> None:
    v1, v2, v3 = _versions(sessions, 3)
    for v in (v1, v2, v3):
        registry.promote(sessions, v, f"promote {v}", "t")
    assert registry.rollback(sessions, "undo v3", "t", NAME)[1].version == v2
    assert registry.rollback(sessions, "undo v2", "t", NAME)[1].version == v1
    with pytest.raises(registry.RegistryError, match="first champion"):
        registry.rollback(sessions, "nothing left", "t", NAME)
    assert registry.get_alias(sessions, registry.CHAMPION, NAME).version == v1  # type: ignore[union-attr]


def test_rollback_without_champion_is_refused(sessions: sessionmaker[Session]) -> None:
    _versions(sessions, 1)
    with pytest.raises(registry.RegistryError, match="no champion"):
        registry.rollback(sessions, "why not", "t", NAME)
    assert registry.history(sessions, NAME) == []


def test_every_move_needs_a_reason_and_nothing_is_half_done(sessions: sessionmaker[Session]) -> None:
    v1, v2 = _versions(sessions, 2)
    registry.promote(sessions, v1, "first", "t")
    with pytest.raises(registry.RegistryError, match="reason"):
        registry.promote(sessions, v2, "  ", "t")
    assert registry.get_alias(sessions, registry.CHAMPION, NAME).version == v1  # type: ignore[union-attr]
    assert registry.get_version(sessions, v1).status == "champion"
    assert registry.get_version(sessions, v2).status == "candidate"
    assert len(registry.history(sessions, NAME)) == 1


def test_challenger_alias_and_promotion_of_the_challenger(sessions: sessionmaker[Session]) -> None:
    v1, v2, v3 = _versions(sessions, 3)
    registry.promote(sessions, v1, "first", "t")
    registry.set_challenger(sessions, v2, "shadow it", "t")
    registry.set_challenger(sessions, v3, "shadow this one instead", "t")
    assert registry.get_version(sessions, v2).status == "candidate"
    with pytest.raises(registry.RegistryError, match="champion"):
        registry.set_challenger(sessions, v1, "no", "t")
    registry.promote(sessions, v3, "passed the gates", "t", None)
    assert registry.get_alias(sessions, registry.CHALLENGER, NAME) is None
    assert registry.get_alias(sessions, registry.CHAMPION, NAME).version == v3  # type: ignore[union-attr]
    moves = [(h.alias, h.action, h.to_version) for h in registry.history(sessions, NAME)]
    assert moves == [("champion", "promote", v1), ("challenger", "set", v2), ("challenger", "set", v3),
                     ("champion", "promote", v3), ("challenger", "clear", None)]
    registry.set_challenger(sessions, v2, "again", "t")
    registry.clear_challenger(sessions, NAME, "failed the gates", "t", status="rejected")
    assert registry.get_version(sessions, v2).status == "rejected"


def test_promote_refuses_when_the_champion_changed_since_the_decision(sessions: sessionmaker[Session]) -> None:
    v1, v2, v3 = _versions(sessions, 3)
    first = registry.promote(sessions, v1, "first", "t")
    registry.promote(sessions, v2, "someone else promoted", "t")
    with pytest.raises(registry.ChampionChangedError):
        registry.promote(sessions, v3, "decided against v1", "t", expect_champion_id=first.id)
    assert registry.get_alias(sessions, registry.CHAMPION, NAME).version == v2  # type: ignore[union-attr]
    with pytest.raises(registry.RegistryError, match="already the champion"):
        registry.promote(sessions, v2, "again", "t")


def _concurrent_promotions(sessions: sessionmaker[Session], n: int = 6) -> None:
    versions = _versions(sessions, n)
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def worker(version: str) -> None:
        try:
            barrier.wait()
            registry.promote(sessions, version, f"race {version}", f"thread-{version}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with sessions() as s:
        aliases = list(s.scalars(select(Alias).where(Alias.model_name == NAME, Alias.alias == "champion")))
        champions = list(s.scalars(select(ModelVersion).where(ModelVersion.status == "champion")))
        promotions = list(s.scalars(select(Promotion).order_by(Promotion.id)))
        archived = s.scalar(select(func.count()).select_from(ModelVersion).where(ModelVersion.status == "archived"))
    assert len(aliases) == 1
    assert len(champions) == 1 and champions[0].id == aliases[0].version_id
    assert aliases[0].generation == n
    assert archived == n - 1
    # no lost update: each move starts where the previous one ended
    assert len(promotions) == n
    assert promotions[0].from_version_id is None
    for prev, cur in zip(promotions, promotions[1:], strict=False):
        assert cur.from_version_id == prev.to_version_id
    assert promotions[-1].to_version_id == aliases[0].version_id


def test_concurrent_promotions_leave_one_champion_sqlite(sessions: sessionmaker[Session]) -> None:
    _concurrent_promotions(sessions)


@pytest.fixture
def pg_sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with scratch_database("retrain_test") as url:
        _, sessions = registry_home(tmp_path, database_url=url)
        try:
            yield sessions
        finally:
            sessions.kw["bind"].dispose()


@pytest.mark.postgres
def test_concurrent_promotions_leave_one_champion_postgres(pg_sessions: sessionmaker[Session]) -> None:
    _concurrent_promotions(pg_sessions)


@pytest.mark.postgres
def test_promote_promote_rollback_postgres(pg_sessions: sessionmaker[Session]) -> None:
    test_promote_promote_rollback_restores_first_champion(pg_sessions)
