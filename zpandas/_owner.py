"""The one lifecycle of a socket owner thread, shared by the Producer and the Subscriber.

A socket is created, used and closed on one thread. That thread sets its sockets up,
says so (or hands the setup error back to the thread that started it, which re-raises
it), runs its loop - an untimed poll that other threads wake through a queue plus one
wake-up - and tears down what setup made, whatever ended the loop. What ended it is
kept for the owner's user to re-raise on their next call.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class OwnerThread:
    """A named daemon thread running ``setup``, then ``loop(state)``, then ``teardown(state)``.

    Parameters
    ----------
    name : str
        The thread's name (``zpandas-producer-3``).
    setup : callable () -> state
        Creates the sockets. If it raises, it must release what it made; the error is
        re-raised by :meth:`start`.
    loop : callable (state) -> None
        Runs until the owner is told to stop.
    teardown : callable (state) -> None
        Closes what ``setup`` made; runs however ``loop`` ended.
    failed : callable (exception) -> None
        Told what ``loop`` raised (to keep it and wake waiting callers).

    Daemon status is a safety net for a user who never closes, not the way to stop.
    """

    def __init__(self, name: str, setup: Callable[[], Any], loop: Callable[[Any], None],
                 teardown: Callable[[Any], None], failed: Callable[[BaseException], None]) -> None:
        self._setup, self._loop, self._teardown, self._failed = setup, loop, teardown, failed
        self._started = threading.Event()
        self._setup_error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def name(self) -> str:
        return self.thread.name

    def start(self) -> None:
        """Start the thread, wait until its sockets are set up, and re-raise a setup
        error (bad address, port in use) here, with the thread ended."""
        self.thread.start()
        self._started.wait()
        if self._setup_error is not None:
            self.thread.join()
            error, self._setup_error = self._setup_error, None
            raise error

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; whether it did."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _main(self) -> None:
        try:
            state = self._setup()
        except BaseException as e:  # noqa: BLE001 - handed to start() on the caller's thread
            self._setup_error = e
            self._started.set()
            return
        self._started.set()
        try:
            self._loop(state)
        except Exception as e:  # noqa: BLE001 - kept for the user's next call
            self._failed(e)
        finally:
            self._teardown(state)
