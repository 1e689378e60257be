"""Tune the shuffle defense of a model: h1 x h2 grid (paper Fig. 10), ensemble sizes (Table 4).

Measures the shuffle ensemble on clean clips, I-FGSM clips (crafted against the
undefended model) and EOT clips adaptive to each cell's shuffles, on a seeded,
class-stratified subset of the *validation* clips training held out (``--split val``;
so the reported test clips play no part in the choice), picks a preset by a
written-down rule, writes it to
``<checkpoint>.preset.json`` (read by ``evaluate`` and the analyses) and, with
``--archive-meta model_store/<name>.meta.json``, into that file's ``preset``; then
rebuild the archive with ``shuffleguard archive --h1 --h2 --ensemble``.

Writes ``fig10.{csv,json,md,png}`` and ``table4.{csv,json,md,png}`` in ``--out``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.experiments.common import add_common_arguments

    add_common_arguments(parser, out_default="docs/results/tune")
    parser.set_defaults(split="val")
    parser.add_argument("--h1s", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    parser.add_argument("--h2s", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--ensembles", type=int, nargs="+", default=[1, 3, 5, 10, 20])
    parser.add_argument("--grid-ensemble", type=int, default=10, help="ensemble size on the grid")
    parser.add_argument("--attacks", nargs="+", choices=("ifgsm", "eot"), default=["ifgsm", "eot"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clean-ratio", type=float, default=0.95, help="clean floor vs undefended")
    parser.add_argument("--tolerance", type=float, default=0.01, help="ensemble-size tolerance")
    parser.add_argument("--attack-batch", type=int, default=8, help="clips per attack batch")
    parser.add_argument("--archive-meta", default=None, help="meta.json whose preset to update")
    parser.add_argument(
        "--no-preset",
        action="store_true",
        help="report only: write no <checkpoint>.preset.json and leave --archive-meta alone",
    )


def run(args: argparse.Namespace) -> int:
    from service.experiments import common
    from service.experiments.tune import run_tune, write_outputs, write_preset

    common.prepare_torch(args.device, args.threads, "shuffleguard tune")
    if min(args.h1s) < 0 or min(args.h2s) < 1 or min(args.ensembles) < 1 or args.grid_ensemble < 1:
        raise SystemExit("shuffleguard tune: need h1 >= 0, h2 >= 1 and ensemble sizes >= 1")
    args.h1s, args.h2s = sorted(set(args.h1s)), sorted(set(args.h2s))
    args.ensembles = sorted(set(args.ensembles))
    args.attacks = [a for a in ("ifgsm", "eot") if a in args.attacks]
    res = run_tune(args)
    paths = write_outputs(res, args.out)
    written = [] if args.no_preset else write_preset(res, args.checkpoint, args.archive_meta)
    p = res["preset"]
    c = res["chosen_cell"]
    print(
        f"chosen preset h1={p['h1']} h2={p['h2']} ensemble={p['ensemble']}: clean "
        f"{100 * c['clean']:.1f}%, worst case {100 * c['worst']:.1f}% (undefended clean "
        f"{100 * res['undefended_clean']:.1f}%)"
    )
    print(f"wrote {', '.join(map(str, paths + written))}")
    if args.archive_meta and not args.no_preset:
        print(
            f"rebuild the archive: shuffleguard archive --checkpoint {args.checkpoint}"
            " --name <name>"
            f" --h1 {p['h1']} --h2 {p['h2']} --ensemble {p['ensemble']}"
        )
    return 0
