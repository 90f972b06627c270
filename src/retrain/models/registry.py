"""The model registry: versions, the `champion` / `challenger` aliases, and the promotion history.

Every alias move is one transaction that also writes a `promotions` row (from, to, when, why, who,
which evaluation). Moves are compare-and-swap on `aliases.generation` (plus `SELECT ... FOR UPDATE`
where the database supports it): a move whose view of the alias went stale aborts and is retried
from scratch, so two concurrent promotions serialize; neither can leave two champions, a status
that disagrees with the alias, or a history row whose "from" is wrong.

Rollback treats the champion history as an undo stack: `promote`/`set` push, `rollback` pops.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from retrain.core.config import Settings
from retrain.core.db import (
    Alias,
    ModelVersion,
    Promotion,
    make_engine,
    session_factory,
    transaction,
    upgrade,
    utcnow,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
STATUSES = ("candidate", "challenger", "champion", "archived", "rejected")
T = TypeVar("T")
ANY_CHAMPION: Any = object()  # `expect_champion_id` default: promote whatever the champion is


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says which rule."""


class UnknownVersionError(RegistryError, LookupError):
    """No model version matches the given reference."""


class StaleAliasError(RegistryError):
    """The alias changed under us (concurrent move); the transaction is retried."""


class ChampionChangedError(RegistryError):
    """The champion is no longer the one a decision was made against."""


@dataclass(frozen=True)
class HistoryEntry:
    """One alias move, with version strings resolved."""

    id: int
    model_name: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    reason: str
    actor: str
    evaluation_id: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "created_at": self.created_at.isoformat()}


