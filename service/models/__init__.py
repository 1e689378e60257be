"""Video classifiers built from the project's own code (no downloaded weights)."""

from service.models.resnet3d import BasicBlock3d, Normalize, ResNet3d, resnet3d_18

__all__ = ["BasicBlock3d", "Normalize", "ResNet3d", "resnet3d_18"]
