"""Children on a PTY or on pipes: spawned without fork, watched and reaped on the event loop.

``spawn_pty()`` gives the child a new session whose controlling terminal is the PTY, as a
terminal emulator or sshd does: the child is a session leader, so Ctrl-C, Ctrl-Z and job
control reach the foreground process group, and the kernel's window size (``TIOCSWINSZ``)
sends SIGWINCH. ``spawn_pipes()`` gives it pipes for stdin, stdout and stderr, in a new session
too (so that one signal reaches everything it started).

Both use ``os.posix_spawn`` (``vfork`` + ``exec`` in glibc): no ``fork()`` of a process that
has threads, so no "use of fork() may lead to deadlocks" warning on Python 3.12+ and nothing
of the parent's Python state in the child. With ``setsid=True`` glibc calls ``setsid()``
before the file actions, so the child's first open of the PTY's slave makes it the
session's controlling terminal (Linux; ``tty`` prints the device).

Children are reaped on the loop: through a pidfd where the kernel has them (Linux 5.3+),
else by polling ``waitpid(WNOHANG)``. Nothing here uses a thread.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import shutil
import signal
import struct
import termios
from collections.abc import Callable, Mapping, Sequence

__all__ = ["Child", "PtyChild", "PipeChild", "spawn_pty", "spawn_pipes", "exit_description", "check_size",
           "MAX_COLUMNS", "MAX_ROWS"]

logger = logging.getLogger("tether")

MAX_COLUMNS = 1000
"""Widest window accepted by :meth:`PtyChild.resize`."""
MAX_ROWS = 1000
"""Tallest window accepted by :meth:`PtyChild.resize`."""

_POLL_INTERVAL = 0.1  # seconds between waitpid() polls where there is no pidfd
# Signals whose disposition the child gets back to the default: those Python ignores
# (SIGPIPE, SIGXFSZ) and those a parent started under nohup or a job-control shell may ignore.
_DEFAULT_SIGNALS = {
    signal.SIGPIPE, signal.SIGXFSZ, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT,
    signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH,
}
# Changes to the working directory before exec (os.posix_spawn has no chdir action before
# Python 3.13): a POSIX shell that cds and then replaces itself with the program.
_CHDIR_SCRIPT = 'cd -- "$0" || exit 127; unset OLDPWD; exec "$@"'


def exit_description(returncode: int) -> str:
    """``"exit status 3"`` or ``"killed by SIGTERM"`` for a returncode as ``Child`` has it."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


class Child:
    """A spawned child process, watched on the event loop.

    Attributes:
        pid: its process id; also its process group and session id (it is a session leader).
        argv: what was run.
        returncode: None while it runs; then its exit status, or minus the signal that
            killed it (as ``subprocess`` has it).
    """

    def __init__(self, pid: int, argv: Sequence[str], loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.argv = list(argv)
        self.returncode: int | None = None
        self.loop = loop
        self._exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = -1
        self._poll: asyncio.TimerHandle | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._poll = loop.call_later(_POLL_INTERVAL, self._check)
        else:
            loop.add_reader(self._pidfd, self._check)

    def _check(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: the status is lost
            pid, status = self.pid, 255 << 8
        if pid == 0:
            if self._pidfd < 0:
                self._poll = self.loop.call_later(_POLL_INTERVAL, self._check)
            return
        self._set_returncode(os.waitstatus_to_exitcode(status))

    def _set_returncode(self, returncode: int) -> None:
        self.returncode = returncode
        if self._pidfd >= 0:
            self.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        if not self._exited.done():
            self._exited.set_result(returncode)
        self._exit_hook()

    def _exit_hook(self) -> None:
        """Subclasses: the process was reaped."""

    async def wait(self) -> int:
        """Wait until the process exits; return its returncode."""
        return await asyncio.shield(self._exited)

    def add_exit_callback(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(returncode)`` on the loop once the process has exited."""
        self._exited.add_done_callback(lambda future: callback(future.result()))

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group, while the child has not been reaped
        (after that its process group id may belong to someone else)."""
        if self.returncode is None:
            try:
                os.killpg(self.pid, signum)
            except ProcessLookupError:
                pass

    def _hang_up(self) -> None:
        """The first step of :meth:`terminate`: SIGHUP to the process group."""
        self.signal_group(signal.SIGHUP)

    async def terminate(self, grace: float = 2.0) -> int:
        """End the process and reap it: SIGHUP (and SIGCONT, for a stopped job) to its process
        group; after ``grace`` seconds SIGTERM; after ``grace`` more, SIGKILL.

        Returns:
            its returncode.
        """
        for step in ("hangup", "term", "kill"):
            if self.returncode is not None:
                break
            if step == "hangup":
                self._hang_up()
            elif step == "term":
                logger.info("event=child-term pid=%d after=%.1fs", self.pid, grace)
                self.signal_group(signal.SIGTERM)
            else:
                logger.warning("event=child-kill pid=%d after=%.1fs", self.pid, 2 * grace)
                self.signal_group(signal.SIGKILL)
            self.signal_group(signal.SIGCONT)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), grace)
            except asyncio.TimeoutError:
                pass
        return await self.wait()

    def close(self) -> None:
        """Stop watching (the loop is closing); the process is not signalled."""
        if self._pidfd >= 0:
            try:
                self.loop.remove_reader(self._pidfd)
            except RuntimeError:  # the loop is already closed
                pass
            os.close(self._pidfd)
            self._pidfd = -1
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None


class PtyChild(Child):
    """A child on a PTY. ``fd`` is the master side, non-blocking; the caller reads and writes
    it (see :class:`~tether.process.stream.FdStream`) and closes it."""

    def __init__(self, pid: int, argv: Sequence[str], loop: asyncio.AbstractEventLoop,
                 fd: int, cols: int, rows: int) -> None:
        super().__init__(pid, argv, loop)
        self.fd = fd
        self.cols = cols
        self.rows = rows

    def resize(self, cols: int, rows: int) -> bool:
        """Set the terminal's window size; the kernel sends SIGWINCH to the foreground
        process group when it changes. Returns whether it changed.

        Raises:
            ValueError: a size outside 1..MAX_COLUMNS by 1..MAX_ROWS.
        """
        check_size(cols, rows)
        if (cols, rows) == (self.cols, self.rows):
            return False
        if self.fd >= 0:
            _set_window_size(self.fd, cols, rows)
        self.cols, self.rows = cols, rows
        return True

    def _hang_up(self) -> None:
        # Also the foreground job: with job control it is a process group of its own.
        if self.fd >= 0:
            try:
                foreground = os.tcgetpgrp(self.fd)
            except OSError:
                foreground = -1
            if foreground > 0 and foreground != self.pid and self.returncode is None:
                try:
                    os.killpg(foreground, signal.SIGHUP)
                    os.killpg(foreground, signal.SIGCONT)
                except OSError:
                    pass
        super()._hang_up()


class PipeChild(Child):
    """A child on pipes: ``stdin`` (write end), ``stdout`` and ``stderr`` (read ends), all
    non-blocking and owned by the caller."""

    def __init__(self, pid: int, argv: Sequence[str], loop: asyncio.AbstractEventLoop,
                 stdin: int, stdout: int, stderr: int) -> None:
        super().__init__(pid, argv, loop)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr


def check_size(cols: object, rows: object) -> None:
    """Raise ValueError unless ``cols`` and ``rows`` are ints in 1..MAX_COLUMNS/MAX_ROWS."""
    for name, value, limit in (("cols", cols, MAX_COLUMNS), ("rows", rows, MAX_ROWS)):
        if type(value) is not int or not 1 <= value <= limit:
            raise ValueError(f"{name} must be an integer from 1 to {limit}, not {value!r}")


def _set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def _resolve(argv: Sequence[str], env: Mapping[str, str]) -> str:
    if not argv:
        raise ValueError("no command to run")
    found = shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "command not found", argv[0])
    return found


