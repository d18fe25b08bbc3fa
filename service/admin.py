"""`python -m service.admin`: manage API keys and tenant limits, and report usage, directly on the data directory.

Works whether the server runs or not (SQLite WAL): a running server picks up key changes within a second. With
`--store-url postgresql://...` (or $EMBED_STORE_URL) it works on the shared store of several replicas instead. A new or
rotated key is printed once, alone on stdout (messages go to stderr), and only its hash is stored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from decimal import Decimal

from service.access import keys
from service.access.records import KeyRecord, NewKey, TenantRecord, UsageQuery, UsageRow
from service.access.store import AccessStore
from service.config import Settings
from service.fields import derive
from service.stores import open_access_store

COUNT_COLUMNS = ("requests", "tokens", "job_requests", "job_tokens")


def _positive(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (unlimited) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedgate-admin", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("EMBED_DATA_DIR", "data"),
        help="the server's data directory (default: $EMBED_DATA_DIR or data)",
    )
    parser.add_argument(
        "--store-url",
        default=os.environ.get("EMBED_STORE_URL", ""),
        help="the replicas' shared PostgreSQL store instead of the data directory (default: $EMBED_STORE_URL)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--currency",
        default=os.environ.get("EMBED_CURRENCY", "USD"),
        help="the currency usage costs are shown in: the server's (default: $EMBED_CURRENCY or USD)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    key_commands = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", required=True)
    create.add_argument("--models", help="comma-separated model ids or aliases the key may use (default: all)")
    create.add_argument("--rpm", type=_positive, help="requests per minute (default: the server's rate_limit_rpm)")
    create.add_argument("--tpm", type=_positive, help="tokens per minute (default: the server's rate_limit_tpm)")
    create.add_argument("--admin", action="store_true", help="the key may manage keys and read usage")
    create.add_argument(
        "--user-rpm", type=_positive, help="requests per minute of each end user (a call's `user`; default: tenant's)"
    )
    create.add_argument("--user-tpm", type=_positive, help="tokens per minute of each end user (default: tenant's)")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant")
    key_commands.add_parser("revoke", help="revoke a key").add_argument("id")
    key_commands.add_parser("rotate", help="give a key a new secret and print it (once)").add_argument("id")
    key_commands.add_parser(
        "generate",
        help="print a new key without storing it: the value of EMBED_ADMIN_KEY (or its file) for a first start",
    )

    tenant_commands = commands.add_parser("tenants", help="tenant limits").add_subparsers(dest="action", required=True)
    tenant_set = tenant_commands.add_parser("set", help="set a tenant's limits (omitted: the server's defaults)")
    tenant_set.add_argument("name")
    tenant_set.add_argument("--rpm", type=_positive)
    tenant_set.add_argument("--tpm", type=_positive)
    tenant_set.add_argument("--user-rpm", type=_positive, help="per-user requests per minute of the tenant's keys")
    tenant_set.add_argument("--user-tpm", type=_positive, help="per-user tokens per minute of the tenant's keys")
    tenant_commands.add_parser("list", help="list tenants with their own limits")

    usage = commands.add_parser("usage", help="requests, tokens and cost per day, tenant, key and model")
    usage.add_argument("--tenant")
    usage.add_argument("--since", help="first UTC day, YYYY-MM-DD")
    usage.add_argument("--until", help="last UTC day, YYYY-MM-DD")
    usage.add_argument("--by-user", action="store_true", help="one row per end user too (the calls' `user`)")
    return parser


def _cost(value: Decimal) -> str:
    """A cost as exact decimal text, without an exponent ("0.00012", not "1.2E-4")."""
    return format(value, "f")


def key_dict(key: KeyRecord) -> dict:
    data = asdict(key)
    data.pop("secret_hash")
    data["models"] = list(key.models) if key.models is not None else None
    return data


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


def _print_key_table(records: list[KeyRecord]) -> None:
    print(
        f"{'id':<14}{'tenant':<16}{'name':<16}{'role':<7}{'status':<9}{'rpm':>8}{'tpm':>10}"
        f"{'user_rpm':>10}{'user_tpm':>10}  models"
    )
    for k in records:
        status = "revoked" if k.revoked_at else "active"
        rpm, tpm, user_rpm, user_tpm = _limit(k.rpm), _limit(k.tpm), _limit(k.user_rpm), _limit(k.user_tpm)
        models = ",".join(k.models) if k.models is not None else "all"
        print(
            f"{k.id:<14}{k.tenant:<16}{k.name:<16}{k.role:<7}{status:<9}{rpm:>8}{tpm:>10}"
            f"{user_rpm:>10}{user_tpm:>10}  {models}"
        )


def _print_usage(rows: list[UsageRow], as_json: bool, by_user: bool, currency: str) -> None:
    totals: dict[str, object] = {c: sum(getattr(r, c) for r in rows) for c in COUNT_COLUMNS}
    total_cost = sum((r.cost for r in rows), Decimal(0))
    if as_json:
        data = [{**asdict(r), "cost": _cost(r.cost)} for r in rows]
        if not by_user:
            for row in data:
                del row["user"]
        totals["cost"] = _cost(total_cost)
        print(json.dumps({"data": data, "totals": totals, "currency": currency}, indent=2))
        return
    user = f"{'user':<20}" if by_user else ""
    print(
        f"{'day':<12}{'tenant':<16}{'key':<14}{'model':<28}{user}{'requests':>10}{'tokens':>12}{'jobs':>6}"
        f"{'job_tokens':>12}  cost ({currency})"
    )
    for r in rows:
        user = f"{r.user or '-':<20}" if by_user else ""
        print(
            f"{r.day:<12}{r.tenant:<16}{r.key_id:<14}{r.model:<28}{user}"
            f"{r.requests:>10}{r.tokens:>12}{r.job_requests:>6}{r.job_tokens:>12}  {_cost(r.cost)}"
        )
    width = 70 + (20 if by_user else 0)
    print(
        f"{'total':<{width}}{totals['requests']:>10}{totals['tokens']:>12}{totals['job_requests']:>6}"
        f"{totals['job_tokens']:>12}  {_cost(total_cost)}"
    )


def _tenant_limits(tenant: TenantRecord, separator: str) -> str:
    return separator.join(f"{name} {_limit(getattr(tenant, name))}" for name in ("rpm", "tpm", "user_rpm", "user_tpm"))


def _announce_token(key: KeyRecord, token: str, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"key": key_dict(key), "token": token}, indent=2))
    else:
        print(f"{verb} key {key.id} (tenant {key.tenant}, name {key.name}, role {key.role})", file=sys.stderr)
        print(token)
        print("Store it now: it is shown only once.", file=sys.stderr)


def run(args: argparse.Namespace, store: AccessStore) -> int:
    now = int(time.time())
    if args.command == "keys" and args.action == "create":
        models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
        key, token = store.create_key(derive(NewKey, args, models=models), now)
        _announce_token(key, token, "created", args.json)
    elif args.command == "keys" and args.action == "list":
        records = store.list_keys(args.tenant)
        print(json.dumps([key_dict(k) for k in records], indent=2)) if args.json else _print_key_table(records)
    elif args.command == "keys" and args.action == "revoke":
        key = store.revoke_key(args.id, now)
        if key is None:
            print(f"no key with id {args.id}", file=sys.stderr)
            return 1
        print(f"revoked key {key.id} (tenant {key.tenant}, name {key.name})", file=sys.stderr)
    elif args.command == "keys" and args.action == "rotate":
        rotated = store.rotate_key(args.id, now)
        if rotated is None:
            print(f"no active key with id {args.id}", file=sys.stderr)
            return 1
        _announce_token(*rotated, "rotated", args.json)
    elif args.command == "tenants" and args.action == "set":
        tenant = store.set_tenant(derive(TenantRecord, args), now)
        print(f"tenant {tenant.name}: {_tenant_limits(tenant, ', ')}", file=sys.stderr)
    elif args.command == "tenants":
        for t in store.list_tenants():
            print(t.name, _tenant_limits(t, "\t"), sep="\t")
    elif args.command == "usage":
        rows = store.usage(UsageQuery(args.tenant, args.since, args.until, args.by_user))
        _print_usage(rows, args.json, args.by_user, args.currency)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys" and args.action == "generate":  # no store: the server stores it when it starts
        print(keys.issue().token)
        return 0
    store = open_access_store(Settings(data_dir=args.data_dir, store_url=args.store_url))
    try:
        return run(args, store)
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
