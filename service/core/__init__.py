"""The defense core: torch and numpy only, no server, usable from a notebook.

* :mod:`service.core.shuffle` -- Algorithm 1, written once (numpy): the frame indices of
  the temporal shuffles, the gateway's per-request indices, :func:`count_shuffles`.
* :mod:`service.core.vote` -- the one decision rule (numpy): the ensemble vote, its
  tie-break, the ``suspected_adversarial`` flag, early stopping. The gateway and the
  research harness both decide with it.
* :mod:`service.core.presets` -- :class:`ShufflePreset` and the paper's presets.
* :mod:`service.core.ensemble` -- the torch side for the harness: ``shuffle_indices``,
  the one-gather ``apply_shuffles``, ``majority_vote``, ``ShuffleEnsemble``.
* :mod:`service.core.transforms` -- the analysis transforms (uniformize, chunk and row
  shuffles, monotonic ratio).
* :mod:`service.core.stats` -- the project's statistics (scipy).

This package imports nothing itself, so the gateway (numpy only) loads no torch.
"""
