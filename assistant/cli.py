"""The `fashion-assistant` command line: one subcommand per verb, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from assistant.catalog import CatalogError, load_catalog


def _print_catalog_summary(summary: dict) -> None:
    print(f"{summary['name']}: {summary['items']} items, {summary['categories']} categories "
          f"(fingerprint {summary['fingerprint']})")
    print("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["splits"].items())))
    for name, values in summary["attributes"].items():
        shown = ", ".join(f"{v} ({n})" for v, n in list(values.items())[:8])
        more = f", … {len(values) - 8} more" if len(values) > 8 else ""
        print(f"  {name}: {len(values)} values: {shown}{more}")
    if summary["caption_pairs"]:
        print(f"caption pairs: {summary['caption_pairs']}")
    report = summary["report"]
    print(f"load report: {report['loaded']} loaded, {report['skipped']} skipped")
    for reason, count in report["skipped_by_reason"].items():
        print(f"  {reason}: {count}")
    for row in report["skipped_rows"][:20]:
        print(f"    {row['row']}: {row['reason']}")
    if report["skipped"] > 20:
        print(f"    … {report['skipped'] - 20} more (see --json)")


def cmd_catalog(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.source, format=args.format)
    summary = catalog.summary()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_catalog_summary(summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    catalog = load_catalog(f"demo:{args.items}" if args.items else "demo")
    _print_catalog_summary(catalog.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-assistant", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    catalog = commands.add_parser("catalog", help="load a catalog and print its summary and load report")
    catalog.add_argument("source", help="a catalog folder or file, or 'demo'")
    catalog.add_argument("--format", choices=["fashion-product-images", "fashion-iq", "generic"],
                         help="loader to use (default: detected from the folder's contents)")
    catalog.add_argument("--json", action="store_true", help="print the summary as JSON")
    catalog.set_defaults(run=cmd_catalog)

    demo = commands.add_parser("demo", help="the embedded demo: generate its catalog on first use and start")
    demo.add_argument("--items", type=int, default=0, help="demo catalog size (default 2000)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CatalogError, FileNotFoundError, ValueError) as error:
        print(f"fashion-assistant {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
