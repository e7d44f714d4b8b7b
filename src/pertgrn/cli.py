"""Command-line interface: ``pertgrn demo`` and friends.

Results go to stdout; log messages and progress bars go to stderr. The parser imports nothing
heavy, so ``pertgrn --help`` and ``pertgrn --version`` answer at once; a command imports what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


def _configure_logging(verbose: bool) -> None:
    # pertgrn's own logger prints to stderr at settings.verbosity; the root logger is left alone, so the
    # lines of Lightning and scvi-tools (which print through their own handlers) are not printed twice
    from pertgrn import settings

    settings.verbosity = "info" if verbose else None


def _demo(args: argparse.Namespace, stdout: TextIO) -> int:
    import numpy as np

    import pertgrn as pg

    t0 = time.perf_counter()
    adata = pg.datasets.simulate(seed=args.seed)
    pg.pp.annotate_perturbations(adata, perturbation_key="perturbation", control="control")
    pg.pp.annotate_qc(adata, doublets=True)
    n_before = adata.n_obs
    pg.pp.filter_weak_perturbations(adata)
    pg.pp.select_extended_genes(adata)
    pg.pp.ot_pairing(adata, method="emd", seed=args.seed)
    t_pp = time.perf_counter() - t0

    design = adata.uns["pertgrn"]
    conditions = adata.obs["pertgrn_condition"].cat.categories
    n_doubles = sum(design["delimiter"] in c for c in conditions)
    costs = adata.uns["ot_pairing"]["costs"]["cost"]
    mean_cost = float(np.average(costs, weights=adata.uns["ot_pairing"]["costs"]["n_cells"]))
    lines = [
        "pertgrn demo: a simulated CRISPR screen with a known GRN",
        f"  cells             {adata.n_obs:,} ({n_before - adata.n_obs} removed by the weak-perturbation filter)",
        f"  genes             {adata.n_vars:,}",
        f"  conditions        {len(conditions) - 1} + control ({n_doubles} double perturbations)",
        f"  targets           {len(design['targets'])} ({len(design['unmeasured_targets'])} not measured)",
        f"  QC failures       {int(adata.obs['pertgrn_qc_fail'].sum())} cells "
        f"(simulated truth: {int(adata.obs['true_qc_fail'].sum())})",
        f"  extended genes    {int(adata.var['pertgrn_extended'].sum())}",
        f"  OT pairing cost   {mean_cost:.3f} mean squared distance to paired controls (PCA space)",
        f"  preprocessing     {t_pp:.1f} s",
    ]
    if args.epochs > 0:
        t1 = time.perf_counter()
        pg.tl.fit_gpovae(adata, max_epochs=args.epochs, random_state=args.seed)
        grn = pg.get.grn_df(adata, key="gpovae")
        pg.tl.baseline_grn(adata, method="de")
        auprc = {
            key: float(pg.tl.evaluate(adata, key=key, metrics=["grn_auprc"]).loc["grn_auprc", "value"])
            for key in ("gpovae", "baseline_de")
        }
        n_nodes = len(adata.uns["gpovae"]["nodes"])
        n_binary = len(pg.get.grn_df(adata, key="gpovae", threshold=0.5))
        lines.append(f"  GPOVAE training   {time.perf_counter() - t1:.1f} s ({args.epochs} epochs)")
        lines.append(f"  GRN               {n_nodes} nodes, {n_binary} edges with probability > 0.5")
        lines.append(
            f"  AUPRC vs truth    GPOVAE {auprc['gpovae']:.3f}, differential-expression ranking "
            f"{auprc['baseline_de']:.3f}"
        )
        lines.append("  strongest inferred edges (regulator -> target: probability):")
        lines += [f"    {r.source} -> {r.target}: {r.weight:.3f}" for r in grn.head(args.top_edges).itertuples()]
    out = Path(args.out)
    adata.write_h5ad(out)
    lines.append(f"  written           {out}")
    print("\n".join(lines), file=stdout)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pertgrn`` argument parser."""
    from pertgrn import __version__

    parser = argparse.ArgumentParser(
        prog="pertgrn",
        description="Gene regulatory networks and perturbation-response models for single-cell CRISPR screens.",
        epilog="Results go to stdout; log messages and progress bars to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"pertgrn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step's summary (verbosity 'info')")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulate a screen, preprocess it, fit GPOVAE and write an .h5ad")
    demo.add_argument("--out", default="pertgrn_demo.h5ad", help="output .h5ad (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="simulation and training seed (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=40, help="GPOVAE epochs; 0 skips training (default: %(default)s)")
    demo.add_argument("--top-edges", type=int, default=10, help="edges to print (default: %(default)s)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pertgrn`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    # stdout carries results only: whatever a library prints while a command runs (scvi-tools draws its
    # training progress bar on stdout) goes to stderr, beside the log messages
    results = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        return args.func(args, stdout=results)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
