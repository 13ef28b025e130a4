"""Freezeframe: consistent, resumable snapshots into an OpenStack-compatible image service."""

__version__ = "0.1.0"