def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: str | None,
           file_actions: list[tuple[int, ...] | tuple[int, int, str, int, int]]) -> int:
    path = _resolve(argv, env)
    args = list(argv)
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", cwd)
        args = ["sh", "-c", _CHDIR_SCRIPT, cwd, path, *args[1:]]
        path = _resolve(["sh"], {"PATH": os.defpath})
    # Descriptors that would survive exec: Python makes its own non-inheritable (PEP 446), but
    # a library may not have; the child gets none but 0, 1 and 2.
    closes = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds()]
    return os.posix_spawn(
        path, args, dict(env),
        file_actions=[*file_actions, *closes],
        setsid=True,
        setsigmask=(),
        setsigdef=_DEFAULT_SIGNALS,
    )


def _inheritable_fds() -> list[int]:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        try:
            names = os.listdir("/dev/fd")
        except OSError:
            return []
    found = []
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    found.append(fd)
            except OSError:  # the listing's own descriptor, already closed
                pass
    return found


def spawn_pty(
    argv: Sequence[str],
    *,
    cols: int = 80,
    rows: int = 24,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> PtyChild:
    """Run ``argv`` on a new PTY of ``cols`` by ``rows``, as the leader of a new session with
    the PTY as its controlling terminal.

    Args:
        argv: the program and its arguments; the program is looked up on ``env``'s PATH.
        cols, rows: the initial window size.
        env: the child's whole environment (default: this process's).
        cwd: its working directory (default: this process's).
        loop: the event loop that reaps it (default: the running loop).

    Raises:
        FileNotFoundError: the program is not found.
        NotADirectoryError: ``cwd`` is not a directory.
        ValueError: an empty ``argv``, or a size out of range.
        OSError: no PTY or process could be made.
    """
    check_size(cols, rows)
    loop = loop or asyncio.get_running_loop()
    environment = dict(os.environ if env is None else env)
    master, slave = os.openpty()  # both non-inheritable
    try:
        attributes = termios.tcgetattr(slave)
        attributes[0] |= getattr(termios, "IUTF8", 0)  # erase whole UTF-8 characters
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        _set_window_size(master, cols, rows)
        name = os.ttyname(slave)
        # The session leader's first open of the slave (no O_NOCTTY) makes it the
        # controlling terminal; 1 and 2 are copies of it.
        pid = _spawn(argv, environment, cwd, [
            (os.POSIX_SPAWN_OPEN, 0, name, os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, 0, 1),
            (os.POSIX_SPAWN_DUP2, 0, 2),
        ])
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)  # the child has its own; EIO on the master once it closes them all
    os.set_blocking(master, False)
    return PtyChild(pid, argv, loop, master, cols, rows)


def spawn_pipes(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> PipeChild:
    """Run ``argv`` with pipes for stdin, stdout and stderr, in a new session.

    Raises: as :func:`spawn_pty`.
    """
    loop = loop or asyncio.get_running_loop()
    environment = dict(os.environ if env is None else env)
    # (read, write), non-inheritable, and never 0, 1 or 2 (when this process runs without
    # them): a DUP2 to one of those would clobber another pipe's end before it is copied.
    pipes = [(_above_stdio(r), _above_stdio(w)) for r, w in (os.pipe() for _ in range(3))]
    child_ends = [pipes[0][0], pipes[1][1], pipes[2][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0]]
    try:
        pid = _spawn(argv, environment, cwd, [
            (os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(child_ends)
        ])
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in child_ends:
            os.close(fd)
    for fd in ours:
        os.set_blocking(fd, False)
    return PipeChild(pid, argv, loop, *ours)

