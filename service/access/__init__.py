"""Access control: API keys and tenants, per-key and per-tenant rate limits, usage metering, the auth interceptor.

keys.py (key format, hashing, masking), store.py (SQLite tables beside the jobs), limits.py (token buckets),
usage.py (metering), control.py (what a call may do: authentication, limits, metering, in one place),
scope.py (the per-call principal and the model registry seen through it), interceptor.py (the gRPC interceptor).
"""
