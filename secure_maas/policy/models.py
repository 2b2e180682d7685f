"""Access-control tables: principals, roles, membership, links, rules and quota counters.

A link (`principal_links`) lets an external subject (`ext:<alias>:<sub>`) speak for a local
principal; only an admin makes one, and it goes with its principal.

Rules keep their subject and model pattern as text (a rule may name a role or an external
subject that has no row yet); `rule_key`, a digest of everything that identifies a rule, is
unique so two identical grants cannot both land, whichever worker writes them. Quota counters
are one row per (subject, model, period, window start), updated atomically by every worker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from secure_maas.db.base import Base, IdType, UTCDateTime
from secure_maas.timeutil import utcnow

#: Change-counter scopes (see db/state.py) bumped by every change of their tables.
POLICY_SCOPE = "policy"
PRINCIPALS_SCOPE = "principals"

principal_roles = sa.Table(
    "principal_roles",
    Base.metadata,
    sa.Column(
        "principal_id",
        IdType,
        sa.ForeignKey("principals.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "role_id",
        IdType,
        sa.ForeignKey("roles.id", ondelete="CASCADE"),
        primary_key=True,
        index=True,
    ),
)


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class PrincipalRow(Base):
    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True, nullable=False)
    disabled: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    roles: Mapped[list[Role]] = relationship(secondary=principal_roles, order_by=Role.name)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(sorted(role.name for role in self.roles))


class PrincipalLink(Base):
    """An external subject an admin linked to a local principal (at most one per subject)."""

    __tablename__ = "principal_links"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    external_subject: Mapped[str] = mapped_column(sa.String(128), unique=True, nullable=False)
    principal_id: Mapped[int] = mapped_column(
        IdType, sa.ForeignKey("principals.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)

    principal: Mapped[PrincipalRow] = relationship()


class AccessRule(Base):
    __tablename__ = "access_rules"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    rule_key: Mapped[str] = mapped_column(sa.String(64), unique=True, nullable=False)
    effect: Mapped[str] = mapped_column(sa.String(8), nullable=False)
    subject: Mapped[str] = mapped_column(sa.String(140), nullable=False, index=True)
    model: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    model_version: Mapped[int | None] = mapped_column(sa.Integer)
    model_label: Mapped[str | None] = mapped_column(sa.String(64))
    actions: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_rows: Mapped[int | None] = mapped_column(sa.Integer)
    max_epsilon: Mapped[float | None] = mapped_column(sa.Float)
    quotas: Mapped[list[dict[str, Any]] | None] = mapped_column(sa.JSON)
    finite_inputs: Mapped[bool] = mapped_column(
        sa.Boolean, nullable=False, default=False, server_default=sa.false()
    )
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), nullable=False)


class QuotaCounter(Base):
    """Requests and rows one subject sent to one model in one fixed window.

    `window_start` is in Unix seconds (UTC), a plain integer so both backends compare and key
    it identically.
    """

    __tablename__ = "quota_counters"

    subject: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    period: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    window_start: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, index=True)
    request_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    row_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
