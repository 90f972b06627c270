"""A session factory that can be switched off, like an unreachable system of record."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker


class Switchable:
    """A session factory that fails like an unreachable database while `down` is set."""

    def __init__(self, real: sessionmaker[Session]) -> None:
        self.real = real
        self.down = False

    def __call__(self) -> Session:
        if self.down:
            raise OperationalError("connect", {}, Exception("connection refused (test: database down)"))
        return self.real()
