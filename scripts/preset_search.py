"""Pick the default model's shuffle preset on its validation split.

For every (h1, h2) in the grid, on the validation clips that training held out
(``stratified_holdout(train labels, val_fraction, seed)``, the same clips the
checkpoint never fitted), measure with an ensemble of 10:

* clean accuracy of the shuffle ensemble;
* accuracy under I-FGSM crafted on the undefended model (eps 4/255, 30 steps);
* accuracy under adaptive EOT against that (h1, h2) (eps 4/255, 30 steps,
  10 fresh shuffles per step, gradients through the gather).

Rule: among presets whose clean ensemble accuracy is >= 99% of the undefended
model's, take the highest EOT accuracy; ties by I-FGSM accuracy, then the smaller
h1 (the mildest shuffle). Usage::

    python scripts/preset_search.py --checkpoint runs/default/toy_r3d18.ckpt \
        --data runs/toy2 --out docs/default_model --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from service.core.ensemble import ShuffleEnsemble, majority_vote_batch, make_generator
from service.core.presets import ShufflePreset
from service.research.robustness.attacks import EOT, IFGSM
from service.research.toy.data import load_toy_dataset
from service.research.train import clips_to_input, load_checkpoint, stratified_holdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--h1", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    p.add_argument("--h2", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--ensemble", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-clips", type=int, default=None, help="smoke runs only")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, map_location=device)
    data = load_toy_dataset(args.data).select("train")
    frac = float(ckpt["train_args"]["val_fraction"])
    mask = stratified_holdout(data.labels, frac, int(ckpt["train_args"]["seed"]))
    clips, labels = data.clips[mask], data.labels[mask].to(device)
    if args.max_clips:
        clips, labels = clips[: args.max_clips], labels[: args.max_clips]
    x = clips_to_input(clips, device)  # float [B, 3, T, H, W] in [0, 1]

    def batched(fn, *tensors):  # type: ignore[no-untyped-def]
        outs = [fn(*(t[i : i + args.batch_size] for t in tensors))
                for i in range(0, tensors[0].shape[0], args.batch_size)]
        return torch.cat(outs)

    with torch.no_grad():
        plain = batched(lambda v: model(v).argmax(-1), x)
    undefended = (plain == labels).float().mean().item()
    adv_ifgsm = batched(lambda v, y: IFGSM(model, seed=args.seed)(v, y), x, labels)
    with torch.no_grad():
        ifgsm_undefended = (batched(lambda v: model(v).argmax(-1), adv_ifgsm) == labels)
    rows = []
    grid = [(h1, h2) for h1 in args.h1 for h2 in args.h2 if h2 <= x.shape[2]]
    for h1, h2 in tqdm(grid, desc="preset grid"):
        preset = ShufflePreset(h1, h2, args.ensemble)

        def defended(v: torch.Tensor, preset: ShufflePreset = preset) -> torch.Tensor:
            ens = ShuffleEnsemble(model, preset, generator=make_generator(args.seed))
            with torch.no_grad():
                return majority_vote_batch(ens(v))[0]

        clean = (batched(defended, x) == labels).float().mean().item()
        ifgsm = (batched(defended, adv_ifgsm) == labels).float().mean().item()
        eot_adv = batched(
            lambda v, y, preset=preset: EOT(model, preset, seed=args.seed)(v, y), x, labels
        )
        eot = (batched(defended, eot_adv) == labels).float().mean().item()
        rows.append({"h1": h1, "h2": h2, "clean": clean, "ifgsm": ifgsm, "eot": eot})
        tqdm.write(f"h1={h1:>2} h2={h2} clean={clean:.3f} ifgsm={ifgsm:.3f} eot={eot:.3f}")

    ok = [r for r in rows if r["clean"] >= 0.99 * undefended] or rows
    best = max(ok, key=lambda r: (r["eot"], r["ifgsm"], -r["h1"]))
    result = {
        "checkpoint": str(args.checkpoint),
        "val_clips": int(mask.sum()),
        "undefended_clean": undefended,
        "undefended_ifgsm": ifgsm_undefended.float().mean().item(),
        "ensemble": args.ensemble,
        "seed": args.seed,
        "grid": rows,
        "chosen": best,
        "command": "python " + " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preset_search.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
