"""Attacks x defenses table (paper Table 5) for a model and a clip set.

Rows: none, rs, denoise, shuffle, shuffle+rs, shuffle+denoise (the denoise rows need
``--denoiser``, trained by ``shuffleguard analyze denoiser``). Columns: clean, I-FGSM,
flickering, OFA (crafted against the undefended model, then classified by each row)
and EOT (adaptive to each row's randomness; on the undefended row it is the
credibility check against I-FGSM, always measured and reported).

Results are appended per (seed, clip, attack, row) to ``records.jsonl`` in ``--out``;
rerunning the same command resumes. Writes ``table5.{csv,json,md,png}`` and
``per_clip.csv``. Attacks run at full strength by default; lowering a budget stamps
every output *REDUCED STRENGTH* (for plumbing tests only).

Example::

    shuffleguard evaluate --checkpoint runs/default/toy_r3d18.ckpt --data runs/toy2 \\
        --denoiser runs/default/dncnn.pt --clips 80 --seeds 0 1 2 --device cuda
"""

from __future__ import annotations

import argparse

ROWS = ("none", "rs", "denoise", "shuffle", "shuffle+rs", "shuffle+denoise")
ATTACKS = ("ifgsm", "flickering", "ofa", "eot")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from service.experiments.common import add_common_arguments

    add_common_arguments(parser, out_default="docs/results/table5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (CIs over them)")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--defenses", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--h1", type=int, default=None, help="preset (default: tune's sidecar)")
    parser.add_argument("--h2", type=int, default=None)
    parser.add_argument("--ensemble", type=int, default=None)
    parser.add_argument("--sigma", type=float, default=0.25, help="smoothing noise std (pixels)")
    parser.add_argument(
        "--rs-n", type=int, default=100, help="noisy copies per smoothed prediction"
    )
    parser.add_argument("--rs-alpha", type=float, default=0.001, help="abstain test level")
    parser.add_argument("--denoiser", default=None, help="DnCNN from `analyze denoiser`")
    parser.add_argument("--attack-batch", type=int, default=4, help="clips per attack batch")
    parser.add_argument(
        "--eot-batch",
        type=int,
        default=40,
        help="most clip copies per EOT forward pass (memory bound; the draws are unchanged)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: write the tables from the records already in --out",
    )
    g = parser.add_argument_group(
        "attack budgets (defaults = full strength; lower = plumbing test)"
    )
    g.add_argument("--eps", type=float, default=4 / 255)
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--eot-draws", type=int, default=10)
    g.add_argument("--flicker-steps", type=int, default=2500)
    g.add_argument("--flicker-eps", type=float, default=0.2)


def run(args: argparse.Namespace) -> int:
    from service.experiments import common
    from service.experiments.evaluate import EvalConfig, run_evaluation, write_outputs

    common.prepare_torch(args.device, args.threads, "shuffleguard evaluate")
    try:
        config = EvalConfig(
            checkpoint=args.checkpoint,
            data=args.data,
            out=args.out,
            split=args.split,
            clips=args.clips,
            subset_seed=args.subset_seed,
            seeds=list(dict.fromkeys(args.seeds)),
            attacks=[a for a in ATTACKS if a in args.attacks],
            defenses=[r for r in ROWS if r in args.defenses],
            h1=args.h1,
            h2=args.h2,
            ensemble=args.ensemble,
            sigma=args.sigma,
            rs_n=args.rs_n,
            rs_alpha=args.rs_alpha,
            denoiser=args.denoiser,
            eps=args.eps,
            steps=args.steps,
            eot_draws=args.eot_draws,
            flicker_steps=args.flicker_steps,
            flicker_eps=args.flicker_eps,
            attack_batch=args.attack_batch,
            eot_batch=args.eot_batch,
            batch_size=args.batch_size,
            device=args.device,
            threads=args.threads,
            report_only=args.report_only,
        )
        summary = run_evaluation(config, progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(f"shuffleguard evaluate: {exc}") from None
    paths = write_outputs(summary, config.out)
    if summary["reduced_strength"]:
        print(
            "REDUCED STRENGTH (plumbing test, not a result): "
            + ", ".join(summary["reduced_strength"])
        )
    for cell in summary["cells"]:
        print(
            f"{cell['defense']:>16} {cell['attack']:>10}: {100 * cell['accuracy']:5.1f}%"
            f" (n={cell['n']}{'' if cell['complete'] else ', incomplete'})"
        )
    check = summary["credibility_check"]
    if check.get("measured"):
        print(
            "EOT credibility check {}: EOT(identity) {:.1f}% vs I-FGSM {:.1f}% (undefended)".format(
                "passed" if check["passed"] else "FAILED",
                100 * check["eot_identity_accuracy"],
                100 * check["ifgsm_accuracy"],
            )
        )
    print(f"computed {summary['computed_this_run']} results; wrote {', '.join(map(str, paths))}")
    return 0
