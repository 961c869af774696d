"""Deferred Ctrl-C: a signal during a training step, an evaluation or a checkpoint write only sets a flag.

The training loop looks at the flag between steps, where the state is consistent, writes a checkpoint
there and stops; a resumed run then equals an uninterrupted one bit for bit. A second signal stops at
once, without writing (the last checkpoint on disk stays as it was).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_stopped_at_once = threading.Event()  # a second signal raised KeyboardInterrupt (wherever it landed)


def forget_stops() -> None:
    """A new command starts: no second signal has stopped it yet (``main`` may run several times in one
    process, as the tests run it)."""
    _stopped_at_once.clear()


def stopped_at_once() -> bool:
    """Whether a second signal stopped the process at once. Its ``KeyboardInterrupt`` may have surfaced
    as another error (inside ``torch.save`` a half-written checkpoint becomes a write error): the stop is
    still the user's, and no file it interrupted is left behind (the writes are atomic)."""
    return _stopped_at_once.is_set()


class DeferredInterrupt:
    """Context manager: while active (in the main thread), SIGINT and SIGTERM set ``received``."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop at its next consistent point (what the signal handler does; tests call it)."""
        self.received = signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            _stopped_at_once.set()
            raise KeyboardInterrupt
        self.request(signum)
        message = (
            f"\nflatsam: {signal.Signals(signum).name} received: stopping after the current step with a "
            "checkpoint (again to stop at once, without one)\n"
        )
        # a raw write: the handler may run inside a buffered write to stderr (the progress bar)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(sys.stderr.fileno(), message.encode())

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()
