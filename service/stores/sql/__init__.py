"""The stores' SQL, written once for both backends by concern (jobs, webhooks, files, batches, access).

Each module is a mixin over `self._db`, a `Database` (`database.py`) that a backend supplies: its connections and
transactions, the row-lock suffixes its concurrent writers need, and how it retries a transaction it aborted.
Statements use SQLite's parameter style (`?`, `:name`); the PostgreSQL backend translates them.
"""
