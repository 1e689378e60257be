"""Every analysis writes its CSV, JSON, Markdown and PNG on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from service.cli import main
from service.research.experiments import common

ANALYSES: dict[str, list[str]] = {
    "table1": ["--clips", "8", "--positions", "0", "7"],
    "fig2": ["--clips", "8", "--draws", "2", "--chunk-sizes", "1", "8", "--row-sizes", "1", "16"],
    "fig7": ["--clips", "8", "--orders", "2", "--chunk-sizes", "8", "--h1s", "2"],
    "fig8": ["--clips", "4", "--draws", "2", "--chunk-sizes", "1", "8"],
    "table3": ["--clips", "4", "--positions", "0", "7"],
    "table2": ["--clips", "1", "--draws", "2", "--h1", "2", "--h2", "1", "--ensemble", "3"],
}


@pytest.mark.parametrize("name", list(ANALYSES))
def test_analysis_writes_its_outputs(name: str, tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / name
    argv = ["analyze", name, "--checkpoint", str(tiny.checkpoint), "--data", str(tiny.data)]
    argv += [*ANALYSES[name], "--out", str(out), "--threads", "1", "--no-progress"]
    argv += ["--adv-cache", str(tiny.root / "cache")]
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    for ext in ("csv", "json", "md", "png"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, ext
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    res = json.loads((out / f"{name}.json").read_text())
    assert res["command"].startswith(f"shuffleguard analyze {name} --checkpoint ")
    assert res["command"] in (out / f"{name}.md").read_text()
    if name == "table1":
        assert [r["frame"] for r in res["rows"]] == [0, 7]
        assert res["original_accuracy"] >= 0.5
    if name == "fig2":
        assert {(r["kind"], r["size"]) for r in res["rows"]} == {
            ("chunk", 1),
            ("chunk", 8),
            ("row", 1),
            ("row", 16),
        }
        clean = [r for r in res["rows"] if r["size"] == 1]
        assert len({r["accuracy_mean"] for r in clean}) == 1  # N = 1 is the identity both ways
    if name == "fig7":
        assert res["first_conv"] == {"kernel": 3, "stride": 1, "padding": 1}
        ident = next(p for p in res["points"] if p["source"] == "identity")
        assert ident["monotonic_ratio"] == 1.0
    if name == "table2":
        assert [r["attack"] for r in res["rows"]] == ["clean", "ifgsm", "static", "framewise"]
        assert all(r["linf_max"] <= 4 / 255 + 1e-6 for r in res["rows"])


def test_denoiser_analysis_trains_and_saves(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.research.experiments.denoiser import load_denoiser

    save = tmp_path / "d.pt"
    argv = ["analyze", "denoiser", "--data", str(tiny.data), "--save", str(save), "--out",
            str(tmp_path / "rep"), "--depth", "3", "--features", "8", "--epochs", "1",
            "--max-clips", "8", "--eval-clips", "4", "--threads", "1", "--no-progress"]  # fmt: skip
    threads = torch.get_num_threads()
    assert main(argv) == 0
    torch.set_num_threads(threads)
    den = load_denoiser(save)
    assert not den.training and den(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)
    res = json.loads((tmp_path / "rep" / "denoiser.json").read_text())
    assert res["train_clips"] == 8 and res["psnr_noisy_db"] > 0
    assert (tmp_path / "rep" / "denoiser.png").stat().st_size > 0


def test_validation_split_is_the_training_holdout(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.research.train import stratified_holdout

    data = common.load_split(tiny.data, "train")
    ckpt = {"train_args": {"val_fraction": 0.25, "seed": 3}}
    val = common.validation_split(tiny.data, ckpt)
    mask = stratified_holdout(data.labels, 0.25, 3)
    assert val.index == [data.index[i] for i in torch.nonzero(mask).flatten().tolist()]
    with pytest.raises(ValueError, match="holdout"):
        common.validation_split(tiny.data, {"train_args": {"val_fraction": 0.0}})


def test_adversarial_cache_is_reused(tmp_path: Path) -> None:
    calls = []

    class Shift:
        def __init__(self, model: torch.nn.Module) -> None:
            pass

        def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[0])
            return x + 0.01

    model = torch.nn.Conv3d(3, 1, 1)
    x, y = torch.zeros(3, 3, 2, 4, 4), torch.zeros(3, dtype=torch.int64)
    cache = tmp_path / "c.pt"
    kw = {"batch_size": 2, "progress": False, "desc": "t", "cache": cache}
    a, _ = common.craft(Shift, model, x, y, ids=[5, 6, 7], **kw)
    b, seconds = common.craft(Shift, model, x[1:], y[1:], ids=[6, 7], **kw)
    assert calls == [2, 1] and seconds == 0.0 and torch.equal(a[1:], b)
    c, _ = common.craft(Shift, model, x[:1] + 1, y[:1], ids=[8], **kw)
    assert calls == [2, 1, 1] and torch.equal(c, x[:1] + 1.01)
