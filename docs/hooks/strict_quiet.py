"""mkdocs hook: `mkdocs build --strict -q` fails on warnings, as `--strict` alone does.

MkDocs 1.6's `-q` raises the `mkdocs` logger to ERROR, so warnings (a broken link or
anchor, a page left out of `nav`) are never logged and strict mode never counts them: the
build passes (mkdocs/mkdocs issue 4126, open; pull request 4153 would fix it). The README's
test command runs `mkdocs build --strict -q`, so under strict mode this hook lowers the
logger back to WARNING: `-q` then silences the INFO lines only, and a warning is printed
and fails the build. Remove it once MkDocs counts warnings under `-q`.
"""

from __future__ import annotations

import logging


def on_config(config):
    logger = logging.getLogger("mkdocs")
    if config.strict and logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    return config
