"""Webhook endpoints, the events of jobs and batches, and their deliveries and attempts."""

from __future__ import annotations

from service.jobs.records import (
    Delivery,
    DeliveryAttempt,
    Job,
    JobEvent,
    NewAttempt,
    NotFound,
    TooManyWebhooks,
    Webhook,
    new_id,
)
from service.stores.sql.database import Connection, Database, claim_ids, retried
from service.stores.sql.rows import ATTEMPT, DELIVERY, EVENT, WEBHOOK

_DELIVERY_SQL = (
    f"SELECT {DELIVERY.select} FROM deliveries d"
    " JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.id = d.webhook_id"
)


_DUE_DELIVERIES_SQL = (
    "SELECT id FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY next_attempt_at, seq LIMIT ?"
)


def require_webhook(conn: Connection, tenant: str, webhook_id: str | None) -> None:
    """NotFound unless `webhook_id` (if any) names a live endpoint of `tenant`."""
    if webhook_id is None:
        return
    found = conn.execute(
        "SELECT 1 FROM webhooks WHERE id = ? AND tenant = ? AND deleted_at IS NULL", (webhook_id, tenant)
    ).fetchone()
    if found is None:
        raise NotFound(f"No webhook '{webhook_id}'.")


def record_event(
    conn: Connection,
    subject: str,
    subject_id: str,
    tenant: str,
    webhook_id: str | None,
    type: str,
    payload: str,
    now: int,
) -> JobEvent:
    """Insert-or-get the event of a job or batch (`subject`: "job_id" or "batch_id") of this type, then one delivery
    to its endpoint: exactly once however often called. A disabled endpoint gets a `disabled` delivery (visible in
    its history); a deleted one gets none."""
    conn.execute(
        f"INSERT INTO events (id, {subject}, tenant, type, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)"
        f" ON CONFLICT ({subject}, type) DO NOTHING",
        (new_id("evt"), subject_id, tenant, type, payload, now),
    )
    event = EVENT(
        conn.execute(
            f"SELECT {EVENT.select} FROM events WHERE {subject} = ? AND type = ?", (subject_id, type)
        ).fetchone()
    )
    if webhook_id is None:
        return event
    webhook = conn.execute(
        "SELECT disabled_at FROM webhooks WHERE id = ? AND deleted_at IS NULL", (webhook_id,)
    ).fetchone()
    if webhook is not None:
        disabled = webhook[0] is not None
        conn.execute(
            "INSERT INTO deliveries (id, tenant, event_id, webhook_id, state, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id, webhook_id) DO NOTHING",
            (new_id("dlv"), tenant, event.id, webhook_id, "disabled" if disabled else "pending",
             None if disabled else now, now),
        )  # fmt: skip
    return event


def record_job_event(conn: Connection, job: Job, type: str, payload: str, now: int) -> JobEvent:
    return record_event(conn, "job_id", job.id, job.tenant, job.webhook_id, type, payload, now)