def open_registry(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the system of record, migrated to the latest schema (idempotent)."""
    settings.ensure_dirs()
    upgrade(settings.db_url)
    return session_factory(make_engine(settings.db_url))


# ------------------------------------------------------------------------------------ retrying


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, StaleAliasError):
        return True
    if isinstance(exc, OperationalError):  # SQLite: "database is locked" / busy snapshot
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    if isinstance(exc, IntegrityError):  # PostgreSQL serialization / concurrent first insert
        return "aliases" in str(exc).lower() or "unique" in str(exc).lower()
    return False


def atomic(sessions: sessionmaker[Session], work: Callable[[Session], T], *, attempts: int = 20) -> T:
    """Run `work` in one transaction; on a concurrent-move conflict, roll back and run it again."""
    for attempt in range(1, attempts + 1):
        try:
            with transaction(sessions) as session:
                return work(session)
        except Exception as exc:
            if attempt == attempts or not _transient(exc):
                raise
            time.sleep(random.uniform(0.005, 0.03) * attempt)
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------ versions


def register_version(sessions: sessionmaker[Session], **fields: Any) -> ModelVersion:
    """Insert a `candidate` version named `v<N>` (N = count of versions + 1, retried on a clash)."""
    fields.setdefault("status", "candidate")
    explicit = fields.pop("version", None)

    def work(session: Session) -> ModelVersion:
        n = session.scalar(select(func.count()).select_from(ModelVersion)) or 0
        row = ModelVersion(version=explicit or f"v{n + 1}", **fields)
        session.add(row)
        session.flush()
        return row

    return atomic(sessions, work)


def find_version(session: Session, ref: str, model_name: str | None = None) -> ModelVersion:
    """Resolve a version by registry name (`v3`), BentoML tag (`name:abc`) or tag version (`abc`)."""
    if not ref or not ref.strip():
        raise UnknownVersionError("version: must be non-empty")
    stmt = select(ModelVersion).where(
        or_(ModelVersion.version == ref, ModelVersion.bento_model_tag == ref,
            ModelVersion.bento_model_tag.like(f"%:{ref}"))
    )
    if model_name:
        stmt = stmt.where(ModelVersion.model_name == model_name)
    rows = list(session.scalars(stmt))
    if not rows:
        raise UnknownVersionError(f"version {ref!r}: no such model version"
                                  + (f" of {model_name}" if model_name else "") + " (see `retrain models list`)")
    if len(rows) > 1:
        raise UnknownVersionError(f"version {ref!r}: ambiguous, matches {', '.join(r.version for r in rows)}")
    return rows[0]


def get_version(sessions: sessionmaker[Session], ref: str, model_name: str | None = None) -> ModelVersion:
    with sessions() as session:
        return find_version(session, ref, model_name)


def list_versions(sessions: sessionmaker[Session], model_name: str) -> list[ModelVersion]:
    with sessions() as session:
        stmt = select(ModelVersion).where(ModelVersion.model_name == model_name).order_by(ModelVersion.id)
        return list(session.scalars(stmt))


def set_status(sessions: sessionmaker[Session], ref: str, status: str) -> None:
    """Set a version's status (aliased versions keep theirs: the alias decides)."""
    def work(session: Session) -> None:
        mark_status_in(session, find_version(session, ref), status)

    atomic(sessions, work)


def mark_status_in(session: Session, row: ModelVersion, status: str) -> None:
    if status not in STATUSES:
        raise RegistryError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    if row.status in (CHAMPION, CHALLENGER) and status != row.status and _alias_points_at(session, row):
        raise RegistryError(f"version {row.version} is the current {row.status}; move the alias instead")
    row.status = status


def _alias_points_at(session: Session, row: ModelVersion) -> bool:
    stmt = select(Alias.alias).where(Alias.model_name == row.model_name, Alias.version_id == row.id)
    return session.scalar(stmt) is not None


# ------------------------------------------------------------------------------------ aliases


def alias_in(session: Session, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, within an open transaction."""
    vid = session.scalar(select(Alias.version_id).where(Alias.model_name == model_name, Alias.alias == alias))
    return None if vid is None else session.get(ModelVersion, vid)


def get_alias(sessions: sessionmaker[Session], alias: str, model_name: str) -> ModelVersion | None:
    with sessions() as session:
        return alias_in(session, model_name, alias)


@dataclass(frozen=True)
class _Locked:
    """An alias as read (and, on PostgreSQL, row-locked) at the start of a move."""

    model_name: str
    alias: str
    version: ModelVersion | None
    generation: int | None


def _lock(session: Session, model_name: str, alias: str) -> _Locked:
    """Read an alias with `FOR UPDATE` (a no-op on SQLite, where the generation CAS guards instead)."""
    stmt = (select(Alias.version_id, Alias.generation)
            .where(Alias.model_name == model_name, Alias.alias == alias).with_for_update())
    row = session.execute(stmt).first()
    if row is None:
        return _Locked(model_name, alias, None, None)
    return _Locked(model_name, alias, session.get(ModelVersion, row.version_id), row.generation)


def lock_model(session: Session, model_name: str) -> None:
    """Serialize the rest of this transaction with the alias moves of `model_name` (call it first).

    PostgreSQL: `_lock` on the champion row (`SELECT ... FOR UPDATE`, as `promote`/`rollback` take it).
    SQLite has no row locks: take the database write lock now, as `BEGIN IMMEDIATE` does, so nothing
    this transaction reads next can change before it commits.
    """
    conn = session.connection()
    if conn.dialect.name != "sqlite":
        _lock(session, model_name, CHAMPION)
        return
    raw: Any = conn.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:  # a transaction is open already: a no-op write takes the write lock (a stale one fails and is retried)
        conn.execute(update(Alias).where(Alias.model_name == model_name, Alias.alias == CHAMPION)
                     .values(generation=Alias.generation))


def _move(session: Session, locked: _Locked, target: ModelVersion | None, *, action: str,
          reason: str, actor: str, evaluation_id: int | None) -> ModelVersion | None:
    """Compare-and-swap one alias (against what `_lock` read) and record the move; returns the old version."""
    if not reason or not reason.strip():
        raise RegistryError("reason: every alias move needs a reason")
    if not actor or not actor.strip():
        raise RegistryError("actor: every alias move needs an actor")
    name, alias, before = locked.model_name, locked.alias, locked.version
    key = (Alias.model_name == name) & (Alias.alias == alias)
    if locked.generation is None:
        if target is None:
            return None
        try:
            session.execute(insert(Alias).values(model_name=name, alias=alias, version_id=target.id,
                                                 generation=1, updated_at=utcnow()))
        except IntegrityError as exc:
            raise StaleAliasError(f"{alias} of {name} was created concurrently") from exc
    else:
        stmt: Any = (delete(Alias) if target is None else update(Alias).values(
            version_id=target.id, generation=locked.generation + 1, updated_at=utcnow()))
        result: Any = session.execute(stmt.where(key, Alias.generation == locked.generation))
        if result.rowcount != 1:
            raise StaleAliasError(f"{alias} of {name} moved concurrently")
    session.add(Promotion(model_name=name, alias=alias, action=action,
                          from_version_id=before.id if before else None, to_version_id=target.id if target else None,
                          reason=reason.strip(), actor=actor.strip(), evaluation_id=evaluation_id))
    return before


def _clear_challenger_if(session: Session, version: ModelVersion, *, reason: str, actor: str,
                         evaluation_id: int | None) -> None:
    """A version that becomes champion stops being the challenger (the clear is recorded too)."""
    challenger = _lock(session, version.model_name, CHALLENGER)
    if challenger.version is not None and challenger.version.id == version.id:
        _move(session, challenger, None, action="clear", reason=reason, actor=actor, evaluation_id=evaluation_id)


def promote_in(session: Session, ref: str, reason: str, actor: str, evaluation_id: int | None = None, *,
               model_name: str | None = None, bento_tag: str | None = None,
               expect_champion_id: int | None = ANY_CHAMPION, action: str = "promote") -> ModelVersion:
    """Make `ref` the champion inside an open transaction (see `promote`)."""
    target = find_version(session, ref, model_name)
    name = target.model_name
    locked = _lock(session, name, CHAMPION)
    champion = locked.version
    if champion is not None and champion.id == target.id:
        raise RegistryError(f"version {target.version} is already the champion of {name}")
    if expect_champion_id is not ANY_CHAMPION and (champion.id if champion else None) != expect_champion_id:
        raise ChampionChangedError(
            f"champion of {name} changed since the decision (now {champion.version if champion else 'none'}); "
            "evaluate again against the current champion")
    before = _move(session, locked, target, action=action, reason=reason, actor=actor,
                   evaluation_id=evaluation_id)
    if before is not None:
        before.status = "archived"
    _clear_challenger_if(session, target, reason=f"became champion: {reason}", actor=actor,
                         evaluation_id=evaluation_id)
    target.status = CHAMPION
    if bento_tag is not None:
        target.bento_tag = bento_tag
    return target


def promote(sessions: sessionmaker[Session], version: str, reason: str, actor: str,
            evaluation_id: int | None = None, *, model_name: str | None = None, bento_tag: str | None = None,
            expect_champion_id: int | None = ANY_CHAMPION) -> ModelVersion:
    """Move the champion alias to `version`; the old champion is archived.

    `expect_champion_id` (the champion a decision was made against; None for "no champion") makes the
    move refuse if the champion changed in the meantime.
    """
    return atomic(sessions, lambda s: promote_in(s, version, reason, actor, evaluation_id, model_name=model_name,
                                                 bento_tag=bento_tag, expect_champion_id=expect_champion_id))


def set_challenger_in(session: Session, ref: str, reason: str, actor: str, evaluation_id: int | None = None,
                      *, model_name: str | None = None) -> ModelVersion:
    target = find_version(session, ref, model_name)
    name = target.model_name
    champion = _lock(session, name, CHAMPION).version
    if champion is not None and champion.id == target.id:
        raise RegistryError(f"version {target.version} is the champion; it cannot also be the challenger")
    current = _lock(session, name, CHALLENGER)
    if current.version is not None and current.version.id == target.id:
        return target
    before = _move(session, current, target, action="set", reason=reason, actor=actor,
                   evaluation_id=evaluation_id)
    if before is not None and before.status == CHALLENGER:
        before.status = "candidate"
    target.status = CHALLENGER
    return target


def set_challenger(sessions: sessionmaker[Session], version: str, reason: str, actor: str,
                   evaluation_id: int | None = None, *, model_name: str | None = None) -> ModelVersion:
    """Point the challenger alias at `version` (the serving shadow scores it)."""
    return atomic(sessions, lambda s: set_challenger_in(s, version, reason, actor, evaluation_id,
                                                        model_name=model_name))


def clear_challenger_in(session: Session, model_name: str, reason: str, actor: str,
                        evaluation_id: int | None = None, *, status: str = "candidate") -> ModelVersion | None:
    before = _move(session, _lock(session, model_name, CHALLENGER), None, action="clear", reason=reason,
                   actor=actor, evaluation_id=evaluation_id)
    if before is not None:
        mark_status_in(session, before, status)
    return before


def clear_challenger(sessions: sessionmaker[Session], model_name: str, reason: str, actor: str,
                     evaluation_id: int | None = None, *, status: str = "candidate") -> ModelVersion | None:
    """Remove the challenger alias; the version gets `status` (e.g. `rejected`)."""
    return atomic(sessions, lambda s: clear_challenger_in(s, model_name, reason, actor, evaluation_id,
                                                          status=status))


def clear_challenger_set_by(sessions: sessionmaker[Session], model_name: str, set_reason: str, reason: str,
                            actor: str, *, evaluation_id: int | None = None,
                            status: str = "candidate") -> ModelVersion | None:
    """Remove the challenger alias only while it points at a version that a `set` move with `set_reason` chose.

    How a failed or crashed retrain takes back its own challenger without touching one set since by
    someone else. Returns the cleared version, or None when there was nothing of ours to clear.
    """
    def work(session: Session) -> ModelVersion | None:
        locked = _lock(session, model_name, CHALLENGER)
        if locked.version is None:
            return None
        ours = session.scalar(select(Promotion.id).where(
            Promotion.model_name == model_name, Promotion.alias == CHALLENGER, Promotion.action == "set",
            Promotion.to_version_id == locked.version.id, Promotion.reason == set_reason).limit(1))
        if ours is None:
            return None
        before = _move(session, locked, None, action="clear", reason=reason, actor=actor,
                       evaluation_id=evaluation_id)
        if before is not None:
            mark_status_in(session, before, status)
        return before

    return atomic(sessions, work)


def champion_stack(session: Session, model_name: str) -> list[int]:
    """Champion version ids as an undo stack replayed from the history."""
    rows = session.scalars(select(Promotion).where(Promotion.model_name == model_name,
                                                   Promotion.alias == CHAMPION).order_by(Promotion.id))
    stack: list[int] = []
    for row in rows:
        if row.action == "rollback":
            if stack:
                stack.pop()
        elif row.to_version_id is not None:
            stack.append(row.to_version_id)
    return stack


def rollback_in(session: Session, model_name: str, reason: str, actor: str) -> tuple[ModelVersion, ModelVersion]:
    locked = _lock(session, model_name, CHAMPION)
    current = locked.version
    if current is None:
        raise RegistryError(f"rollback: {model_name} has no champion")
    stack = champion_stack(session, model_name)
    if not stack or stack[-1] != current.id:
        raise RegistryError(f"rollback: the history of {model_name} does not end at the current champion "
                            f"{current.version}; promote explicitly instead")
    if len(stack) < 2:
        raise RegistryError(f"rollback: {current.version} is the first champion of {model_name}; "
                            "there is no earlier champion to return to")
    previous = session.get(ModelVersion, stack[-2])
    assert previous is not None
    _move(session, locked, previous, action="rollback", reason=reason, actor=actor, evaluation_id=None)
    current.status = "archived"
    _clear_challenger_if(session, previous, reason=f"rolled back to champion: {reason}", actor=actor,
                         evaluation_id=None)
    previous.status = CHAMPION
    return current, previous


def rollback(sessions: sessionmaker[Session], reason: str, actor: str,
             model_name: str) -> tuple[ModelVersion, ModelVersion]:
    """Return the champion alias to the previous champion; returns (from, to). Recorded as `rollback`."""
    return atomic(sessions, lambda s: rollback_in(s, model_name, reason, actor))


def _latest_promotion(session: Session, model_name: str) -> Promotion | None:
    return session.scalars(select(Promotion).where(Promotion.model_name == model_name,
                                                   Promotion.alias == CHAMPION)
                           .order_by(Promotion.id.desc()).limit(1)).first()


def replaced_champion(sessions: sessionmaker[Session], model_name: str,
                 now: datetime, hours: float) -> tuple[ModelVersion, ModelVersion, datetime] | None:
    """(new champion, the champion it replaced, promoted at) while the latest champion move is a promotion
    made less than `hours` before `now` (the guardrail's window); None otherwise (no promotion, a rollback,
    or the window is over). The rows are detached from their session."""
    with sessions() as session:
        move = _latest_promotion(session, model_name)
        if move is None or move.action != "promote" or move.from_version_id is None:
            return None
        if hours <= 0 or now - move.created_at >= timedelta(hours=hours):
            return None
        new, old = session.get(ModelVersion, move.to_version_id), session.get(ModelVersion, move.from_version_id)
        alias = session.scalars(select(Alias).where(Alias.model_name == model_name,
                                                    Alias.alias == CHAMPION)).first()
        if new is None or old is None or alias is None or alias.version_id != new.id:
            return None
        session.expunge_all()
        return new, old, move.created_at


def history(sessions: sessionmaker[Session], model_name: str, alias: str | None = None,
            limit: int | None = None) -> list[HistoryEntry]:
    """Alias moves, oldest first."""
    with sessions() as session:
        stmt = select(Promotion).where(Promotion.model_name == model_name).order_by(Promotion.id)
        if alias:
            stmt = stmt.where(Promotion.alias == alias)
        rows = list(session.scalars(stmt))
        ids = {r.from_version_id for r in rows} | {r.to_version_id for r in rows}
        ids.discard(None)
        names = dict(session.execute(select(ModelVersion.id, ModelVersion.version)
                                     .where(ModelVersion.id.in_(ids))).tuples().all()) if ids else {}
    out = [HistoryEntry(id=r.id, model_name=r.model_name, alias=r.alias, action=r.action,
                        from_version=names.get(r.from_version_id) if r.from_version_id else None,
                        to_version=names.get(r.to_version_id) if r.to_version_id else None,
                        reason=r.reason, actor=r.actor, evaluation_id=r.evaluation_id, created_at=r.created_at)
           for r in rows]
    return out[-limit:] if limit else out
