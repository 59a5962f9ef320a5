"""The systems under test, in report order: the lower bound, the reconciler, then the peers."""

from .base import System, Tools
from .raw import Raw
from .reconciler import Reconciler
from .supervisord import Supervisord
from .systemd import Systemd

ALL: dict[str, type[System]] = {cls.name: cls for cls in (Raw, Reconciler, Systemd, Supervisord)}

__all__ = ["ALL", "System", "Tools"]
