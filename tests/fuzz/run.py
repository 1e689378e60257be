"""Run one fuzz target under atheris (libFuzzer).

    python -m tests.fuzz.run TARGET [libFuzzer flags...]

e.g. ``python -m tests.fuzz.run npy -max_total_time=60``. The corpus starts from
the generated seeds (:mod:`tests.fuzz.seeds`, written to a temporary directory
that also collects the new inputs of this run) plus the committed
``tests/fuzz/corpus/TARGET/``. A crash is written under ``-artifact_prefix``
(default: ``artifacts/`` in that temporary directory) and makes the exit
status non-zero. Defaults: ``-seed=1 -timeout=30 -rss_limit_mb=2048``.
``SG_FUZZ_WORKDIR`` replaces the temporary directory (the tests use their own).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

DEFAULTS = {"-seed": "1", "-timeout": "30", "-rss_limit_mb": "2048", "-print_final_stats": "1"}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(f"usage: {argv[0]} TARGET [libFuzzer flags]")
    name, flags = argv[1], argv[2:]
    # Instrument the project's parsers, the pure-Python multipart parser and numpy's
    # .npy header parser (service.decoder.npy calls it on untrusted bytes); the C
    # parsers -- numpy's, FFmpeg, CPython's -- are exercised, not instrumented.
    with atheris.instrument_imports(
        include=["service", "python_multipart", "numpy.lib._format_impl"]
    ):
        from tests.fuzz import targets
    from tests.fuzz.seeds import SEEDS

    if name not in targets.TARGETS:
        raise SystemExit(f"unknown target {name!r}; one of {', '.join(targets.TARGETS)}")
    given = {flag.split("=", 1)[0] for flag in flags}
    flags += [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given]
    given_work = os.environ.get("SG_FUZZ_WORKDIR")
    work = Path(given_work) if given_work else Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    if "-artifact_prefix" not in given:
        (work / "artifacts").mkdir()
        flags.append(f"-artifact_prefix={work / 'artifacts'}/")
    (work / "corpus").mkdir()
    for seed_name, data in SEEDS[name]().items():
        (work / "corpus" / seed_name).write_bytes(data)
    dirs = [str(work / "corpus")]
    committed = targets.CORPUS / name
    if committed.is_dir():
        dirs.append(str(committed))
    atheris.Setup([argv[0], *flags, *dirs], targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
