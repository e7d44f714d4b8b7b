"""``pertgrn predict MODEL_DIR IN.h5ad --perturbations "A,A+B" -o PRED.h5ad``: cells a saved model predicts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from pertgrn.cli._io import StagedOutputs, check_output_path, read_h5ad
from pertgrn.cli._models import entry_for_class, import_object
from pertgrn.cli._options import UsageError

DESCRIPTION = """\
Load the model saved in MODEL_DIR by `pertgrn fit` (its class is read from the saved registry) on the
screen it was fitted on (IN.h5ad, the OUT.h5ad of `pertgrn fit`), and write the cells it predicts for
each perturbation (model.predict) to PRED.h5ad: X holds expected counts (drawn counts with --sample),
obs["perturbation"] the label.
"""


def integer_or_none(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def add_parser(sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> argparse.ArgumentParser:
    """Add ``pertgrn predict`` to the subcommands."""
    parser = sub.add_parser(
        "predict",
        help="predict cells for perturbations (also unseen ones and combinations) with a saved model",
        description=DESCRIPTION,
        formatter_class=formatter,
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by `pertgrn fit` (--model-dir)")
    parser.add_argument("input", metavar="IN.h5ad", help="the screen the model was fitted on (OUT.h5ad of fit)")
    parser.add_argument("-o", "--output", required=True, metavar="PRED.h5ad", help="the predicted cells written")
    parser.add_argument(
        "--perturbations",
        required=True,
        metavar="LABELS",
        help="comma-separated labels: targets, combinations joined by the screen's delimiter (A+B), the control",
    )
    parser.add_argument(
        "-n", "--n-cells", type=int, default=100, metavar="N", help="cells per perturbation (default: %(default)s)"
    )
    parser.add_argument(
        "--library-size", type=float, default=1e4, metavar="UMI", help="library size of the cells (default: 1e4)"
    )
    parser.add_argument("--sample", action="store_true", help="draw counts around the expectation")
    parser.add_argument(
        "--batch-size", type=int, default=1024, metavar="N", help="cells decoded at once (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=integer_or_none,
        default=0,
        metavar="N",
        help="seed of every draw; 'none': the global state (default: 0)",
    )
    parser.add_argument(
        "--accelerator", default="auto", metavar="NAME", help="where the model runs: cpu, gpu or auto (default: auto)"
    )
    return parser


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """Run ``pertgrn predict``."""
    model_dir = Path(args.model_dir)
    if not (model_dir / "model.pt").is_file():
        raise UsageError(
            f"{str(model_dir)!r} does not hold a saved model (no model.pt); see `pertgrn fit --model-dir`."
        )
    output = check_output_path(Path(args.output), "output file")
    labels = [label.strip() for label in args.perturbations.split(",")]
    if not all(labels):
        raise UsageError(f"--perturbations has an empty label: {args.perturbations!r}.")

    from scvi.model.base import BaseModelClass

    registry = BaseModelClass.load_registry(str(model_dir))
    model_cls = import_object(entry_for_class(str(registry["model_name"])).model_class)
    adata = read_h5ad(args.input)
    try:
        model = model_cls.load(str(model_dir), adata=adata, accelerator=args.accelerator)
    except (ValueError, KeyError) as err:  # scvi-tools: var_names or set-up fields that do not match
        raise UsageError(f"{args.input} does not fit the model saved in {model_dir}: {err}") from None
    predicted = model.predict(
        perturbations=labels,
        n_cells=args.n_cells,
        library_size=args.library_size,
        sample=args.sample,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    with StagedOutputs() as staged:
        predicted.write_h5ad(staged.stage(output))
        staged.commit()
    print(
        f"pertgrn predict: {predicted.n_obs:,} cells x {predicted.n_vars:,} genes from {type(model).__name__} "
        f"for {len(labels)} perturbation(s) ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})\n"
        f"  written     {output}",
        file=stdout,
    )
    return 0
