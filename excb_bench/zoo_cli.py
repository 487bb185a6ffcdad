"""``excb-bench zoo list | fetch NAME... | verify [NAME...]``: the checkpoint zoo from the command line.

    excb-bench zoo list                         # every entry: arch, format, epochs, published, cached?
    excb-bench zoo fetch dino_resnet50 swav_800ep
    excb-bench zoo fetch --all-resnet50         # every ResNet-50 entry with a URL
    excb-bench zoo verify                       # re-hash every cached file against the lock/pins
    EXCB_OFFLINE=1 excb-bench zoo fetch NAME    # only the cache; says which file to put where
"""
from __future__ import annotations

import argparse
from typing import List


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="published checkpoints: list, fetch (cached, resumable, hash-pinned), verify",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["list", "fetch", "verify"])
    # REMAINDER: names and flags may be interleaved (`zoo fetch --offline a b`); flags are picked out below
    p.add_argument("names", nargs=argparse.REMAINDER, help="zoo entry names (see `zoo list`)")
    p.add_argument("--offline", action="store_true", help="never use the network (same as EXCB_OFFLINE=1)")
    p.add_argument("--all-resnet50", action="store_true", help="fetch: every ResNet-50 entry that has a URL")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")


def _published(e) -> str:
    parts = []
    for metric, short in (("linear_top1", "lin"), ("knn_top1", "knn")):
        v = e.published_value(metric)
        if v:
            parts.append(f"{short} {v[0]:.1f}")
    return ", ".join(parts) or "–"


def cmd_zoo(args) -> int:
    from excb import ExcbError
    from excb import zoo

    for flag in [n for n in args.names if n.startswith("-")]:
        dest = {"--offline": "offline", "--all-resnet50": "all_resnet50", "--debug": "debug"}.get(flag)
        if dest is None:
            raise ExcbError(f"zoo {args.action}: unknown option '{flag}' (options: --offline, --all-resnet50)")
        setattr(args, dest, True)
    args.names = [n for n in args.names if not n.startswith("-")]
    reg = zoo.load_registry()
    if args.action == "list":
        from tabulate import tabulate

        rows = []
        for e in reg.values():
            st = zoo.status(e)
            rows.append([e.name, e.method, e.arch, e.format, e.epochs or "–", e.batch or "–", _published(e),
                         st["origin"] or ("no URL" if not e.urls else "–"),
                         (st["pinned"] or "")[:12] or ("published" if e.sha256 or e.sha256_prefix or e.md5_prefix else "–")])
        print(tabulate(rows, headers=["name", "method", "arch", "format", "epochs", "batch", "published (%)", "local",
                                      "sha256 pin"], tablefmt="simple", disable_numparse=True))
        print(f"\ncache: {zoo.cache_dir() / 'zoo'}   lock: {zoo.lock_path()}   registry: {zoo.registry_path()}")
        return 0
    names: List[str] = list(args.names)
    if args.action == "fetch" and args.all_resnet50:
        names += [e.name for e in reg.values() if e.arch == "resnet50" and e.urls and e.name not in names]
    if args.action == "verify" and not names:
        names = [e.name for e in reg.values() if zoo.locate(e)]
        if not names:
            print("[excb-bench] zoo: nothing cached yet")
            return 0
    if not names:
        raise ExcbError("zoo fetch: name at least one entry (see `excb-bench zoo list`) or pass --all-resnet50")
    failures = []
    for name in names:
        zoo.get_entry(name)   # unknown names fail before any download starts
    for name in names:
        try:
            if args.action == "fetch":
                path = zoo.fetch(name, offline=args.offline)
            else:
                entry = zoo.get_entry(name)
                found = zoo.locate(entry)
                if not found:
                    raise ExcbError(f"zoo:{name}: not cached ({zoo.cache_path(entry)})")
                zoo.verify_file(entry, found[0], found[1])
                path = found[0]
            print(f"[excb-bench] zoo:{name}: ok  {path}  sha256 {zoo.file_hashes(path)[0][:16]}")
        except ExcbError as e:
            if len(names) == 1:
                raise
            failures.append(name)
            print(f"excb-bench: error: {e}")
    if failures:
        raise ExcbError(f"zoo {args.action}: {len(failures)} of {len(names)} failed ({', '.join(failures)})")
    return 0
