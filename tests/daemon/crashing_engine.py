"""`geopush run` whose core dies hard (``os._exit``, no exception, no cleanup: as a segfault in
native code would) on any batch holding an event of one user. For the crash-loop tests:

    python tests/daemon/crashing_engine.py USER <geopush run flags...>
"""

from __future__ import annotations

import os
import sys
from typing import Any

CRASH_EXIT = 70


def main() -> int:
    from engine.cli import main as geopush
    from engine.daemon import service

    crash_user = sys.argv[1]
    real = service.real_core_factory

    def factory(settings: Any, *args: Any, **kwargs: Any) -> Any:
        make = real(settings, *args, **kwargs)

        def build(store: Any) -> Any:
            core = make(store)
            process = core.process

            def crashing(events: Any) -> Any:
                if any(ev.user == crash_user for ev in events):
                    os._exit(CRASH_EXIT)
                return process(events)

            core.process = crashing
            return core

        return build

    service.real_core_factory = factory  # what `geopush run` builds its core with
    return geopush(["run", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
