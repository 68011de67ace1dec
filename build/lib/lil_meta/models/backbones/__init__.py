"""Backbones, registered in ``engine.registry.BACKBONES`` by the explicit imports below."""

from lil_meta.models.backbones.conv4 import Conv4
from lil_meta.models.backbones.resnet12 import ResNet12

__all__ = ["Conv4", "ResNet12"]
