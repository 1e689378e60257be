"""``shuffleguard audit``: the verdict rule, three tiny archived models, resume, bad input.

The models (``tests/experiments/audit_models.py``) are trained here in seconds and
archived with the real :func:`service.modelserver.archive.build_mar`, so the audit reads real .mar
files (TorchScript) and real clip files (.npy and, for one model, .mp4). The attacks run at
full strength (there is no option to weaken them); the samples are small.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.cli import main
from service.research.experiments.audit import VERDICTS, verdict
from tests.experiments.audit_models import Audited, Conv3dNet, PerFrame2dNet, build

#: the regime map's archives (issue 12, section 1), shipped beside its reports
REGIME_MODELS = Path("docs/results/regime/models")
#: small but full-strength audits: 24 evaluated clips, 8 attacked, a one-cell tune
SMALL = [
    "--clips", "24", "--attack-clips", "8", "--tune-clips", "4", "--h1s", "4", "--h2s", "1",
    "--ensembles", "10", "--latency-clips", "1", "--latency-repeats", "1", "--threads", "1",
    "--no-progress",
]  # fmt: skip


def _fig(acc: float, low: float, high: float, n: int = 20) -> dict[str, Any]:
    return {"accuracy": acc, "low": low, "high": high, "n": n, "correct": round(acc * n)}


def _figures(**over: tuple[float, float, float]) -> dict[str, dict[str, Any]]:
    base = {
        "clean/none": (1.0, 0.85, 1.0), "clean/shuffle": (1.0, 0.85, 1.0),
        "uniformized/none": (0.2, 0.1, 0.3), "permuted/none": (0.3, 0.15, 0.5),
        "ifgsm/none": (0.1, 0.03, 0.3), "ifgsm/shuffle": (0.9, 0.7, 0.97),
        "eot/shuffle": (0.8, 0.6, 0.92),
    }  # fmt: skip
    base.update({k.replace("__", "/"): v for k, v in over.items()})
    return {k: _fig(*v) for k, v in base.items()}


def test_verdict_rule_takes_the_first_rule_that_holds() -> None:
    assert verdict(_figures(), 0.95, "m")["code"] == "protects"
    # the defended clean accuracy is surely under 95% of 100%: needs motion, whatever else
    needs = _figures(clean__shuffle=(0.5, 0.3, 0.7))
    v = verdict(needs, 0.95, "m")
    assert v["code"] == "needs_motion" and "needs motion" in v["sentence"]
    # an upper bound that reaches the floor is not "beyond doubt"
    assert verdict(_figures(clean__shuffle=(0.8, 0.6, 0.96)), 0.95, "m")["code"] == "protects"
    # no gain (EOT's interval overlaps the undefended I-FGSM's), permuting costs nothing
    flat = _figures(eot__shuffle=(0.2, 0.07, 0.4), permuted__none=(1.0, 0.85, 1.0))
    v = verdict(flat, 0.95, "m")
    assert v["code"] == "order_insensitive" and "order-insensitive" in v["sentence"]
    # no gain and the model reads order: no measurable gain
    assert verdict(_figures(eot__shuffle=(0.2, 0.07, 0.4)), 0.95, "m")["code"] == (
        "no_measurable_gain"
    )
    # the worse of the two attacks decides: a strong I-FGSM row does not hide EOT
    assert verdict(_figures(ifgsm__shuffle=(1.0, 0.9, 1.0), eot__shuffle=(0.2, 0.07, 0.4)),
                   0.95, "m")["code"] != "protects"  # fmt: skip
    assert {verdict(f, 0.95, "m")["code"] for f in (needs, flat, _figures())} <= set(VERDICTS)


def test_verdict_says_when_the_attack_barely_bites() -> None:
    bites = verdict(_figures(), 0.95, "m")
    assert bites["attack_bites"] and "Caveat" not in bites["sentence"]
    # the undefended model keeps 80-100% under I-FGSM: the attacked figures measure little
    weak = _figures(ifgsm__none=(0.95, 0.8, 1.0), eot__shuffle=(0.9, 0.75, 1.0),
                    permuted__none=(1.0, 0.85, 1.0))  # fmt: skip
    v = verdict(weak, 0.95, "m")
    assert v["code"] == "order_insensitive" and not v["attack_bites"]
    assert "barely bites" in v["sentence"] and "--eps" in v["sentence"]


def test_eps_can_be_raised_never_lowered() -> None:
    with pytest.raises(SystemExit, match=r"--eps must be 4\.\.255 pixel levels, got 2"):
        main(["audit", "--model", "x.mar", "--data", "d", "--eps", "2"])
    from service.research.experiments.audit import AuditConfig

    with pytest.raises(ValueError, match="4/255 is the floor"):
        AuditConfig(model="x.mar", data="d", eps=3).check()
    AuditConfig(model="x.mar", data="d", eps=16).check()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Audited]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("audit")
    out = {
        "motion": build(root, "motion", Conv3dNet, 3, epochs=14),
        "spatial": build(root, "spatial", Conv3dNet, 1, epochs=6),
        "perframe": build(root, "perframe", PerFrame2dNet, 2, epochs=10, mp4_every=4),
    }
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def audits(models: dict[str, Audited], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("audits")
    out = {}
    for name, m in models.items():
        argv = ["audit", "--model", str(m.mar), "--data", str(m.data),
                "--out", str(root / name), *SMALL]  # fmt: skip
        threads = torch.get_num_threads()
        assert main(argv) == 0
        torch.set_num_threads(threads)
        out[name] = {"argv": argv, "out": root / name,
                     "res": json.loads((root / name / "audit.json").read_text())}  # fmt: skip
    return out


def test_the_tiny_models_get_the_verdicts_of_their_regimes(audits: dict[str, Any]) -> None:
    motion, spatial, perframe = (audits[k]["res"] for k in ("motion", "spatial", "perframe"))
    # dataset 3: only the frame order tells the classes apart
    fig = motion["figures"]
    assert fig["clean/none"]["accuracy"] >= 0.6, "the motion model did not learn"  # chance 0.125
    assert motion["verdict"]["code"] == "needs_motion", motion["verdict"]
    assert fig["clean/shuffle"]["high"] < 0.95 * fig["clean/none"]["accuracy"]
    # per-frame features averaged over time: a permutation changes nothing
    fig = perframe["figures"]
    assert fig["clean/none"]["accuracy"] >= 0.6, "the per-frame model did not learn"
    assert fig["permuted/none"]["accuracy"] == fig["clean/none"]["accuracy"]
    assert perframe["verdict"]["code"] == "order_insensitive", perframe["verdict"]
    # dataset 1: the background alone gives the class; the shuffles keep clean accuracy
    fig = spatial["figures"]
    assert fig["clean/shuffle"]["high"] >= 0.95 * fig["clean/none"]["accuracy"]
    assert spatial["verdict"]["code"] != motion["verdict"]["code"]
    assert perframe["verdict"]["code"] != motion["verdict"]["code"]


def test_the_report_has_every_part(audits: dict[str, Any]) -> None:
    out, res = audits["motion"]["out"], audits["motion"]["res"]
    for ext in ("csv", "json", "md", "png"):
        assert (out / f"audit.{ext}").stat().st_size > 0
    md = (out / "audit.md").read_text()
    assert res["verdict"]["sentence"] in md and "shuffleguard audit --model" in md
    assert "## Recommended preset" in md and "## Compute cost" in md and "needs_motion" in md
    assert res["budget"] == {"eps": 4 / 255, "steps": 30, "eot_draws": 10,
                             "flicker_steps": 2500, "flicker_eps": 0.2}  # fmt: skip
    assert res["clips"] == {"evaluated": 24, "attacked": 8, "tune": 4, "available": 40}
    assert res["tune"]["preset"]["h1"] == 4 and res["tune"]["preset"]["ensemble"] == 10
    cost = res["cost"]
    assert cost["defended_model_evaluations"] == 10 and cost["undefended_model_evaluations"] == 1
    assert cost["defended_seconds"] > 0 and cost["undefended_seconds"] > 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    eot = [r for r in records if r["attack"] == "eot"]
    assert len(eot) == 8 and all(r["linf"] <= 4 / 255 + 1e-6 for r in eot)


def test_a_rerun_does_no_new_work_and_writes_the_same_report(
    audits: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    a = audits["perframe"]
    before = {ext: (a["out"] / f"audit.{ext}").read_bytes() for ext in ("md", "json", "csv")}
    lines = (a["out"] / "records.jsonl").read_text().count("\n")
    capsys.readouterr()
    threads = torch.get_num_threads()
    assert main(a["argv"]) == 0
    torch.set_num_threads(threads)
    assert "computed 0 results" in capsys.readouterr().out
    assert (a["out"] / "records.jsonl").read_text().count("\n") == lines
    for ext, data in before.items():
        assert (a["out"] / f"audit.{ext}").read_bytes() == data, ext
    # other settings are refused, not mixed into these records
    with pytest.raises(SystemExit, match="other settings"):
        main([*a["argv"], "--seed", "1"])


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_input_gets_a_clear_error(models: dict[str, Audited], tmp_path: Path) -> None:
    m = models["perframe"]

    def audit(data: Path, *extra: str) -> None:
        main(["audit", "--model", str(m.mar), "--data", str(data), "--out",
              str(data) + "-out", *SMALL, *extra])  # fmt: skip

    bad = _copy(m.data, tmp_path / "no-labels")
    (bad / "labels.csv").unlink()
    with pytest.raises(SystemExit, match=r"no labels file .*labels\.csv.*file,label_index,label"):
        audit(bad)
    bad = _copy(m.data, tmp_path / "unknown-label")
    text = (bad / "labels.csv").read_text().splitlines()
    first = text[1].split(",")
    first[2] = "jumping_jacks"
    (bad / "labels.csv").write_text("\n".join([text[0], ",".join(first), *text[2:]]) + "\n")
    with pytest.raises(SystemExit, match=r"row 2: unknown label 'jumping_jacks'; the model's"):
        audit(bad)
    bad = _copy(m.data, tmp_path / "undecodable")
    for victim in bad.glob("*.mp4"):  # every one, so a clip the audit uses is among them
        victim.write_bytes(os.urandom(2048))
    with pytest.raises(SystemExit, match=r"clip_\d+\.mp4: .*(decode|video)"):
        audit(bad)
    with pytest.raises(SystemExit, match="no such archive"):
        main(["audit", "--model", str(tmp_path / "missing.mar"), "--data", str(m.data)])
    assert not (tmp_path / "undecodable-out" / "run.json").exists()  # stopped before any work
    not_npy = _copy(m.data, tmp_path / "bad-shape")
    npy = text[2].split(",")[0]
    assert npy.endswith(".npy")
    for victim in not_npy.glob("*.npy"):
        np.save(victim, np.zeros((8, 16, 16), np.uint8))  # no colour axis
    with pytest.raises(SystemExit, match=r"clip_\d+\.npy: .*\[T, H, W, 3\]"):
        audit(not_npy)
    missing = _copy(m.data, tmp_path / "missing-clip")
    (missing / npy).unlink()
    with pytest.raises(SystemExit, match=rf"row 3: clip file '{npy}' not found"):
        audit(missing)


@pytest.mark.slow
def test_audit_every_served_model(tmp_path: Path) -> None:
    """Every .mar in model_store/ and the regime map's shipped archives
    (docs/results/regime/models/), audited on fresh clips of its own data recipe
    (meta.json ``data``: the ``toy-data`` options, with another seed). Models of
    different regimes must not all get the same verdict."""
    import dataclasses

    from service.commands.toy_data import ToyDataConfig
    from service.modelserver.archive import read_archive

    options = {f.name for f in dataclasses.fields(ToyDataConfig)} - {"out", "mp4", "fps"}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repo = Path(__file__).resolve().parents[2]
    mars = [*(repo / "model_store").glob("*.mar"), *(repo / REGIME_MODELS).glob("*.mar")]
    verdicts = {}
    for mar in sorted(mars):
        meta, _ = read_archive(mar)
        recipe = dict(meta.get("data") or {})
        if not recipe:
            pytest.fail(f"{mar.name}: meta.json has no data recipe to draw clips from")
        recipe.update(seed=int(recipe.get("seed", 0)) + 1000, count=96)
        data = tmp_path / f"data-{mar.stem}"
        args = ["toy-data", "--out", str(data)]
        for key, value in recipe.items():
            if key in options and not isinstance(value, bool):
                args += [f"--{key.replace('_', '-')}", str(value)]
        assert main(args) == 0
        out = tmp_path / f"audit-{mar.stem}"
        assert main(["audit", "--model", str(mar), "--data", str(data), "--out", str(out),
                     "--attack-clips", "16", "--device", device, "--no-progress"]) == 0  # fmt: skip
        res = json.loads((out / "audit.json").read_text())
        assert res["verdict"]["code"] in VERDICTS
        verdicts[mar.stem] = (res["verdict"]["code"], json.dumps(recipe, sort_keys=True))
    assert {f"toy_{m}_r3d18" for m in ("d1", "d3")} <= set(verdicts), verdicts
    # the map's models span the regimes: dataset 1 (all spatial), dataset 3 (motion only)
    assert verdicts["toy_d1_r3d18"][0] != verdicts["toy_d3_r3d18"][0], verdicts
    assert len({v for v, _ in verdicts.values()}) >= 2, verdicts
