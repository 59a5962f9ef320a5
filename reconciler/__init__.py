"""reconciler: a level-triggered reconciliation controller for OS processes."""

__version__ = "0.1.0"
