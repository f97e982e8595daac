"""The demo app; ``wshub.demo:app`` is what ``make run`` serves."""

from wshub.demo.app import app, hub

__all__ = ["app", "hub"]
