"""Progress events from the worker thread to asyncio listeners (SSE streams, ComfyUI websockets).

An event is a dict `{"type": ..., "job": id, "data": {...}}`, or a binary preview
`{"type": "preview", "job": id, "jpeg": bytes}`. The worker never waits on a slow listener: each
listener has a bounded queue, and a full queue drops the oldest progress event.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

Event = dict[str, Any]


class Listener:
    def __init__(self, loop: asyncio.AbstractEventLoop, accept: Callable[[Event], bool], maxsize: int = 256):
        self.loop = loop
        self.accept = accept
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)

    def _put(self, event: Event) -> None:  # runs on the listener's loop
        if self.queue.full():
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
        self.queue.put_nowait(event)


class EventBus:
    def __init__(self):
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def listen(self, accept: Callable[[Event], bool] = lambda e: True) -> Listener:
        listener = Listener(asyncio.get_running_loop(), accept)
        with self._lock:
            self._listeners.append(listener)
        return listener

    def close(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        """Thread-safe; called from the worker thread and from request handlers."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            if listener.accept(event):
                try:
                    listener.loop.call_soon_threadsafe(listener._put, event)
                except RuntimeError:  # the listener's loop is closed
                    self.close(listener)
