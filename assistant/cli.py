"""The `fashion-assistant` command line: one subcommand per verb, each a thin call into the library."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import socket
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from assistant.api import Assistant
from assistant.chat import chat
from assistant.core.catalog import SPLITS, Catalog, report_lines, thin_labels
from assistant.core.config import STAGES
from assistant.core.demo_catalog import VERSION
from assistant.core.demo_drawing import contact_sheet
from assistant.core.errors import AssistantError
from assistant.core.loaders import load_catalog
from assistant.core.storage import atomic_write_text, cache_dir
from assistant.core.store import export_dialogs
from assistant.model_dir import CONFIG_FILE, MANIFEST_FILE, PipelineConfig
from assistant.pipeline import FINE_TUNED, fine_tune, train
from assistant.service import serve_api
from assistant.service.app import REQUEST_THREADS
from assistant.vision.backbone import BACKBONE_FILE, Backbone
from assistant.vision.features import compute_features
from retriever.evaluate import plot, save_result
from retriever.requests import HALVES, default_requests, load_requests, summary_lines
from simulator.captioner import SimulatorModel
from simulator.metrics import evaluate_simulator

FIRST_PARTY = ("assistant", "simulator", "retriever")


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
    print("\n".join(report_lines(summary["report"])))


def cmd_catalog(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.source, format=args.format, images_root=args.images_root)
    summary = catalog.summary()
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_catalog_summary(summary)
    if args.contact_sheet:
        print(f"contact sheet: {contact_sheet(catalog, args.contact_sheet)}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    catalog = args.catalog
    if args.images_root:
        source = PipelineConfig.load(args.config or (args.from_dir / CONFIG_FILE if args.from_dir else "demo"))
        catalog = load_catalog(catalog or source.catalog.source, images_root=args.images_root)
    if args.from_dir:
        if args.stage:
            raise ValueError("with --from, name the stages to re-run with --stages, not a stage to stop after")
        stages = [stage.strip() for stage in (args.stages or ",".join(FINE_TUNED)).split(",") if stage.strip()]
        manifest = fine_tune(args.from_dir, args.out, stages, dialogs=args.dialogs, catalog=catalog,
                             config=args.config, resume=args.resume, fresh=args.fresh)
    else:
        if args.stages or args.fresh:
            raise ValueError("--stages and --fresh re-run stages of an existing model: use them with --from MODEL_DIR")
        stages = STAGES[: STAGES.index(args.stage) + 1] if args.stage else STAGES
        manifest = train(catalog, args.config or "demo", args.out, resume=args.resume, stages=stages,
                         dialogs=args.dialogs)
    for stage, info in manifest["stages"].items():
        print(f"{stage:>10}: {info.get('seconds', 0):8.1f} s  " + json.dumps(
            {k: v for k, v in info.items() if k not in ("done", "seconds")}, ensure_ascii=False)[:200])
    print(f"model directory: {args.out}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    catalog = _catalog_split(args)
    assistant = Assistant.load(args.model, catalog)
    print(f"{len(assistant.catalog)} items: features and {assistant.index.kind} index ready in "
          f"{time.perf_counter() - start:.1f} s (cached under {cache_dir()})")
    if catalog.report.skipped:
        print("\n".join(report_lines(catalog.report.as_dict())))
    print("\n".join(report_lines(assistant.features.report().as_dict(), title="image features")))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    truth = _catalog_split(args)
    assistant = Assistant.load(args.model, thin_labels(truth, args.thin_labels) if args.thin_labels else truth)
    result = assistant.evaluate(args.user, turns=args.turns, targets=args.targets, seed=args.seed, truth=truth)
    if args.thin_labels:
        result["thin_labels"] = args.thin_labels
    for name, metrics in result["systems"].items():
        print(f"{name:>16}: recall@10 " + " ".join(f"{v:.3f}" for v in metrics["recall@10"])
              + "  success@10 " + " ".join(f"{v:.3f}" for v in metrics["success@10"]))
    if args.json:
        save_result(result, args.json)
    if args.plot:
        plot(result, args.plot)
    return 0


def cmd_evaluate_requests(args: argparse.Namespace) -> int:
    truth = _catalog_split(args)
    requests_file = args.requests or default_requests(truth)
    requests = load_requests(requests_file, half=args.half)
    assistant = Assistant.load(args.model, thin_labels(truth, args.thin_labels) if args.thin_labels else truth)
    result = assistant.evaluate_requests(requests, truth=truth)
    result.update(requests_file=Path(requests_file).name, split=args.split or "all", thin_labels=args.thin_labels)
    print("\n".join(summary_lines(result)))
    if args.json:
        save_result(result, args.json)
    return 0


def cmd_evaluate_simulator(args: argparse.Namespace) -> int:
    catalog = _catalog_split(args)
    features = compute_features(Backbone.load(Path(args.model) / BACKBONE_FILE), catalog)
    decoding = args.decoding or PipelineConfig.load(Path(args.model) / CONFIG_FILE).users.simulator_decoding
    result = evaluate_simulator(SimulatorModel.load(args.model), catalog, features, pairs=args.pairs, seed=args.seed,
                                decoding=decoding)
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    chat(Assistant.load(args.model, _catalog_split(args)), data_dir=args.data)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from assistant.webapp import serve  # local: gradio (seconds to import) stays out of every other command

    require_free_port(args.host, args.port)
    serve(args.model, _catalog_split(args), host=args.host, port=args.port, data_dir=args.data)
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    serve_api(args.model, args.catalog, store=args.store, host=args.host, port=args.port, workers=args.workers,
              threads=args.threads, split=args.split, images_root=args.images_root,
              request_threads=args.request_threads)
    return 0


def require_free_port(host: str, port: int) -> None:
    """OSError naming the address when nothing can listen there (checked before minutes of loading)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port} ({error.strerror}): the port is in use or the address "
                          "is not this machine's; stop the other server or pass --port N") from None


