"""Backbones, registered in ``engine.registry.BACKBONES`` by the explicit imports below."""

from models.backbones.conv4 import Conv4

__all__ = ["Conv4"]
