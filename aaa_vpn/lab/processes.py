"""The processes of a topology (:mod:`aaa_vpn.lab.topology`), for the demo and
the namespace lab: started by name, each in a session of its own with its
output in ``<name>.log``, waited for until ready, stopped by PID.

Rules:

* A process gets a session of its own (``start_new_session``): a terminal's
  Ctrl-C reaches the program that started it, which stops the processes in
  order and by PID -- never by name.
* Ready means: an AAA server (:data:`~aaa_vpn.lab.topology.SERVERS`) has
  logged ``worker listening``, with the address it is bound to
  (:func:`listening_port`: a server started on port 0 says there which port
  it got, and no one uses the server before); an agent's state file
  (``<name>.state.json``) says ``running``. A process that exits before it
  is ready is an error (:class:`~aaa_vpn.lab.topology.LabError`, with the
  end of its log).
* A process may inherit sockets bound for it (``pass_fds``): they are handed
  to it again when it is restarted, so its port is never free in between.
* :meth:`Processes.stop` sends SIGTERM to every process, the AAA servers last,
  gives them all one grace period, then SIGKILLs what remains; an exit status
  of ``None`` means it had to be killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aaa_vpn.lab.topology import SERVERS, LabError


@dataclass
class Process:
    """One running process and the file its output goes to (for tcpdump: its capture)."""

    process: subprocess.Popen[bytes]
    log: Path


def read_state(path: Path) -> dict[str, Any]:
    """An agent's state file; empty if it is not there (yet) or not complete."""
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document


#: The address in a server's ``worker listening`` line, text (``address=H:P``) or JSON (``"address": "H:P"``).
_LISTENING = re.compile(r'worker listening.*?\baddress"?[=:] ?"?(\d+\.\d+\.\d+\.\d+):(\d+)')


def listening_port(log: Path) -> int | None:
    """The port an AAA server's log says it listens on (``worker listening``),
    or None while it says nothing yet."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = _LISTENING.search(text)
    return int(found.group(2)) if found else None


def log_tail(path: Path, lines: int = 20, separator: str = "\n") -> str:
    """The last ``lines`` lines of a log, joined by ``separator``."""
    try:
        return separator.join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Processes:
    """A topology's processes by name, their logs and state files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.running: dict[str, Process] = {}
        self._commands: dict[str, tuple[list[str], tuple[int, ...]]] = {}

    def __getitem__(self, name: str) -> Process:
        return self.running[name]

    def __len__(self) -> int:
        return len(self.running)

    def state_file(self, name: str) -> Path:
        return self.directory / f"{name}.state.json"

    def state(self, name: str) -> dict[str, Any]:
        return read_state(self.state_file(name))

    def log(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def spawn(self, name: str, argv: Sequence[str], pass_fds: Sequence[int] = ()) -> Process:
        """Start ``argv`` as process ``name``, its output appended to its log;
        it inherits the file descriptors ``pass_fds`` (sockets bound for it)."""
        self._commands[name] = (list(argv), tuple(pass_fds))
        log = self.log(name)
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        entry = self.running[name] = Process(process, log)
        return entry

    def add(self, name: str, process: subprocess.Popen[bytes], log: Path) -> Process:
        """Take on a process started otherwise (with pipes, say), to be stopped with the others."""
        entry = self.running[name] = Process(process, log)
        return entry

    def pop(self, name: str) -> Process:
        """Hand process ``name`` over to the caller, who stops it."""
        return self.running.pop(name)

    def pids(self) -> dict[str, int]:
        return {name: entry.process.pid for name, entry in self.running.items()}

    def listening_port(self, name: str) -> int:
        """The port AAA server ``name`` listens on (it is ready: :meth:`wait_ready`)."""
        port = listening_port(self.log(name))
        if port is None:
            raise LabError(f"{name} did not say which port it listens on:\n{log_tail(self.log(name))}")
        return port

    def wait_ready(self, timeout: float) -> None:
        """Wait until every process is ready (module rules); LabError when one
        exits or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        waiting = set(self.running)
        while waiting:
            for name in sorted(waiting):
                entry = self.running[name]
                if entry.process.poll() is not None:
                    raise LabError(f"{name} exited with status {entry.process.returncode}:\n{log_tail(entry.log)}")
                if name in SERVERS:
                    ready = listening_port(entry.log) is not None
                else:
                    ready = bool(self.state(name).get("running"))
                if ready:
                    waiting.discard(name)
            if waiting and time.monotonic() > deadline:
                raise LabError(f"not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}")
            if waiting:
                time.sleep(0.05)

    def restart(self, name: str, timeout: float = 10.0) -> Process:
        """Stop process ``name`` (SIGTERM, by its PID) and start it again with the same command."""
        entry = self.running.pop(name)
        entry.process.send_signal(signal.SIGTERM)
        if entry.process.wait(timeout) != 0:
            raise LabError(f"{name} did not stop cleanly: {log_tail(entry.log)}")
        argv, pass_fds = self._commands[name]
        return self.spawn(name, argv, pass_fds)

    def stop(self, grace: float) -> dict[str, int | None]:
        """SIGTERM every process (the AAA servers last), wait up to ``grace``
        seconds for all of them, SIGKILL what remains; the exit statuses,
        ``None`` for a killed one. Forgets them all."""
        servers = [name for name in SERVERS if name in self.running]
        order = [name for name in self.running if name not in servers] + servers
        for name in order:
            entry = self.running[name]
            if entry.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry.process.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + grace
        for name in order:
            entry = self.running[name]
            try:
                codes[name] = entry.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry.process.pid, signal.SIGKILL)
                entry.process.wait()
                codes[name] = None
        self.running.clear()
        return codes


__all__ = ["Process", "Processes", "listening_port", "log_tail", "read_state"]