def cmd_export_dialogs(args: argparse.Namespace) -> int:
    data = args.data or cache_dir() / "dialogs"
    counts = export_dialogs(data, args.out)
    print(f"{args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def demo_model_dir(catalog_source: str) -> Path:
    """Where `demo` keeps its model: named by the demo catalog's version and the demo config, so that a change
    to either trains a new model instead of reusing a stale one."""
    settings = json.dumps([VERSION, PipelineConfig.load("demo").as_dict()], sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
    return cache_dir() / "models" / f"demo-{catalog_source.replace(':', '-')}-{digest}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the demo model on first use (a few minutes, with progress), then serve the app.

    The first run trains every stage but the held-out evaluation (`train --config demo` runs that too).
    """
    source = f"demo:{args.items}" if args.items else "demo"
    model_dir = demo_model_dir(source)
    manifest = model_dir / MANIFEST_FILE
    if not manifest.exists() or "retriever" not in json.loads(manifest.read_text(encoding="utf-8"))["stages"]:
        print(f"First run: training the demo model into {model_dir} (a few minutes on 2 cores) ...", flush=True)
        train(source, "demo", model_dir, resume=True, stages=STAGES[:-1])
    if args.no_serve:
        print(f"demo model ready in {model_dir}")
        return 0
    return cmd_serve(argparse.Namespace(model=model_dir, catalog=source, images_root=None, split=None,
                                        host=args.host, port=args.port, data=args.data))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-assistant", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its line")
    commands = parser.add_subparsers(dest="command", required=True)

    catalog = commands.add_parser("catalog", help="load a catalog and print its summary and load report")
    catalog.add_argument("source", help="a catalog folder or file, or 'demo'")
    catalog.add_argument("--format", choices=["fashion-product-images", "fashion-iq", "generic"],
                         help="loader to use (default: detected from the folder's contents)")
    _images_root_option(catalog)
    catalog.add_argument("--json", action="store_true", help="print the summary as JSON")
    catalog.add_argument("--contact-sheet", type=Path, metavar="PNG", help="also draw a grid of its first items here")
    catalog.set_defaults(run=cmd_catalog)

    train = commands.add_parser("train", help="train every stage into a model directory (or up to STAGE)")
    train.add_argument("stage", nargs="?", choices=STAGES, help="stop after this stage (default: all)")
    train.add_argument("--catalog", help="catalog folder/file or 'demo' (default: the config's catalog.source)")
    _images_root_option(train)
    train.add_argument("--config", help="configs/<name>.yaml or a YAML path (default: demo; with --from, the model's "
                       "own config)")
    train.add_argument("--out", required=True, type=Path, help="the model directory to write")
    train.add_argument("--resume", action="store_true", help="continue a killed run: finished stages are skipped")
    train.add_argument("--dialogs", action="append", type=Path, default=[], metavar="FILE.jsonl",
                       help="logged dialogs (written by export-dialogs): their human pairs among the train split "
                            "join simulator and retriever training (repeatable)")
    train.add_argument("--from", dest="from_dir", type=Path, metavar="MODEL_DIR",
                       help="fine-tune: copy this model directory to --out and re-run only --stages there")
    train.add_argument("--stages", help="with --from: the stages to re-run, comma-separated (default "
                       f"{','.join(FINE_TUNED)}: both continue from their saved weights)")
    train.add_argument("--fresh", action="store_true", help="with --from: train the re-run stages from scratch "
                       "(e.g. with a changed --config section) instead of fine-tuning them")
    train.set_defaults(run=cmd_train)

    index = commands.add_parser("index", help="build (and cache) a catalog's features and index with a model")
    _model_and_catalog(index)
    index.set_defaults(run=cmd_index)

    evaluate = commands.add_parser("evaluate", help="per-turn recall/success of the model and the baselines")
    _model_and_catalog(evaluate)
    _split_option(evaluate)
    evaluate.add_argument("--user", default="template",
                          help="template | paraphrase | paraphrase-heldout | simulator | package.module:function")
    evaluate.add_argument("--turns", type=int, default=5)
    evaluate.add_argument("--targets", type=int, default=1000)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", type=Path, help="write the result here")
    evaluate.add_argument("--plot", type=Path, help="write a PNG of recall@10 and success@10 per turn here")
    _thin_labels_option(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    requests = commands.add_parser("evaluate-requests",
                                   help="precision@12 of the first page for shoppers' opening requests, by kind")
    _model_and_catalog(requests)
    _split_option(requests)
    requests.add_argument("--requests", type=Path, help="a JSONL file of requests (default: the shipped "
                          "benchmarks/requests/fpi.jsonl for a Fashion Product Images catalog)")
    requests.add_argument("--half", choices=[*HALVES, "all"], default="all",
                          help="which half of the requests (held-out is the reported number; default all)")
    requests.add_argument("--json", type=Path, help="write the result (summaries and every request's page) here")
    _thin_labels_option(requests)
    requests.set_defaults(run=cmd_evaluate_requests)

    simulator = commands.add_parser("evaluate-simulator", help="caption quality and faithfulness of the simulator")
    _model_and_catalog(simulator)
    _split_option(simulator)
    simulator.add_argument("--pairs", type=int, default=1000)
    simulator.add_argument("--seed", type=int, default=0)
    simulator.add_argument("--decoding", choices=["greedy", "beam", "sample"],
                           help="how captions are decoded (default: the model's users.simulator_decoding)")
    simulator.add_argument("--json", type=Path)
    simulator.set_defaults(run=cmd_evaluate_simulator)

    chat = commands.add_parser("chat", help="shop in the terminal: text refines, a number picks the reference")
    _model_and_catalog(chat)
    chat.add_argument("--data", help="the dialog log: a folder (SQLite) or a postgresql:// URL")
    chat.set_defaults(run=cmd_chat)

    serve = commands.add_parser("serve", help="serve the Gradio app for a model and catalog")
    _model_and_catalog(serve)
    _server_options(serve)
    serve.set_defaults(run=cmd_serve)

    api = commands.add_parser("api", help="serve the HTTP API (OpenAPI at /docs) for a model and catalog")
    _model_and_catalog(api)
    api.add_argument("--store", help="where dialogs live: a folder or .sqlite file (SQLite), or postgresql://… "
                                     "(default: the cache's dialogs/)")
    api.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    api.add_argument("--threads", type=int, default=1, help="torch/faiss threads per turn (default 1)")
    api.add_argument("--request-threads", type=int,
                     help="turns run at once per worker (default by store: " +
                          ", ".join(f"{kind} {n}" for kind, n in REQUEST_THREADS.items()) +
                          "; ranking holds the GIL, a database server's commit does not)")
    _split_option(api)
    api.set_defaults(run=cmd_api)

    export = commands.add_parser("export-dialogs", help="write logged dialogs as training pairs (JSONL)")
    export.add_argument("--data", help="the dialog log: a folder (SQLite) or a postgresql:// URL (default: the "
                        "cache's dialogs/)")
    export.add_argument("--out", required=True, type=Path)
    export.set_defaults(run=cmd_export_dialogs)

    demo = commands.add_parser("demo", help="the embedded demo: train on first use, then serve the app")
    demo.add_argument("--items", type=int, default=0, help="demo catalog size (default 2000)")
    demo.add_argument("--no-serve", action="store_true", help="only make sure the demo model is trained")
    _server_options(demo)
    demo.set_defaults(run=cmd_demo)
    return parser


def _model_and_catalog(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="a trained model directory")
    parser.add_argument("--catalog", default="demo", help="catalog folder/file or 'demo' (default demo)")
    _images_root_option(parser)


def _images_root_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-root", type=Path, metavar="DIR",
                        help="the folder the catalog's images must lie in, for shops whose images live outside the "
                             "catalog's folder (default: the catalog's own image folder); the app serves only it")


def _split_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=SPLITS,
                        help="use only this split of the catalog (e.g. test: items held out from training)")


def _label_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one attribute, e.g. baseColour,season,usage")
    return names


def _thin_labels_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thin-labels", type=_label_names, metavar="NAMES",
                        help="blank these labels (comma-separated, e.g. baseColour,season,usage) and colour words "
                             "in titles before ranking; the shopper and the scoring still see the full labels")


def _catalog_split(args: argparse.Namespace) -> Catalog:
    return load_catalog(args.catalog, images_root=args.images_root, split=getattr(args, "split", None))


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--data", help="the dialog log: a folder (SQLite) or a postgresql:// URL (default: the "
                        "cache's dialogs/)")


EXPECTED_ERRORS = (AssistantError, ValueError, OSError)  # bad input or environment, told in one line
BUG_REPORT = "this is a bug in fashion-assistant: please report it with the traceback above and the command you ran"


def error_line(error: BaseException) -> str | None:
    """The one line an expected failure is told in, or None for a bug (an exception nobody planned for)."""
    if isinstance(error, ModuleNotFoundError) and error.name and error.name.split(".")[0] not in FIRST_PARTY:
        return f"missing dependency {error.name!r}: install it (pip install {error.name.split('.')[0]}) and retry"
    if isinstance(error, EXPECTED_ERRORS):
        return " ".join(str(error).split()) or type(error).__name__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand: an expected failure ends as one line on stderr and status 2 (its traceback with
    --debug); anything else keeps its traceback and asks for a bug report."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"fashion-assistant {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        line = error_line(error)
        if line is None or args.debug:
            traceback.print_exc()
        if line is None:
            print(f"fashion-assistant {args.command}: {BUG_REPORT}", file=sys.stderr)
            return 1
        print(f"fashion-assistant {args.command}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
