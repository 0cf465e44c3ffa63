"""Worker processes for the playground: each request runs in one, under a time and memory limit,
and a worker that overruns its time is killed and replaced, so a runaway request blocks nothing else."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any


class Busy(Exception):
    """Every worker stayed busy for as long as a request may wait for one."""


class TimeLimit(Exception):
    """The request ran past its time limit; its worker was killed."""


class WorkerDied(Exception):
    """The worker ended before it answered (killed from outside, or out of memory)."""


def _address_space() -> int | None:
    """The process's current virtual memory size in bytes (Linux), to set a limit above it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _work(conn: Connection, memory: int) -> None:
    """A worker's life: cap its memory, then answer (kind, body) messages until the pipe closes.

    `memory` bounds both indexgrad's own guard (the arrays a plan, or check's random inputs, hold at
    once) and, four times over, how far the process's address space may grow (RLIMIT_AS) beyond what
    the loaded libraries already take, so what the guard does not foresee ends in a MemoryError."""
    from . import api
    from .memory import set_memory_limit

    set_memory_limit(memory)
    try:
        import resource

        now = _address_space()
        if now is not None:
            cap = now + 4 * memory
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, ValueError, OSError):  # not Linux, or a lower hard limit already: keep it
        pass
    while True:
        try:
            kind, body = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(api.handle(kind, body))


class _Worker:
    def __init__(self, ctx: Any, memory: int) -> None:
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(target=_work, args=(child, memory), daemon=True)
        self.process.start()
        child.close()

    def stop(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class Pool:
    """`size` worker processes; run() sends one request to an idle one and awaits its answer.

    Workers are forked from a fork server that has imported indexgrad once (so a replacement
    starts in milliseconds) and that never ran the server's threads or event loop."""

    def __init__(
        self, size: int = 2, timeout: float = 10.0, memory: int = 256 << 20, wait: float | None = None
    ) -> None:
        self.size, self.timeout, self.memory = size, timeout, memory
        self.wait = timeout if wait is None else wait  # how long a request may queue for a worker
        self._ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        if os.name == "posix":
            self._ctx.set_forkserver_preload(["indexgrad.api"])
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._replacing: set[asyncio.Task[None]] = set()  # held so they are not collected mid-run

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(asyncio.to_thread(self._spawn) for _ in range(self.size)))
        for w in workers:
            self._idle.put_nowait(w)

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self.memory)
        self._all.add(w)
        return w

    def _retire(self, w: _Worker) -> None:
        """Kill w (it may be mid-job) and start a replacement, without making the request wait."""
        asyncio.get_running_loop().remove_reader(w.conn.fileno())
        task = asyncio.ensure_future(self._replace(w))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, w: _Worker) -> None:
        self._all.discard(w)
        await asyncio.to_thread(w.stop)
        assert self._idle is not None
        self._idle.put_nowait(await asyncio.to_thread(self._spawn))

    async def run(self, kind: str, body: Any) -> tuple[int, dict[str, Any]]:
        """api.handle(kind, body) in a worker; Busy, TimeLimit or WorkerDied when it cannot answer."""
        assert self._idle is not None, "Pool.start() first"
        try:
            w = await asyncio.wait_for(self._idle.get(), self.wait)
        except asyncio.TimeoutError:
            raise Busy() from None
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(w.conn.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            w.conn.send((kind, body))
            await asyncio.wait_for(ready, self.timeout)
            answer = w.conn.recv()
        except asyncio.TimeoutError:
            self._retire(w)
            raise TimeLimit() from None
        except (EOFError, OSError):
            self._retire(w)
            raise WorkerDied() from None
        except BaseException:  # the request was cancelled (its client left) while its worker works
            self._retire(w)
            raise
        loop.remove_reader(w.conn.fileno())
        self._idle.put_nowait(w)
        return answer

    async def close(self) -> None:
        workers, self._all = list(self._all), set()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
