"""``SimServer``: run the simulator on a loopback port, in this event loop or a thread of its own.

Faults that change the listening socket (``crash`` and the way back) are applied synchronously
where possible, so that a test that sets ``crash`` sees "connection refused" on its very next
request, and one that sets ``ok`` again can connect at once (the new socket listens before
``set_faults`` returns; it is served as soon as the loop gets to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from aiohttp import web

from fleetgate.sim.app import SimState, make_app
from fleetgate.sim.config import FaultMode, Faults, SimConfig
from fleetgate.sim.engine import EngineStats, SimEngine
from fleetgate.sim.metrics import SimMetrics


class SimServer:
    """A vLLM-compatible server for tests: ``async with SimServer(cfg) as sim: sim.url``."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._state: SimState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def stats(self) -> EngineStats:
        """Running and waiting counts, the most sequences ever running at once, KV use."""
        if self._state is None:
            raise RuntimeError("the simulator is not running")
        return self._state.engine.stats()

    @property
    def faults(self) -> Faults:
        return self._state.faults if self._state else self.config.faults

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> SimServer:
        self._loop = asyncio.get_running_loop()
        metrics = SimMetrics(self.config.model)
        self._state = SimState(
            config=self.config, engine=SimEngine(self.config, metrics), metrics=metrics
        )
        self._state.on_faults = self._apply_faults
        app = make_app(self._state)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        if self.config.startup_s > 0:
            # loading the model: the port is closed (connection refused) until it is done
            self.port = self.port or _free_port(self.host)
            task = asyncio.ensure_future(self._listen_after(self.config.startup_s))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        elif self.config.faults.mode != "crash":
            await self._listen()
        else:
            # started crashed: reserve the port number only, so that "ok" can come back on it
            self.port = self.port or _free_port(self.host)
        return self

    async def _listen_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._runner is not None and self._server is None and self.faults.mode != "crash":
            await self._listen()

    @property
    def listening(self) -> bool:
        """The port accepts connections (start-up done, not crashed)."""
        return self._server is not None

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._state is not None:
            self._state.engine.fail_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[SimServer]:
        """Serve from a background thread with its own event loop (for sync clients)."""
        loop = _new_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name=f"sim-{self.config.model}", daemon=True)
        thread.start()
        started.wait()
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)

    # -- faults -------------------------------------------------------------------------------

    def set_faults(
        self,
        mode: FaultMode | None = None,
        *,
        error_rate: float | None = None,
        slow_factor: float | None = None,
    ) -> None:
        """Change the faults now; from any thread. Unset arguments keep their current value."""
        current = self.faults
        faults = Faults(
            mode=mode or current.mode,
            error_rate=current.error_rate if error_rate is None else error_rate,
            slow_factor=current.slow_factor if slow_factor is None else slow_factor,
        )
        loop = self._loop
        if loop is None or not loop.is_running():
            self.config = replace(self.config, faults=faults)
            return
        if _in_loop(loop):
            self._apply_faults(faults)
        else:
            done = threading.Event()

            def apply() -> None:
                try:
                    self._apply_faults(faults)
                finally:
                    done.set()

            loop.call_soon_threadsafe(apply)
            done.wait(timeout=10)

    def _apply_faults(self, faults: Faults) -> None:
        assert self._state is not None
        engine = self._state.engine
        before = engine.faults.mode
        engine.set_faults(faults)
        if faults.mode in ("crash", "dead") and before != faults.mode:
            engine.fail_all()
        if faults.mode == "crash" and self._server is not None:
            self._server.close()  # closes the listening socket right away
            self._server = None
            assert self._runner is not None
            for conn in self._runner.server.connections if self._runner.server else []:
                if conn.transport is not None:
                    conn.transport.abort()
        elif faults.mode != "crash" and self._server is None:
            sock = _bind(self.host, self.port)  # listening from here on: no refused connections
            task = asyncio.ensure_future(self._listen(sock))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _listen(self, sock: socket.socket | None = None) -> None:
        assert self._runner is not None and self._runner.server is not None
        sock = sock or _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._runner.server, sock=sock, backlog=1024)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


__all__ = ["SimServer"]
