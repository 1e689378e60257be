"""Typed command configs: one dataclass per command, everything else derived.

A config is a dataclass whose fields are declared with :func:`opt`: the default, the
help text, how the field shows in the "produced by" command line (``show``) and, for
the command line, nothing else -- :mod:`service.cli` builds each command's options
from the fields (``--rs-n`` from ``rs_n``; list fields take several values), the
defaults come from the dataclass, validation is the config's :meth:`check`, and
:meth:`ExperimentConfig.command` writes the command back.

``show`` rules for the produced-by command: ``"always"`` (every run shows it),
``"changed"`` (only when it differs from the default; None and False never show),
``"never"`` (settings that do not change a result: threads, batch sizes, progress).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "ExperimentConfig",
    "command_line",
    "device_opt",
    "opt",
    "out_opt",
    "progress_opt",
    "threads_opt",
]

#: torch CPU threads unless told (the development machine has 2 cores).
DEFAULT_THREADS = 2


def opt(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - the option's help, as click calls it
    *,
    show: str = "changed",
    choices: Collection[Any] | None = None,
    argument: bool = False,
    repeat: bool = False,
    panel: str | None = None,
    **metadata: Any,
) -> Any:
    """A config field: ``default`` (a list default is copied per instance), ``help``,
    ``show`` (see the module docstring) and, for names, the allowed ``choices`` (a
    registry dict stays live: rows registered later are accepted).

    For the command line: ``argument`` makes the field a positional argument instead of
    an ``--option``; a list field takes several values after one flag (``--seeds 0 1``)
    unless ``repeat``, then the flag is repeated (``--backend-url A --backend-url B``);
    ``panel`` groups the option in ``--help``. Other keyword ``metadata`` is kept in the
    field's metadata for the command's own use."""
    meta = {
        "help": help, "show": show, "choices": choices, "argument": argument,
        "repeat": repeat, "panel": panel, **metadata,
    }  # fmt: skip
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)  # type: ignore[misc]
    return field(default=default, metadata=meta)


def command_line(
    words: Sequence[str], options: dict[str, Any], repeat: Collection[str] = ()
) -> str:
    """``shuffleguard ...`` with ``--key value`` options (lists spread, or the flag
    repeated for the keys in ``repeat``; None and False skipped)."""
    parts = list(words)
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple) and key in repeat:
            parts += [token for item in value for token in (flag, str(item))]
        elif isinstance(value, list | tuple):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def device_opt(show: str = "always") -> Any:
    """``--device``: where torch runs."""
    return opt("cpu", "cpu (default) or cuda", show=show)


def threads_opt(show: str = "never") -> Any:
    """``--threads``: torch CPU threads."""
    return opt(DEFAULT_THREADS, "CPU threads for torch", show=show)


def progress_opt() -> Any:
    """``--no-progress``: no progress bars (never changes a result)."""
    return opt(False, "no progress bars", show="never")


def out_opt(default: str, help: str = "output directory") -> Any:  # noqa: A002
    """``--out``: where the report goes."""
    return opt(default, help, show="always")


@dataclass
class ExperimentConfig:
    """Base of every experiment's config: :meth:`check` on creation, :meth:`command`."""

    #: the command words, e.g. ``("shuffleguard", "analyze", "fig2")``
    COMMAND: ClassVar[tuple[str, ...]] = ("shuffleguard",)
    #: field order in the produced-by command (default: declaration order)
    ORDER: ClassVar[tuple[str, ...] | None] = None
    #: True: a value :meth:`check` refuses is a usage error on the command line (usage
    #: and message, exit status 2, as argparse and click report a bad option); False:
    #: the command exits with ``shuffleguard <command>: <message>`` (status 1)
    USAGE_ERRORS: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            values = value if isinstance(value, list | tuple) else [value]
            bad = [v for v in values if allowed and v is not None and v not in allowed]
            if bad and allowed:
                flag = "--" + f.name.replace("_", "-")
                raise ValueError(f"{flag}: unknown {bad}; choose from {list(allowed)}")
        self.check()

    def check(self) -> None:
        """Raise ValueError on nonsense (each config adds its rules)."""

    def command(self) -> str:
        """The command line that reproduces this run (see the module docstring)."""
        by_name = {f.name: f for f in dataclasses.fields(self)}
        names = list(self.ORDER or by_name)
        names += [n for n in by_name if n not in names]
        words = list(self.COMMAND)
        words += [str(getattr(self, n)) for n in names if by_name[n].metadata.get("argument")]
        opts: dict[str, Any] = {}
        for name in names:
            f, value = by_name[name], getattr(self, name)
            show = f.metadata.get("show", "changed")
            if f.metadata.get("argument") or show == "never":
                continue
            if show == "changed" and value == _default(f):
                continue
            opts[name] = value
        repeat = [n for n, f in by_name.items() if f.metadata.get("repeat")]
        return command_line(words, opts, repeat)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
