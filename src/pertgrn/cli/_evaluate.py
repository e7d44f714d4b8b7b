"""``pertgrn evaluate IN.h5ad --keys k1,k2 -o metrics.json``: score fitted models and baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from pertgrn.cli._io import StagedOutputs, check_output_path, read_h5ad, write_json
from pertgrn.cli._options import UsageError

DESCRIPTION = """\
Score what models and baselines wrote into IN.h5ad (e.g. the OUT.h5ad of `pertgrn fit`) with
pertgrn.tl.evaluate, one key after the other, print a metric x key table on stdout and, with -o,
write the metrics as JSON: {"metrics": [{"key", "metric", "value"}, ...]} (the rows of
pertgrn.get.metrics_df; NaN as null), with the input and the options. Pass the --test-key the
model was fitted with, so that it is scored on cells it never saw.
"""


def _comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return items


def integer_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_parser(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Add ``pertgrn evaluate`` to the subcommands."""
    parser = sub.add_parser(
        "evaluate",
        help="score fitted models and baselines (tl.evaluate); a table on stdout, JSON with -o",
        description=DESCRIPTION,
        formatter_class=formatter,
    )
    parser.add_argument("input", metavar="IN.h5ad", help="screen holding model or baseline outputs")
    parser.add_argument(
        "--keys", required=True, type=_comma_list, metavar="KEYS", help="comma-separated key_added of each model"
    )
    parser.add_argument("-o", "--output", metavar="metrics.json", help="JSON file of the metrics")
    parser.add_argument(
        "--metrics",
        type=_comma_list,
        metavar="NAMES",
        help="comma-separated metrics or groups (ate, grn, dag); default: every metric that applies",
    )
    parser.add_argument("--test-key", metavar="COLUMN", help="bool obs column of held-out cells (default: all cells)")
    parser.add_argument(
        "--perturbations", type=_comma_list, metavar="LABELS", help="score these perturbations only (comma-separated)"
    )
    parser.add_argument(
        "--grn-threshold",
        type=float,
        default=0.5,
        metavar="W",
        help="edges above this weight form the GRN (default: %(default)s)",
    )
    parser.add_argument(
        "--n-edges",
        type=integer_or_none,
        metavar="N",
        help="score exactly the N strongest edges (µWD at a matched number of edges) instead of the threshold",
    )
    parser.add_argument(
        "--truth",
        default="true_grn",
        metavar="KEY|FILE",
        help="reference GRN: a key (the simulator's true_grn, a varp matrix), a CSV/TSV table with source and "
        "target columns, or 'none' (default: %(default)s)",
    )
    parser.add_argument("--k", type=int, default=50, metavar="K", help="top-k genes of topk_jaccard (default: 50)")
    parser.add_argument("--layer", metavar="LAYER", help="layer of raw counts for observed effects (default: X)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed of sampled negatives (default: 0)")
    return parser


def _truth(value: str) -> object:
    if value.lower() == "none":
        return None
    path = Path(value)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        import pandas as pd

        if not path.is_file():
            raise UsageError(f"--truth file {value!r} does not exist.")
        return pd.read_csv(path, sep=None, engine="python")
    return value


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Run ``pertgrn evaluate``."""
    output = check_output_path(Path(args.output), "metrics file") if args.output else None
    truth = _truth(args.truth)

    import pandas as pd

    import pertgrn as pg

    adata = read_h5ad(args.input)
    missing = [key for key in args.keys if key not in adata.uns]
    if missing:
        raise UsageError(
            f"no model or baseline output under {missing} in {args.input}; uns holds {sorted(map(str, adata.uns))}."
        )
    for key in args.keys:
        pg.tl.evaluate(
            adata,
            key=key,
            metrics=args.metrics,
            test_key=args.test_key,
            perturbations=args.perturbations,
            grn_threshold=args.grn_threshold,
            n_edges=args.n_edges,
            truth=truth,
            k=args.k,
            layer=args.layer,
            seed=args.seed,
        )
    table = pg.get.metrics_df(adata, keys=args.keys)
    if output is not None:
        document = {
            "command": "evaluate",
            "argv": list(args.argv),
            "pertgrn_version": pg.__version__,
            "input": str(Path(args.input).resolve()),
            "options": {
                "keys": args.keys,
                "metrics": args.metrics,
                "test_key": args.test_key,
                "perturbations": args.perturbations,
                "grn_threshold": args.grn_threshold,
                "n_edges": args.n_edges,
                "truth": args.truth,
                "k": args.k,
                "layer": args.layer,
                "seed": args.seed,
            },
            "metrics": table.to_dict(orient="records"),
        }
        with StagedOutputs() as staged:
            write_json(staged.stage(output), document)
            staged.commit()
    wide = table.pivot(index="metric", columns="key", values="value")
    wide = wide.reindex(index=pd.unique(table["metric"]), columns=args.keys)
    wide.columns.name = None
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(wide.to_string(float_format=lambda v: f"{v:.4g}"), file=stdout)
    return 0
