"""The Batch API's files, stored in parts: written `uploading` (invisible), then published `processed`."""

from __future__ import annotations

from service.batches.records import FileRecord, new_file_id
from service.jobs.records import Page
from service.stores.sql.database import Connection, Database, claim_ids, retried
from service.stores.sql.pages import tenant_page
from service.stores.sql.rows import FILE

_EXPIRED_FILES_SQL = "SELECT id FROM files WHERE status = 'processed' AND expires_at <= ? ORDER BY expires_at LIMIT ?"
_STALE_UPLOADS_SQL = "SELECT id FROM files WHERE status = 'uploading' AND created_at <= ? ORDER BY created_at LIMIT ?"


def discard(conn: Connection, file_id: str) -> None:
    """Remove a file that is still `uploading`, with its parts."""
    if conn.execute("SELECT 1 FROM files WHERE id = ? AND status = 'uploading'", (file_id,)).fetchone():
        conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))


class FileRows:
    _db: Database

    def create_file(self, tenant: str, purpose: str, filename: str, now: int, file_id: str | None = None) -> str:
        file_id = file_id or new_file_id()
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO files (id, tenant, purpose, filename, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (file_id, tenant, purpose, filename, "uploading", now),
            )
        return file_id

    @retried
    def append_file_part(self, file_id: str, idx: int, data: bytes) -> None:
        with self._db.write() as conn:
            conn.execute("INSERT INTO file_parts (file_id, idx, data) VALUES (?, ?, ?)", (file_id, idx, data))

    @retried
    def finish_file(
        self, file_id: str, size: int, lines: int, expires_at: int | None, publish: bool = True
    ) -> FileRecord:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE files SET status = ?, bytes = ?, lines = ?, expires_at = ?"
                " WHERE id = ? AND status = 'uploading'",
                ("processed" if publish else "uploading", size, lines, expires_at, file_id),
            )
            return FILE(conn.execute(f"SELECT {FILE.select} FROM files WHERE id = ?", (file_id,)).fetchone())

    @retried
    def discard_file(self, file_id: str) -> None:
        with self._db.write() as conn:
            discard(conn, file_id)

    def get_file(self, tenant: str, file_id: str) -> FileRecord | None:
        with self._db.read() as conn:
            sql = f"SELECT {FILE.select} FROM files WHERE id = ? AND tenant = ? AND status = 'processed'"
            return FILE.one(conn.execute(sql, (file_id, tenant)))

    def list_files(
        self, tenant: str, limit: int, after: str | None = None, ascending: bool = False, purpose: str | None = None
    ) -> Page[FileRecord]:
        with self._db.read() as conn:
            return tenant_page(
                conn,
                "files",
                FILE,
                tenant,
                limit,
                after,
                noun="file",
                where=" AND status = 'processed' AND (? IS NULL OR purpose = ?)",
                params=(purpose, purpose),
                ascending=ascending,
            )

    @retried
    def delete_file(self, tenant: str, file_id: str, now: int) -> bool:
        with self._db.write() as conn:
            deleted = conn.execute(
                "UPDATE files SET status = 'deleted', deleted_at = ?"
                " WHERE id = ? AND tenant = ? AND status = 'processed'",
                (now, file_id, tenant),
            ).rowcount
            if deleted:
                conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
        return deleted == 1

    def file_parts(self, file_id: str, first: int, count: int) -> list[bytes]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT data FROM file_parts WHERE file_id = ? AND idx >= ? AND idx < ? ORDER BY idx",
                (file_id, first, first + count),
            ).fetchall()
        return [bytes(row[0]) for row in rows]

    @retried
    def expire_files(self, now: int, stale_before: int, limit: int = 100) -> int:
        with self._db.write() as conn:
            expired = claim_ids(self._db, conn, _EXPIRED_FILES_SQL, (now, limit))
            for file_id in expired:
                conn.execute("UPDATE files SET status = 'deleted', deleted_at = ? WHERE id = ?", (now, file_id))
                conn.execute("DELETE FROM file_parts WHERE file_id = ?", (file_id,))
            stale = claim_ids(self._db, conn, _STALE_UPLOADS_SQL, (stale_before, limit))
            for file_id in stale:
                discard(conn, file_id)
        return len(expired) + len(stale)
