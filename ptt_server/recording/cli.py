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

from ptt_server.core.config import Config
from ptt_server.recording import export as export_mod
from ptt_server.recording.ledger import parse_iso
from ptt_server.recording.retention import purge
from ptt_server.recording.store import RecordingStore


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
    se = sub.add_parser("search", parents=[data_dir], help="list recordings, newest first")
    se.add_argument("--talkgroup")
    se.add_argument("--unit")
    se.add_argument("--from", dest="from_ms", type=_time_ms)
    se.add_argument("--to", dest="to_ms", type=_time_ms)
    se.add_argument("--limit", type=int, default=50)
    se.add_argument("--json", action="store_true")
    sh = sub.add_parser("show", parents=[data_dir], help="one recording's metadata (JSON)")
    sh.add_argument("id")
    wv = sub.add_parser("wav", parents=[data_dir], help="decode a recording to a WAV file")
    wv.add_argument("id")
    wv.add_argument("-o", "--output", type=Path, required=True)
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


def _access(store: RecordingStore, action: str, **fields: object) -> None:
    # The CLI reads the same evidence as the API: its searches and plays are ledgered too.
    store.record_access({"action": action, "by": _actor(), "role": "cli", "remote": None,
                         **fields})


def _search(store: RecordingStore, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("talkgroup", args.talkgroup), ("unit", args.unit),
                               ("from_ms", args.from_ms), ("to_ms", args.to_ms))
             if v is not None}
    page = store.search(talkgroup=args.talkgroup, unit=args.unit, from_ms=args.from_ms,
                        to_ms=args.to_ms, limit=args.limit)
    _access(store, "search", query=query, results=len(page.items))
    if args.json:
        print(json.dumps(page.items, indent=2, ensure_ascii=False))
        return 0
    for r in page.items:
        flags = " EMERGENCY" if r.get("emergency") else ""
        flags += " (audio deleted)" if r.get("deleted") else ""
        print(f"{r['start']}  {r['id']}  {r['talkgroup']}  {r['unit']} ({r['alias']})  "
              f"{r['duration_ms'] / 1000:.1f}s  {r['end_reason']}{flags}")
    return 0


def _show_or_wav(store: RecordingStore, args: argparse.Namespace) -> int:
    from ptt_server.recording import layout

    if not layout.valid_id(args.id):
        print(f"error: invalid recording id {args.id!r}", file=sys.stderr)
        return 2
    rec = store.get(args.id)
    if rec is None:
        print(f"error: no recording {args.id}", file=sys.stderr)
        return 1
    if args.command == "show":
        _access(store, "metadata", id=rec.id)
        print(json.dumps(rec.public(), indent=2, ensure_ascii=False))
        return 0
    path = store.audio_path(rec)
    if path is None:
        print(f"error: the audio of {rec.id} is not available", file=sys.stderr)
        return 1
    from ptt_server.recording.audio import decode_file, wav_bytes

    _access(store, "play", id=rec.id, format="wav")
    args.output.write_bytes(wav_bytes(decode_file(path)))
    print(f"wrote {args.output}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The audit command line; `data_dir` is set only if given after `audit`. Exits (through
    argparse) on --help and usage errors, before any data directory is looked at."""
    return _parser().parse_args(argv)


def audit_main(data_dir: Path, argv: list[str]) -> int:
    """Parse and run, on `data_dir` unless the arguments name another. The caller has checked
    that the directory is a data directory (`ptt-server audit` does: app/datadir.py);
    RecordingStore creates its files in whatever directory it is given."""
    args = parse_args(argv)
    return run(getattr(args, "data_dir", data_dir), args)


def run(data_dir: Path, args: argparse.Namespace) -> int:
    """Run parsed audit arguments on a checked data directory."""
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
    if args.command == "search":
        return _search(store, args)
    if args.command in ("show", "wav"):
        return _show_or_wav(store, args)
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
    _access(store, "export", export_id=info.export_id, ids=info.ids,
            manifest_sha256=info.manifest_sha256)
    print(f"wrote {args.output}: {len(info.ids)} recording(s), export {info.export_id}")
    return 0
