"""Attack a live gateway as an outsider would: query-based black-box attacks.

    shuffleguard redteam --url http://127.0.0.1:8000 --data runs/toy2 --queries 300 --eps 4

Each clip of ``--data`` (``.npy`` uint8 ``[T, H, W, 3]`` + ``labels.csv``, as
``shuffleguard toy-data`` writes them; at the served model's ``clip_len`` x
``crop_size``, so the gateway uses them bit-exact) is attacked with at most
``--queries`` answered queries (the clean check and the ``--confirm`` re-queries that
confirm a success included). A 429 or 503 answer is waited out (its ``Retry-After``)
and retried; it is counted apart and not charged to the budget, since it tells the
attacker nothing.

Which attack runs depends on what the gateway reveals (probed with one query):
research mode (vote shares) gets the score-based Square Attack, against the defense
and, for comparison, against ``defense=false``; production mode (the label only) gets
the label-only RayS attack. Requests never send ``seed``: the defended gateway draws a
fresh shuffle seed per request, as it would for any outsider, so the attacker sees
noisy answers (see :mod:`service.research.robustness.blackbox`).

Writes ``redteam.{csv,json,md,png}`` (one row per clip and setting; summary with
Wilson intervals in the JSON and Markdown) and the final clips under
``adv/<setting>/<file>.npy``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from service.options import ExperimentConfig, opt, out_opt, progress_opt
from service.research.robustness.blackbox import (
    Answer,
    RaySAttack,
    SquareAttack,
    perturbation_norms,
)

logger = logging.getLogger(__name__)

__all__ = ["GatewayClient", "RedteamConfig", "run"]


@dataclass
class RedteamConfig(ExperimentConfig):
    """Settings of ``shuffleguard redteam``."""

    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard", "redteam")
    ORDER: ClassVar[tuple[str, ...]] = ("url", "data")

    data: str = opt(help="clips: .npy uint8 [T, H, W, 3] + labels.csv (toy-data layout)",
                    show="always")  # fmt: skip
    url: str = opt("http://127.0.0.1:8000", "gateway base URL", show="always")
    queries: int = opt(300, "query budget per clip (clean check and confirmations included)",
                       show="always")  # fmt: skip
    eps: int = opt(4, "L-inf radius in pixel levels (4 = 4/255)", show="always")
    clips: int = opt(8, "clips attacked (seeded class-stratified subset)", show="always")
    split: str = opt("test", "clips of this split of labels.csv", choices=("test", "val", "train",
                     "all"))  # fmt: skip
    subset_seed: int = opt(0, "seed of the clip subset")
    seed: int = opt(0, "attack seed (each clip's generator derives from it)", show="always")
    attack: str = opt(
        "auto", "auto: square where the gateway shows scores, else rays",
        choices=("auto", "square", "rays"),
    )  # fmt: skip
    confirm: int = opt(5, "fresh re-queries that confirm a success (strict majority wrong)")
    p_init: float = opt(0.05, "Square Attack: initial square area / frame area")
    frames: str = opt("all", "Square Attack: the same square in every frame, a spatio-temporal "
                      "window, or a square of its own in each frame",
                      choices=("all", "window", "each"))  # fmt: skip
    no_undefended: bool = opt(False, "research mode: skip the defense=false comparison")
    model: str | None = opt(None, "served model (default: the gateway's default)")
    out: str = out_opt("runs/redteam")
    timeout: float = opt(120.0, "seconds per request", show="never")
    max_retries: int = opt(30, "retries of one query after 429/503", show="never")
    no_progress: bool = progress_opt()

    def check(self) -> None:
        if self.queries < self.confirm + 2:
            raise ValueError(f"--queries must be >= --confirm + 2 ({self.confirm + 2})")
        if not 1 <= self.eps <= 255:
            raise ValueError(f"--eps must be 1..255 pixel levels, got {self.eps}")
        if self.clips < 1 or self.confirm < 1:
            raise ValueError("--clips and --confirm must be >= 1")


# --------------------------------------------------------------------------- #
# The client
# --------------------------------------------------------------------------- #
class GatewayError(RuntimeError):
    """The gateway refused a query for good (not 429/503)."""


class GatewayClient:
    """A counting client of ``/v1/classify``: clips go as ``.npy`` uint8 ``[T, H, W, 3]``.

    ``requests``: every HTTP request sent; ``answered``: 200s; ``throttled``: 429/503
    answers, each waited out for its ``Retry-After`` (seconds; 1 when absent) and
    retried, at most ``max_retries`` times per query.
    """

    def __init__(self, url: str, *, timeout: float = 120.0, max_retries: int = 30) -> None:
        import httpx

        from service.gateway.keys import auth_headers

        logging.getLogger("httpx").setLevel(logging.WARNING)
        self.url = url.rstrip("/")
        # the key in $SHUFFLEGUARD_API_KEY, when the gateway requires one
        self.http = httpx.Client(timeout=timeout, trust_env=False, headers=auth_headers())
        self.max_retries = max_retries
        self.requests = self.answered = self.throttled = 0
        self.slept_s = 0.0

    def close(self) -> None:
        self.http.close()

    def models(self) -> list[dict[str, Any]]:
        response = self.http.get(self.url + "/v1/models")
        response.raise_for_status()
        return list(response.json()["models"])

    def classify(self, clip: np.ndarray, params: dict[str, str]) -> dict[str, Any]:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(clip, dtype=np.uint8), allow_pickle=False)
        body = buf.getvalue()
        for _ in range(self.max_retries + 1):
            self.requests += 1
            response = self.http.post(
                self.url + "/v1/classify", content=body, params=params,
                headers={"Content-Type": "application/x-npy"},
            )  # fmt: skip
            if response.status_code == 200:
                self.answered += 1
                return dict(response.json())
            if response.status_code not in (429, 503):
                raise GatewayError(f"HTTP {response.status_code}: {response.text[:300]}")
            self.throttled += 1
            wait = _retry_after(response.headers.get("Retry-After"))
            self.slept_s += wait
            time.sleep(wait)
        raise GatewayError(f"still throttled after {self.max_retries} retries")


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def make_oracle(client: GatewayClient, params: dict[str, str], labels: list[str]) -> Any:
    """The oracle of :mod:`service.research.robustness.blackbox` over ``client`` with ``params``."""
    index = {name: i for i, name in enumerate(labels)}

    def oracle(clip: np.ndarray) -> Answer:
        r = client.classify(clip, params)
        votes = r.get("votes")
        shares = None
        if votes:
            total = sum(votes.values())
            shares = {index[k]: v / total for k, v in votes.items()}
        return Answer(int(r["label_index"]), shares, r.get("confidence"))

    return oracle


# --------------------------------------------------------------------------- #
# The run
# --------------------------------------------------------------------------- #
def _load_clips(config: RedteamConfig) -> list[tuple[str, int, np.ndarray]]:
    import torch

    from service.research.experiments.common import stratified_subset

    root = Path(config.data)
    with open(root / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if config.split == "all" or
                r.get("split", config.split) == config.split]  # fmt: skip
    if not rows:
        raise ValueError(f"no clips of split {config.split!r} in {root / 'labels.csv'}")
    labels = torch.tensor([int(r["label_index"]) for r in rows])
    chosen = stratified_subset(labels, config.clips, config.subset_seed)
    return [(rows[i]["file"], int(rows[i]["label_index"]), np.load(root / rows[i]["file"]))
            for i in chosen]  # fmt: skip


def _model_meta(client: GatewayClient, name: str | None) -> dict[str, Any]:
    models = client.models()
    for m in models:
        if (name is None and m.get("default")) or m["name"] == name:
            return m
    raise ValueError(f"model {name!r} is not served at {client.url}")


def _settings(config: RedteamConfig, research: bool) -> list[tuple[str, str, dict[str, str]]]:
    """(setting, attack, extra query params) to run."""
    attack = config.attack if config.attack != "auto" else ("square" if research else "rays")
    if attack == "square" and not research:
        raise ValueError("--attack square needs scores: this gateway is in production mode")
    runs: list[tuple[str, str, dict[str, str]]] = [("defended", attack, {})]
    if research and not config.no_undefended:
        runs.append(("undefended", attack, {"defense": "false"}))
    return runs


def _attack_for(config: RedteamConfig, name: str, seed: int) -> SquareAttack | RaySAttack:
    if name == "square":
        return SquareAttack(
            eps=config.eps, confirm=config.confirm, seed=seed, p_init=config.p_init,
            frames=config.frames,  # type: ignore[arg-type]
        )  # fmt: skip
    return RaySAttack(eps=config.eps, confirm=config.confirm, seed=seed)


def _attack_setting(
    config: RedteamConfig, client: GatewayClient, setting: tuple[str, str, dict[str, str]],
    meta: dict[str, Any], clips: list[tuple[str, int, np.ndarray]],
) -> list[dict[str, Any]]:  # fmt: skip
    from service.research.experiments.common import derive_seed, progress_bar

    name, attack_name, extra = setting
    params = {**({"model": config.model} if config.model else {}), **extra}
    oracle = make_oracle(client, params, list(meta["labels"]))
    adv_dir = Path(config.out) / "adv" / name
    adv_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    bar = progress_bar(clips, desc=f"redteam {name} ({attack_name})", unit="clip",
                       enabled=not config.no_progress)  # fmt: skip
    for i, (file, label, clip) in enumerate(bar):
        before = client.throttled
        t0 = time.perf_counter()
        attack = _attack_for(config, attack_name, derive_seed(config.seed, i))
        res = attack(oracle, clip, label, config.queries)
        linf, l2 = perturbation_norms(clip, res.adversarial)
        np.save(adv_dir / file, res.adversarial)
        rows.append({
            "setting": name, "attack": attack_name, "file": file, "label_index": label,
            "clean_label_index": res.clean_label, "skipped": res.skipped,
            "success": res.success, "queries": res.queries, "linf": linf, "l2": round(l2, 3),
            "confirm_labels": " ".join(map(str, res.confirm_labels)),
            "failed_confirmations": res.failed_confirmations,
            "throttled": client.throttled - before,
            "seconds": round(time.perf_counter() - t0, 2),
        })  # fmt: skip
        bar.set_postfix(success=sum(r["success"] for r in rows), queries=res.queries)
    return rows


def summarize(rows: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    """Success rate (Wilson 95%) over the clips the service got right, queries, norms."""
    from service.core.stats import percentile, wilson

    attacked = [r for r in rows if not r["skipped"]]
    wins = [r for r in attacked if r["success"]]
    low, high = wilson(len(wins), len(attacked))
    queries = [r["queries"] for r in attacked]
    return {
        "clips": len(rows), "attacked": len(attacked), "skipped_clean_wrong": len(rows) -
        len(attacked), "successes": len(wins),
        "success_rate": len(wins) / len(attacked) if attacked else float("nan"),
        "success_ci95": [low, high],
        "queries_mean": float(np.mean(queries)) if queries else float("nan"),
        "queries_median": percentile(queries, 50),
        "queries_median_successes": percentile([r["queries"] for r in wins], 50),
        "queries_max": max(queries, default=0), "budget": budget,
        "linf_max": max((r["linf"] for r in attacked), default=0),
        "l2_mean_successes": float(np.mean([r["l2"] for r in wins])) if wins else None,
        "throttled": sum(r["throttled"] for r in rows),
    }  # fmt: skip


def run(config: RedteamConfig) -> int:
    from service.research.experiments.report import write_report

    t0 = time.perf_counter()
    client = GatewayClient(config.url, timeout=config.timeout, max_retries=config.max_retries)
    try:
        meta = _model_meta(client, config.model)
        clips = _load_clips(config)
        shape = (meta["clip_len"], meta["crop_size"], meta["crop_size"], 3)
        bad = [f for f, _, c in clips if c.shape != shape or c.dtype != np.uint8]
        if bad:
            raise ValueError(f"clips must be uint8 {list(shape)} for {meta['name']}: {bad[:3]}")
        probe = client.classify(clips[0][2], {"model": meta["name"]})
        research = "votes" in probe
        results: dict[str, Any] = {
            "command": config.command(), "url": config.url, "model": meta["name"],
            "mode": "research" if research else "production", "preset": meta.get("preset"),
            "eps": config.eps, "budget": config.queries, "confirm": config.confirm,
            "settings": {}, "rows": [],
        }  # fmt: skip
        for setting in _settings(config, research):
            rows = _attack_setting(config, client, setting, meta, clips)
            results["rows"] += rows
            summary = summarize(rows, config.queries)
            results["settings"][setting[0]] = {"attack": setting[1], **summary}
        results["http"] = {"requests": client.requests, "answered": client.answered,
                           "throttled": client.throttled, "slept_s": round(client.slept_s, 2),
                           "probe_queries": 1}  # fmt: skip
    finally:
        client.close()
    results["seconds"] = round(time.perf_counter() - t0, 1)
    header = list(results["rows"][0])
    paths = write_report(
        config.out, "redteam", results=results, header=header,
        rows=[[r[k] for k in header] for r in results["rows"]],
        markdown=markdown(results), plot=lambda p: _plot(results, p),
    )  # fmt: skip
    for name, s in results["settings"].items():
        print(_summary_line(name, s))
    print(f"wrote {', '.join(map(str, paths))} and {Path(config.out) / 'adv'}/")
    return 0


def _summary_line(name: str, s: dict[str, Any]) -> str:
    lo, hi = s["success_ci95"]
    return (
        f"{name} ({s['attack']}): {s['successes']}/{s['attacked']} fooled "
        f"({100 * s['success_rate']:.0f}%, 95% CI {100 * lo:.0f}-{100 * hi:.0f}%), "
        f"queries mean {s['queries_mean']:.0f} median {s['queries_median']}, "
        f"L-inf max {s['linf_max']}/255"
    )


def markdown(results: dict[str, Any]) -> str:
    from service.research.experiments.report import markdown_table, pct, produced_by

    rows = []
    for name, s in results["settings"].items():
        lo, hi = s["success_ci95"]
        l2 = "-" if s["l2_mean_successes"] is None else f"{s['l2_mean_successes']:.0f}"
        rows.append([
            name, s["attack"], f"{s['successes']}/{s['attacked']}",
            f"{pct(s['success_rate'], 0)} [{pct(lo, 0)}, {pct(hi, 0)}]",
            f"{s['queries_mean']:.0f}", str(s["queries_median"]),
            str(s["queries_median_successes"]),
            f"{s['linf_max']}", l2, str(s["skipped_clean_wrong"]), str(s["throttled"]),
        ])  # fmt: skip
    header = ["setting", "attack", "fooled", "success % [Wilson 95%]", "queries mean",
              "median", "median (fooled)", "L-inf max (/255)", "L2 mean (fooled, levels)",
              "clean wrong", "429/503"]  # fmt: skip
    lines = [
        f"# Black-box attack on `{results['model']}` ({results['mode']} mode)", "",
        *produced_by(results["command"]),
        f"eps {results['eps']}/255, budget {results['budget']} answered queries per clip "
        f"(clean check and {results['confirm']} confirming re-queries included), "
        f"preset {results['preset']}.", "",
        markdown_table(header, rows), "",
    ]  # fmt: skip
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    from service.research.experiments.report import save_figure, setup_figure, style_axes

    fig, ax = setup_figure()
    budget = results["budget"]
    for name in results["settings"]:
        rows = [r for r in results["rows"] if r["setting"] == name and not r["skipped"]]
        qs = sorted(r["queries"] for r in rows if r["success"])
        xs = [0, *qs, budget]
        ys = [0.0, *[100 * (i + 1) / max(len(rows), 1) for i in range(len(qs))]]
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", label=name)
    style_axes(ax, f"black-box success vs queries (eps {results['eps']}/255)", "queries",
               "clips fooled (%)")  # fmt: skip
    save_figure(fig, path)
