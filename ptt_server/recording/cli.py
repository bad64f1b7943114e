"""`ptt-server audit ...`: verify, reindex, purge, export. Safe while servers are running."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import socket
import sys
from pathlib import Path

from ..config import Config
from . import export as export_mod
from .ledger import parse_iso
from .retention import purge
from .store import RecordingStore


def _time_ms(text: str) -> int:
    try:
        return int(text) if text.isdigit() else int(parse_iso(text) * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time or epoch ms: {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptt-server audit",
                                description="Check and maintain the recordings audit trail.")
    data_dir = argparse.ArgumentParser(add_help=False)
    # Also accepted after the subcommand (`audit verify --data-dir D`).
    data_dir.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", parents=[data_dir],
                       help="check the ledger hash chain and every recording's SHA-256")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_parser("reindex", parents=[data_dir],
                   help="rebuild the search index from the ledger and the files")
    pu = sub.add_parser("purge", parents=[data_dir],
                        help="delete audio older than N days (ledgered deletions)")
    pu.add_argument("--days", type=int, default=Config.retention_days,
                    help="retention in days (default: %(default)s; 0 keeps everything)")
    pu.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    ex = sub.add_parser("export", parents=[data_dir], help="write an evidence zip")
    ex.add_argument("--ids", help="comma-separated recording ids")
    ex.add_argument("--talkgroup")
    ex.add_argument("--from", dest="from_ms", type=_time_ms)
    ex.add_argument("--to", dest="to_ms", type=_time_ms)
    ex.add_argument("-o", "--output", type=Path, required=True)
    return p


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def audit_main(data_dir: Path, argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    data_dir = getattr(args, "data_dir", data_dir)
    store = RecordingStore(data_dir)
    if args.command == "verify":
        result = store.verify()
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            for problem in result.problems:
                print(problem)
            print(result.summary())
        return 0 if result.ok else 1
    if args.command == "reindex":
        r = store.reindex()
        for rel in r.missing_files:
            print(f"missing audio file: {rel}")
        for rel in r.unreferenced_files:
            print(f"unreferenced audio file: {rel}")
        print(f"reindexed: {r.entries} ledger entries, {r.recordings} recordings "
              f"({r.deleted} deleted by retention)")
        return 0
    if args.command == "purge":
        p = purge(store, args.days, dry_run=args.dry_run, actor=_actor())
        if p.skipped:
            print("another purge is running on this data dir; nothing done")
            return 0
        for problem in p.problems:
            print(problem)
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {len(p.deleted)} recording(s) older than {args.days} days")
        return 1 if p.problems else 0
    # export
    ids = [i for i in args.ids.split(",") if i] if args.ids else None
    try:
        recs, unknown = export_mod.select(store, ids=ids, talkgroup=args.talkgroup,
                                          from_ms=args.from_ms, to_ms=args.to_ms)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if unknown:
        print(f"error: unknown recording id(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    actor = _actor()
    try:
        blob, info = export_mod.build(store, recs, requested_by=actor,
                                      node=socket.gethostname())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with blob, open(args.output, "wb") as f:
        shutil.copyfileobj(blob, f)
    store.record_access({
        "action": "export", "by": actor, "role": "cli", "remote": None,
        "export_id": info.export_id, "ids": info.ids,
        "manifest_sha256": info.manifest_sha256,
    })
    print(f"wrote {args.output}: {len(info.ids)} recording(s), export {info.export_id}")
    return 0
