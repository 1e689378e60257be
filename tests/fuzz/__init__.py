"""Coverage-guided fuzzing of every parser that sees client or wire bytes.

``targets.py`` holds the targets and the invariant each input must satisfy;
``run.py`` runs one under atheris (libFuzzer); ``test_fuzz.py`` runs each for a
few seconds in the normal test suite and replays the committed corpus
(``corpus/<target>/``: inputs that once found a bug, kept as regression tests).
"""
