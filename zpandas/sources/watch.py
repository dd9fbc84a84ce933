"""Wake a follower when a watched folder changes in a way that can mean new data.

inotify (through watchdog) also reports every open and every close without a write -
the follower's own reads among them. Waking on those makes a follower that reads on
every wake-up its own busy loop (a whole core for an idle file), so only events that
can mean new data or new files wake it: created, modified, moved, deleted, and closed
after writing. Attribute changes (``touch``, ``chmod``) and reads do not.
"""

from __future__ import annotations

import os
import threading

__all__ = ["watch", "WAKE_EVENTS"]

#: watchdog event types that can mean new data, a new file or a rotation.
WAKE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


def watch(patterns: list[str], wake: threading.Event):
    """Set ``wake`` on changes in the folders of ``patterns``; return the started observer.

    Returns None when watchdog is missing or the folders cannot be watched (e.g. out
    of inotify watches): the caller then polls.
    """
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:
            if event.event_type in WAKE_EVENTS:
                wake.set()

    folders = set()
    for p in patterns:
        base = p.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]
        folder = base if os.path.isdir(base) else os.path.dirname(base) or "."
        if os.path.isdir(folder):
            folders.add((os.path.abspath(folder), "**" in p))
    observer = Observer()
    observer.daemon = True
    try:
        for folder, recursive in sorted(folders):
            observer.schedule(Handler(), folder, recursive=recursive)
        observer.start()
    except OSError:
        return None
    return observer
