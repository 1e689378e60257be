"""Video classifiers built from the project's own code (no downloaded weights) and the
registry of real video families.

* :mod:`service.models.resnet3d` -- the project's 3D ResNet-18 (``arch`` :data:`ARCH`).
* :mod:`service.models.families` -- the paper's families and DeepMind's I3D port.
* :mod:`service.models.checkpoints` -- reading checkpoints of either.

This package imports nothing itself (no torch), so option classes can name :data:`ARCH`.
"""

#: the ``arch`` of the project's 3D ResNet-18; any other ``arch`` is a family of
#: :mod:`service.models.families`
ARCH = "resnet3d_18"
