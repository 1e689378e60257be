"""The ``shuffleguard`` command line (typer).

Experiment commands (``evaluate``, ``tune``, ``analyze NAME``) are derived from their
typed configs (:mod:`service.experiments.config`): one ``--option`` per config field,
its default, help and allowed values from the field, validation by the config; the
command runs ``<module>.run(config)``. List fields take several values after one flag
(``--seeds 0 1 2``), as they always have.

``toy-data`` and ``train`` are config commands too. The service commands (``serve``,
``classify``, ``archive``, ``bench``) keep their own option parsers (``service.commands.<name>``:
``add_arguments(parser)`` and ``run(args)``); typer hands them their arguments.
Modules are imported only for the command that runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click
import typer

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

#: service commands with their own parsers: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.commands.serve", "start TorchServe + the gateway in the foreground"),
    "classify": ("service.commands.classify", "send a clip to a running gateway"),
    "archive": ("service.commands.archive", "export a checkpoint and build its TorchServe .mar"),
    "bench": ("service.commands.bench", "benchmarks: shuffle kernel, serving overhead"),
}

#: config commands: name -> (module, config class, one-line help)
EXPERIMENTS: dict[str, tuple[str, str, str]] = {
    "toy-data": (
        "service.commands.toy_data", "ToyDataConfig", "write the paper's synthetic toy datasets"
    ),
    "train": (
        "service.commands.train", "TrainCommandConfig", "train a 3D ResNet-18 on a toy dataset"
    ),
    "evaluate": (
        "service.experiments.evaluate", "EvalConfig", "attacks x defenses table (paper Table 5)"
    ),
    "tune": (
        "service.experiments.tune", "TuneConfig",
        "h1 x h2 grid and ensemble sizes (Fig. 10, Table 4)",
    ),
    "redteam": (
        "service.experiments.redteam", "RedteamConfig",
        "query-based black-box attack on a live gateway (Square / RayS)",
    ),
}  # fmt: skip

#: ``analyze`` sub-commands: name -> (module, config class, one-line help)
ANALYSES: dict[str, tuple[str, str, str]] = {
    "fig5": ("service.experiments.fig5", "Fig5Config", "toy datasets under frame randomization"),
    "table1": ("service.experiments.table1", "Table1Config", "accuracy on uniformized clips"),
    "fig2": ("service.experiments.fig2", "Fig2Config", "frame-order vs row randomization"),
    "fig7": ("service.experiments.fig7", "Fig7Config", "accuracy vs monotonic ratio"),
    "fig8": ("service.experiments.fig8", "Fig8Config", "attacked accuracy vs chunk size"),
    "table2": ("service.experiments.table2", "Table2Config", "static / framewise vs I-FGSM"),
    "table3": ("service.experiments.table3", "Table3Config", "attacked and uniformized clips"),
    "detection": (
        "service.experiments.detection", "DetectionConfig",
        "ROC/AUC of the suspected_adversarial signals",
    ),
    "denoiser": (
        "service.experiments.denoiser", "DenoiserConfig",
        "train the DnCNN of the denoised-smoothing rows",
    ),
    "regime": (
        "service.experiments.regime", "RegimeConfig",
        "defended accuracy vs uniformized accuracy across models",
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- #
# Service commands (their own argparse parsers)
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    """The parser of the service commands (``serve``, ``classify``, ...)."""
    parser = argparse.ArgumentParser(prog="shuffleguard")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _service_command(name: str, module_name: str) -> Callable[..., int]:
    def command(ctx: typer.Context) -> int:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(
            prog=f"shuffleguard {name}",
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(ctx.args)) or 0)

    return command


# --------------------------------------------------------------------------- #
# Experiment commands (derived from the configs)
# --------------------------------------------------------------------------- #
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(f: dataclasses.Field[Any], annotation: Any) -> inspect.Parameter:
    """The typer option of one config field."""
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if f.default_factory is not dataclasses.MISSING:
        default: Any = f.default_factory()
    else:
        default = ... if required else f.default
    choices = f.metadata.get("choices")
    help_text = f.metadata.get("help", "")
    if choices:
        help_text += f" (choose from {', '.join(map(str, choices))})"
    option = typer.Option(default, _flag(f.name), help=help_text, show_default=not required)
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _config_command(
    words: str, module_name: str, class_name: str
) -> tuple[Callable[..., int], str | None]:
    """A typer callback whose options are the config's fields; it builds the config
    (validation errors exit with the message) and runs ``module.run(config)``."""
    module = importlib.import_module(module_name)
    config_cls = getattr(module, class_name)
    hints = typing.get_type_hints(config_cls)
    params = [_option(f, hints[f.name]) for f in dataclasses.fields(config_cls)]

    def command(**kwargs: Any) -> int:
        try:
            config = config_cls(**kwargs)
            return int(module.run(config) or 0)
        except ValueError as exc:
            raise SystemExit(f"shuffleguard {words}: {exc}") from None

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command, module.__doc__


def list_flags(entries: dict[str, tuple[str, str, str]], name: str) -> set[str]:
    """The flags of a config command that take several values."""
    module_name, class_name, _ = entries[name]
    config_cls = getattr(importlib.import_module(module_name), class_name)
    hints = typing.get_type_hints(config_cls)
    return {
        _flag(f.name)
        for f in dataclasses.fields(config_cls)
        if "list[" in str(hints[f.name]).lower()
    }


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
def build_app(command: str | None = None) -> typer.Typer:
    """The typer app; with ``command``, only that command's modules are imported."""
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

    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True}
    for name, (module_name, help_text) in COMMANDS.items():
        app.command(name, help=help_text, context_settings=passthrough, add_help_option=False)(
            _service_command(name, module_name)
        )
    for name, (module_name, class_name, help_text) in EXPERIMENTS.items():
        _add(app, name, name, module_name, class_name, help_text, lazy=command != name)
    analyze = typer.Typer(help="the paper's analyses (Tables 1-3, Fig. 2/5/7/8)")
    for name, (module_name, class_name, help_text) in ANALYSES.items():
        _add(analyze, name, f"analyze {name}", module_name, class_name, help_text,
             lazy=command != "analyze")  # fmt: skip
    app.add_typer(analyze, name="analyze", help="the paper's analyses (Tables 1-3, Fig. 2/5/7/8)")
    return app


def _add(
    app: typer.Typer, name: str, words: str, module_name: str, class_name: str, help_text: str,
    *, lazy: bool,
) -> None:  # fmt: skip
    if lazy:  # listed in --help without importing torch
        app.command(name, help=help_text, context_settings={"allow_extra_args": True})(lambda: 0)
        return
    callback, doc = _config_command(words, module_name, class_name)
    first = (doc or help_text).strip().split("\n\n")[0]
    app.command(name, help=" ".join(first.split()), short_help=help_text)(callback)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO)
    command = next((a for a in args if not a.startswith("-")), None)
    if command in EXPERIMENTS:
        args = spread_lists(args, list_flags(EXPERIMENTS, command))
    elif command == "analyze":
        sub = next((a for a in args[args.index("analyze") + 1 :] if not a.startswith("-")), "")
        if sub in ANALYSES:
            args = spread_lists(args, list_flags(ANALYSES, sub))
    try:
        group = typer.main.get_command(build_app(command))
        result = group.main(args=args, prog_name="shuffleguard", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        return 130
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in MODELS_EXTRA_MODULES:
            raise
        print(
            f"shuffleguard {command or ''}: this command needs the `models` extra"
            f" (pip install 'shuffleguard[models]'): {exc}",
            file=sys.stderr,
        )
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
