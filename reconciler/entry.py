"""The `reconciler` command itself: the cyclic garbage collector is off while it starts.

Importing click, anyio and asyncio creates many objects and no
garbage worth collecting, yet the collector walks them again and again (a
twentieth of a `--once`). One-shot commands (`--once`, `status`, `plan`,
`validate`) run briefly and leave it off; a daemon turns it back on once its
first pass's starts are done (`daemon.collect_garbage_from_now_on`). Imported
before anything heavy, which is why the command enters here rather than in `cli`.
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()
    from .cli import main as cli_main

    cli_main()