class WebhookRows:
    """Endpoints per tenant (soft-deleted), events, and deliveries leased to senders."""

    _db: Database

    def create_webhook(
        self, tenant: str, url: str, description: str, secret: str, now: int, max_per_tenant: int = 0
    ) -> Webhook:
        webhook = Webhook(new_id("wh"), tenant, url, description, secret, now, None, None)
        with self._db.write() as conn:
            if max_per_tenant:
                self._db.lock(conn, f"embeddings-webhooks:{tenant}")  # the cap holds with concurrent writers
                count = conn.execute(
                    "SELECT COUNT(*) FROM webhooks WHERE tenant = ? AND deleted_at IS NULL", (tenant,)
                ).fetchone()[0]
                if count >= max_per_tenant:
                    raise TooManyWebhooks(tenant)
            conn.execute(
                f"INSERT INTO webhooks ({WEBHOOK.select}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (webhook.id, tenant, url, description, secret, now, None, None),
            )
        return webhook

    def list_webhooks(self, tenant: str) -> list[Webhook]:
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {WEBHOOK.select} FROM webhooks WHERE tenant = ? AND deleted_at IS NULL ORDER BY seq",
                (tenant,),
            ).fetchall()
        return [WEBHOOK(row) for row in rows]

    def get_webhook(self, tenant: str, webhook_id: str) -> Webhook | None:
        with self._db.read() as conn:
            sql = f"SELECT {WEBHOOK.select} FROM webhooks WHERE id = ? AND tenant = ? AND deleted_at IS NULL"
            return WEBHOOK.one(conn.execute(sql, (webhook_id, tenant)))

    @retried
    def delete_webhook(self, tenant: str, webhook_id: str, now: int) -> bool:
        """Soft delete: the endpoint disappears from get/list and gets nothing more (pending deliveries become
        `disabled`), but its row, deliveries and attempts stay, so jobs keep a valid `webhook_id` and
        `list_attempts` still answers for it."""
        with self._db.write() as conn:
            deleted = conn.execute(
                "UPDATE webhooks SET deleted_at = ? WHERE id = ? AND tenant = ? AND deleted_at IS NULL",
                (now, webhook_id, tenant),
            ).rowcount
            if deleted:
                _stop_deliveries(conn, webhook_id)
        return deleted == 1

    @retried
    def disable_webhook(self, webhook_id: str, reason: str, now: int) -> Webhook | None:
        """Stop sending to an endpoint (it answered 410, or kept failing): pending deliveries become `disabled`."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE webhooks SET disabled_at = ?, disabled_reason = ? WHERE id = ? AND disabled_at IS NULL",
                (now, reason, webhook_id),
            )
            _stop_deliveries(conn, webhook_id)
            return WEBHOOK.by_id(conn, "webhooks", webhook_id)

    # --- events and deliveries

    @retried
    def add_event(self, job: Job, type: str, payload: str, now: int) -> JobEvent:
        with self._db.write() as conn:
            return record_job_event(conn, job, type, payload, now)

    @retried
    def due_deliveries(self, now: int, limit: int, owner: str, lease_s: int) -> list[Delivery]:
        with self._db.write() as conn:
            ids = claim_ids(self._db, conn, _DUE_DELIVERIES_SQL, (now, now, limit))
            conn.executemany(
                "UPDATE deliveries SET lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                [(owner, now + lease_s, delivery_id) for delivery_id in ids],
            )
            return [
                DELIVERY(conn.execute(_DELIVERY_SQL + " WHERE d.id = ?", (delivery_id,)).fetchone())
                for delivery_id in ids
            ]

    @retried
    def record_attempt(self, delivery_id: str, owner: str, attempt: NewAttempt, now: int) -> bool:
        """The attempt is always appended (it happened); the delivery moves on only while `owner` holds the lease
        and it is still pending (not disabled meanwhile, not reclaimed by another sender after the lease ran out)."""
        with self._db.write() as conn:
            if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() is None:
                raise NotFound(f"No delivery '{delivery_id}'.")
            conn.execute(
                "INSERT INTO delivery_attempts (delivery_id, attempted_at, status_code, error, duration_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (delivery_id, now, attempt.status_code, attempt.error, attempt.duration_ms),
            )
            conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ? WHERE id = ?", (now, delivery_id)
            )
            return (
                conn.execute(
                    "UPDATE deliveries SET state = ?, next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL"
                    " WHERE id = ? AND state = 'pending' AND lease_owner = ?",
                    (attempt.final_state or "pending", attempt.next_attempt_at, delivery_id, owner),
                ).rowcount
                == 1
            )

    def list_attempts(self, tenant: str, webhook_id: str, limit: int = 50) -> list[DeliveryAttempt]:
        """Newest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {ATTEMPT.select} FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id"
                " JOIN events e ON e.id = d.event_id WHERE d.tenant = ? AND d.webhook_id = ?"
                " ORDER BY a.id DESC LIMIT ?",
                (tenant, webhook_id, limit),
            ).fetchall()
        return [ATTEMPT(row) for row in rows]


def _stop_deliveries(conn: Connection, webhook_id: str) -> None:
    conn.execute(
        "UPDATE deliveries SET state = 'disabled', next_attempt_at = NULL, lease_owner = NULL,"
        " lease_expires_at = NULL WHERE webhook_id = ? AND state = 'pending'",
        (webhook_id,),
    )
