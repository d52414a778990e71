"""Where the files the toolkit ships beside its code are: the Alembic scripts (``migrations/``) and
the built-in datasets' post-load SQL (``sql/<dataset>/``).

In the repository they sit at the top, where a reader looks for them. A built wheel carries them as
package data under ``etl/_shipped/`` (``setup.py`` copies them there at build time), so an installed
toolkit has them without the checkout; an editable install reads them from the checkout itself.
"""

from __future__ import annotations

from pathlib import Path

from etl.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
#: In a built wheel (see setup.py).
INSTALLED = _PACKAGE / "_shipped"
#: In the checkout (an editable install, or running from the source tree).
CHECKOUT = _PACKAGE.parent


def shipped(name: str) -> Path:
    """The shipped folder ``name`` (``"migrations"``, ``"sql"``): the installed copy if there is one,
    else the checkout's."""
    for root in (INSTALLED, CHECKOUT):
        folder = root / name
        if folder.is_dir():
            return folder
    raise ConfigError(f"the toolkit's {name}/ folder is neither in the installed package ({INSTALLED}) "
                      f"nor in a checkout ({CHECKOUT})",
                      hint="reinstall the package (pip install etl-staging) or run from a full checkout")
