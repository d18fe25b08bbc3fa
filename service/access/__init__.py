"""Access control: API keys and tenants, per-key and per-tenant rate limits, usage metering, the auth interceptor.

keys.py (key format, hashing, masking), store.py (SQLite tables beside the jobs), limits.py (token buckets),
usage.py (metering), control.py (what a call may do: authentication, limits, metering, in one place),
interceptor.py (the gRPC interceptor: each method guarded by its declared policy, the caller handed to the
servicer). The embed use case that charges and meters on a caller's behalf is service/embedding.py.
"""
