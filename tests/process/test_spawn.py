"""tether.process: children on a PTY or on pipes (spawn.py), the non-blocking descriptor on
the loop (stream.py) and the replay window of a stream's last bytes (replay.py).

Real children on real PTYs and pipes; every wait is bounded by a multiple of UNIT."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.process import (
    MAX_COLUMNS,
    MAX_ROWS,
    FdStream,
    PipeChild,
    PtyChild,
    check_size,
    exit_description,
    spawn_pipes,
    spawn_pty,
)
from tether.process.replay import ReplayBuffer

from ..asyncio.conftest import UNIT, run, running, until

BASH = ["bash", "--norc", "--noprofile", "-i"]
PS1 = "$ "


# -- helpers -------------------------------------------------------------------------------------



class Tty:
    """A PTY child's master side, read into ``output``; ``type()`` writes keystrokes."""

    def __init__(self, child: PtyChild) -> None:
        self.child = child
        self.output = bytearray()
        self.eofs = 0
        self.stream = FdStream(child.fd, child.loop, self.output.extend, self._eof)

    def _eof(self) -> None:
        self.eofs += 1

    def type(self, data: bytes) -> None:
        self.stream.write(data)

    async def expect(self, pattern: bytes, start: int = 0,
                     timeout: float = 50 * UNIT) -> re.Match[bytes]:
        """The first match of the regex ``pattern`` in the output after ``start``."""
        regex = re.compile(pattern)
        found: list[re.Match[bytes]] = []

        def matched() -> bool:
            match = regex.search(self.output, start)
            if match:
                found.append(match)
            return match is not None

        try:
            await until(matched, timeout, f"{pattern!r}")
        except AssertionError:
            raise AssertionError(f"{pattern!r} not in output: {bytes(self.output)[-2000:]!r}")
        return found[0]

    async def prompt(self) -> None:
        """Wait for the first prompt of an interactive shell."""
        await self.expect(re.escape(PS1.encode()))

    async def run(self, command: str, timeout: float = 50 * UNIT) -> bytes:
        """Type ``command`` at an interactive shell's prompt, with a marker after it; wait
        for the marker and the next prompt; return what the command printed (from the line
        after the echoed command to the marker)."""
        mark = len(self.output)
        n = os.urandom(3).hex()
        # The marker is computed by the shell, so the echo of the typed line never matches.
        self.type(f"{command}; echo \"<$((0x{n}))>\"\n".encode())
        end = await self.expect(rb"(?s)<" + str(int(n, 16)).encode() + rb">\r\n.*?"
                                + re.escape(PS1.encode()), mark, timeout)
        echoed = self.output.find(b"\n", mark) + 1
        return bytes(self.output[echoed:end.start()])

    async def close(self) -> int:
        code = await self.child.terminate(5 * UNIT)
        self.stream.close()
        return code


async def read_all(fd: int) -> bytes:
    """Everything from a non-blocking read end until EOF."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    done = loop.create_future()
    stream = FdStream(fd, loop, data.extend, lambda: done.set_result(None))
    try:
        await asyncio.wait_for(done, 50 * UNIT)
    finally:
        stream.close()
    return bytes(data)


def bash_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PS1": PS1, "TERM": "dumb", **extra}


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def zombie_children() -> list[int]:
    """Children of this process that exited and were not reaped."""
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == os.getpid() and state == "Z":
            zombies.append(int(entry))
    return zombies


def foreground_is(child: PtyChild, name: str) -> bool:
    """Whether the terminal's foreground process group is led by a process running
    ``name`` (exec'd already: its signal dispositions are the program's own)."""
    try:
        group = os.tcgetpgrp(child.fd)
        return group != child.pid and Path(f"/proc/{group}/comm").read_text().strip() == name
    except OSError:
        return False



# -- spawn_pty: the controlling terminal, sessions, job control ---------------------------------


class TestPtySession:
    def test_child_has_the_pty_as_controlling_terminal(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sh", "-c", "tty; ps -o tty= -p $$; " + sys.executable +
                               " -S -c 'import os; print(\"pgrp\", os.tcgetpgrp(0) == os.getpgrp())'"])
            tty = Tty(child)
            assert await child.wait() == 0
            await until(lambda: tty.eofs, what="EOF")
            lines = bytes(tty.output).decode().split("\r\n")
            assert re.fullmatch(r"/dev/pts/\d+", lines[0]), lines
            assert lines[1].strip() not in ("", "?") and lines[0].endswith(lines[1].strip()), lines
            assert lines[2] == "pgrp True", lines
            tty.stream.close()

        run(main())

    def test_child_is_a_session_and_group_leader(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sleep", "100"])
            tty = Tty(child)
            try:
                assert os.getsid(child.pid) == child.pid
                assert os.getpgid(child.pid) == child.pid
                assert os.getsid(child.pid) != os.getsid(0)
                assert os.tcgetpgrp(child.fd) == child.pid  # the foreground group
            finally:
                assert await tty.close() == -signal.SIGHUP

        run(main())

    def test_ctrl_c_interrupts_the_foreground_job(self) -> None:
        async def main() -> None:
            child = spawn_pty(BASH, env=bash_env())
            tty = Tty(child)
            try:
                await tty.prompt()
                tty.type(b"sleep 100\n")
                # Job control: the job is a process group of its own, in the foreground.
                await until(lambda: foreground_is(child, "sleep"), what="foreground job")
                mark = len(tty.output)
                tty.type(b"\x03")
                await until(lambda: os.tcgetpgrp(child.fd) == child.pid, what="shell back")
                await tty.expect(re.escape(PS1.encode()), mark)
                assert (await tty.run("echo status=$?")).strip() == b"status=130"
                assert b"no job control" not in tty.output
                assert b"cannot set terminal process group" not in tty.output
            finally:
                await tty.close()

        run(main())

    def test_ctrl_z_stops_the_job_and_jobs_lists_it(self) -> None:
        async def main() -> None:
            child = spawn_pty(BASH, env=bash_env())
            tty = Tty(child)
            try:
                await tty.prompt()
                tty.type(b"sleep 100\n")
                await until(lambda: foreground_is(child, "sleep"), what="foreground job")
                job = os.tcgetpgrp(child.fd)
                tty.type(b"\x1a")
                await until(lambda: os.tcgetpgrp(child.fd) == child.pid, what="shell back")
                assert re.search(rb"\[1\]\+\s+Stopped\s+sleep 100", await tty.run("jobs"))
                assert Path(f"/proc/{job}/stat").read_text().split(") ")[1][0] == "T"
                await tty.run("kill %1")
                await until(lambda: b"Terminated" in tty.output or not running(job),
                            what="job killed")
                await until(lambda: not running(job), what="job gone")
                out = await tty.run("jobs")
                assert b"Stopped" not in out
            finally:
                await tty.close()

        run(main())

    def test_terminate_hangs_up_the_foreground_job_too(self) -> None:
        """The job is a process group of its own: SIGHUP goes to it as well as to the
        shell's group, even when the shell ignores SIGHUP and so cannot pass it on."""
        job_script = ("import os, signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); "
                      "print('pid=%d' % os.getpid(), flush=True); time.sleep(100)")

        async def main() -> None:
            child = spawn_pty(BASH, env=bash_env())
            tty = Tty(child)
            await tty.prompt()
            await tty.run("trap '' HUP")
            tty.type(f'{sys.executable} -S -c "{job_script}"\n'.encode())
            job = int((await tty.expect(rb"pid=(\d+)")).group(1))
            await until(lambda: os.tcgetpgrp(child.fd) == job, what="job in the foreground")
            ending = asyncio.ensure_future(child.terminate(30 * UNIT))
            await until(lambda: not running(job), timeout=25 * UNIT, what="the job to end")
            assert child.returncode is None  # the shell is still there: the job got SIGHUP
            # (an interactive bash ignores SIGTERM too: SIGKILL ends it; sent now, not after
            # two graces)
            child.signal_group(signal.SIGKILL)
            assert await ending == -signal.SIGKILL
            tty.stream.close()

        run(main())


class TestPtyResize:
    def test_resize_changes_stty_size(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sh", "-i"], cols=100, rows=30, env=bash_env())
            tty = Tty(child)
            try:
                await tty.prompt()
                assert (child.cols, child.rows) == (100, 30)
                assert (await tty.run("stty size")).split() == [b"30", b"100"]
                assert child.resize(132, 43) is True
                assert (child.cols, child.rows) == (132, 43)
                assert (await tty.run("stty size")).split() == [b"43", b"132"]
                assert child.resize(132, 43) is False  # unchanged
                assert child.resize(MAX_COLUMNS, MAX_ROWS) is True
                assert (await tty.run("stty size")).split() == [
                    str(MAX_ROWS).encode(), str(MAX_COLUMNS).encode()]
            finally:
                await tty.close()

        run(main())

    def test_resize_sends_sigwinch(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sh", "-c", "trap 'echo winch; stty size' WINCH; echo ready; "
                               "while :; do sleep 0.05; done"])
            tty = Tty(child)
            try:
                await tty.expect(rb"ready")
                child.resize(90, 20)
                await tty.expect(rb"winch\r\n20 90")
            finally:
                await tty.close()

        run(main())

    @pytest.mark.parametrize("cols, rows", [
        (0, 24), (100000, 24), (80, 0), (80, 100000), (-1, 24), (MAX_COLUMNS + 1, 24),
        (80, MAX_ROWS + 1), ("80", 24), (80.0, 24), (True, 24), (80, None),
    ])
    def test_bad_sizes_raise_value_error(self, cols: object, rows: object) -> None:
        async def main() -> None:
            child = spawn_pty(["sleep", "100"])
            tty = Tty(child)
            try:
                with pytest.raises(ValueError):
                    child.resize(cols, rows)  # type: ignore[arg-type]
                assert (child.cols, child.rows) == (80, 24)
            finally:
                await tty.close()

        with pytest.raises(ValueError):
            check_size(cols, rows)
        run(main())

    @pytest.mark.parametrize("cols, rows", [(0, 24), (80, 100000), ("80", 24)])
    def test_spawn_refuses_bad_sizes_before_spawning(self, cols: object, rows: object) -> None:
        async def main() -> None:
            before = open_fds()
            with pytest.raises(ValueError):
                spawn_pty(["sleep", "100"], cols=cols, rows=rows)  # type: ignore[arg-type]
            assert open_fds() == before

        run(main())

    def test_check_size_accepts_the_limits(self) -> None:
        check_size(1, 1)
        check_size(MAX_COLUMNS, MAX_ROWS)


class TestEnvironment:
    def test_cwd(self, tmp_path: Path) -> None:
        async def main() -> None:
            child = spawn_pty(["pwd"], cwd=str(tmp_path))
            tty = Tty(child)
            assert await child.wait() == 0
            await until(lambda: tty.eofs, what="EOF")
            assert bytes(tty.output).strip() == str(tmp_path).encode()
            tty.stream.close()
            piped = spawn_pipes(["sh", "-c", "pwd; echo \"$OLDPWD\""], cwd=str(tmp_path))
            os.close(piped.stdin)
            os.close(piped.stderr)
            out = await read_all(piped.stdout)
            assert await piped.wait() == 0
            assert out == f"{tmp_path}\n\n".encode()

        run(main())

    def test_cwd_keeps_the_pid_and_the_arguments(self, tmp_path: Path) -> None:
        async def main() -> None:
            child = spawn_pipes(["sh", "-c", 'echo "$$ $# [$1] [$2]"', "zero", "a b", "-c"],
                                cwd=str(tmp_path))
            os.close(child.stdin)
            os.close(child.stderr)
            out = await read_all(child.stdout)
            assert await child.wait() == 0
            assert out == f"{child.pid} 2 [a b] [-c]\n".encode()

        run(main())

    def test_missing_cwd(self, tmp_path: Path) -> None:
        async def main() -> None:
            before = open_fds()
            with pytest.raises(NotADirectoryError):
                spawn_pty(["true"], cwd=str(tmp_path / "nowhere"))
            with pytest.raises(NotADirectoryError):
                spawn_pipes(["true"], cwd=str(tmp_path / "nowhere"))
            assert open_fds() == before

        run(main())

    def test_env_is_the_whole_environment(self) -> None:
        async def main() -> None:
            os.environ["TETHER_TEST_LEAK"] = "leaked"
            try:
                child = spawn_pipes(["sh", "-c", 'echo "$FOO|${TETHER_TEST_LEAK-unset}"'],
                                    env={"FOO": "bar baz", "PATH": os.environ["PATH"]})
            finally:
                del os.environ["TETHER_TEST_LEAK"]
            os.close(child.stdin)
            os.close(child.stderr)
            assert await read_all(child.stdout) == b"bar baz|unset\n"
            assert await child.wait() == 0

        run(main())

    def test_default_env_is_this_process_environment(self) -> None:
        async def main() -> None:
            os.environ["TETHER_TEST_VAR"] = "inherited"
            try:
                child = spawn_pty(["sh", "-c", 'echo "v=$TETHER_TEST_VAR"'])
            finally:
                del os.environ["TETHER_TEST_VAR"]
            tty = Tty(child)
            assert await child.wait() == 0
            await until(lambda: tty.eofs, what="EOF")
            assert bytes(tty.output) == b"v=inherited\r\n"
            tty.stream.close()

        run(main())

    def test_only_stdio_is_inherited(self) -> None:
        """Even descriptors marked inheritable in the parent stay out of the child."""
        script = ("import os\nfound = []\nfor fd in range(3, 1024):\n"
                  "    try:\n        os.fstat(fd)\n    except OSError:\n        pass\n"
                  "    else:\n        found.append(fd)\nprint(found)\n")

        async def main() -> None:
            r, w = os.pipe()
            high = os.dup2(r, 300)
            for fd in (r, w, high):
                os.set_inheritable(fd, True)
            try:
                child = spawn_pty([sys.executable, "-S", "-I", "-c", script])
                tty = Tty(child)
                assert await child.wait() == 0
                await until(lambda: tty.eofs, what="EOF")
                assert bytes(tty.output).strip() == b"[]"
                tty.stream.close()
                piped = spawn_pipes([sys.executable, "-S", "-I", "-c", script])
                os.close(piped.stdin)
                os.close(piped.stderr)
                assert await read_all(piped.stdout) == b"[]\n"
                assert await piped.wait() == 0
            finally:
                for fd in (r, w, high):
                    os.close(fd)

        run(main())

    def test_stdio_of_pipes_and_pty(self) -> None:
        """0, 1 and 2 of a PTY child are the same terminal; a pipe child's are three pipes."""
        script = "ls -l /proc/$$/fd/0 /proc/$$/fd/1 /proc/$$/fd/2 | sed 's/.*-> //'"

        async def main() -> None:
            child = spawn_pty(["sh", "-c", script])
            tty = Tty(child)
            assert await child.wait() == 0
            await until(lambda: tty.eofs, what="EOF")
            targets = bytes(tty.output).split()
            assert len(targets) == 3 and len(set(targets)) == 1
            assert targets[0].startswith(b"/dev/pts/")
            tty.stream.close()
            piped = spawn_pipes(["sh", "-c", script])
            os.close(piped.stdin)
            os.close(piped.stderr)
            targets = (await read_all(piped.stdout)).split()
            assert len(set(targets)) == 3 and all(t.startswith(b"pipe:") for t in targets)
            assert await piped.wait() == 0

        run(main())

    def test_missing_command(self) -> None:
        async def main() -> None:
            before = open_fds()
            with pytest.raises(FileNotFoundError):
                spawn_pty(["tether-no-such-command-x"])
            with pytest.raises(FileNotFoundError):
                spawn_pipes(["tether-no-such-command-x"])
            with pytest.raises(FileNotFoundError):  # looked up on the child's PATH
                spawn_pipes(["sh"], env={"PATH": "/nonexistent"})
            with pytest.raises(ValueError):
                spawn_pipes([])
            assert open_fds() == before
            assert zombie_children() == []

        run(main())

    def test_signal_dispositions_are_default(self) -> None:
        """Python ignores SIGPIPE; the child must not: `yes | head -1` ends yes by SIGPIPE."""
        assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # the premise

        async def main() -> None:
            child = spawn_pipes(["bash", "-c", 'yes | head -1; echo "status=${PIPESTATUS[0]}"; '
                                 "grep -E '^Sig(Ign|Blk)' /proc/self/status"])
            os.close(child.stdin)
            os.close(child.stderr)
            out = (await read_all(child.stdout)).decode()
            assert await child.wait() == 0
            lines = out.splitlines()
            assert lines[0] == "y"
            assert lines[1] == f"status={128 + signal.SIGPIPE}"  # killed by SIGPIPE
            masks = dict(line.split(":") for line in lines[2:])
            # The standard signals (1..31; glibc's posix_spawn leaves its own internal
            # real-time signals 32 and 33 ignored in the child, which no program uses).
            standard = (1 << 31) - 1
            assert int(masks["SigIgn"], 16) & standard == 0, masks
            assert int(masks["SigBlk"], 16) == 0, masks

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        try:
            run(main())
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


# -- Child: exit status, terminate, reaping ----------------------------------------------------


class TestChild:
    @pytest.mark.parametrize("code, text", [
        (0, "exit status 0"), (3, "exit status 3"), (255, "exit status 255"),
        (-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (-1, "killed by SIGHUP"),
        (-200, "killed by signal 200"),
    ])
    def test_exit_description(self, code: int, text: str) -> None:
        assert exit_description(code) == text

    def test_exit_status_and_signal(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sh", "-c", "exit 7"])
            tty = Tty(child)
            assert await child.wait() == 7
            assert child.returncode == 7
            assert await child.wait() == 7  # again
            tty.stream.close()
            killed = spawn_pty(["sh", "-c", "kill -USR2 $$"])
            tty = Tty(killed)
            assert await killed.wait() == -signal.SIGUSR2
            tty.stream.close()

        run(main())

    def test_exit_callback(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sh", "-c", "exit 4"])
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)
            codes: list[int] = []
            child.add_exit_callback(codes.append)
            assert await child.wait() == 4
            await until(lambda: codes, what="the callback")
            assert codes == [4]

        run(main())

    def test_wait_is_cancellable_without_losing_the_status(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sh", "-c", "read x; exit 6"])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(child.wait(), UNIT)
            os.write(child.stdin, b"\n")
            assert await asyncio.wait_for(child.wait(), 50 * UNIT) == 6
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)

        run(main())

    def test_terminate_escalates_hup_term_kill(self, caplog: pytest.LogCaptureFixture) -> None:
        grace = 2 * UNIT

        async def main() -> None:
            child = spawn_pipes(["sh", "-c", 'trap "" HUP TERM; echo ready; sleep 100'])
            os.close(child.stdin)
            os.close(child.stderr)
            ready = bytearray()
            stream = FdStream(child.stdout, child.loop, ready.extend)
            await until(lambda: b"ready" in ready, what="the trap")
            started = time.monotonic()
            code = await child.terminate(grace)
            elapsed = time.monotonic() - started
            stream.close()
            assert code == -signal.SIGKILL == child.returncode
            assert elapsed >= 2 * grace * 0.9  # one grace after SIGHUP, one after SIGTERM
            assert elapsed < 2 * grace + 50 * UNIT
            assert not running(child.pid)

        with caplog.at_level(logging.INFO, logger="tether"):
            run(main())
        messages = [record.getMessage() for record in caplog.records]
        assert any(m.startswith("event=child-term") for m in messages), messages
        assert any(m.startswith("event=child-kill") for m in messages), messages

    def test_terminate_stops_at_term(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sh", "-c", 'trap "" HUP; echo ready; sleep 100'])
            os.close(child.stdin)
            os.close(child.stderr)
            ready = bytearray()
            stream = FdStream(child.stdout, child.loop, ready.extend)
            await until(lambda: b"ready" in ready, what="the trap")
            assert await child.terminate(2 * UNIT) == -signal.SIGTERM
            stream.close()

        run(main())

    def test_terminate_continues_a_stopped_child(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sleep", "100"])
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)
            os.kill(child.pid, signal.SIGSTOP)
            await until(lambda: Path(f"/proc/{child.pid}/stat").read_text()
                        .split(") ")[1][0] == "T", what="stopped")
            started = time.monotonic()
            assert await child.terminate(20 * UNIT) == -signal.SIGHUP
            assert time.monotonic() - started < 20 * UNIT  # no escalation needed

        run(main())

    def test_terminate_after_exit_returns_the_status(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["true"])
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)
            assert await child.wait() == 0
            assert await child.terminate(UNIT) == 0
            child.signal_group(signal.SIGKILL)  # reaped: nothing is signalled, no error

        run(main())

    def test_no_zombies_and_no_leaked_descriptors(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0)
            before = open_fds()
            for i in range(200):
                if i % 2:
                    pty = spawn_pty(["sleep", "100"])
                    assert await pty.terminate(10 * UNIT) == -signal.SIGHUP
                    os.close(pty.fd)
                else:
                    pipes = spawn_pipes(["sleep", "100"])
                    stream = FdStream(pipes.stdout, loop, lambda data: None)
                    assert await pipes.terminate(10 * UNIT) == -signal.SIGHUP
                    stream.close()
                    os.close(pipes.stdin)
                    os.close(pipes.stderr)
            after = open_fds()
            assert after == before, sorted(after ^ before)
            assert zombie_children() == []

        run(main(), timeout=600 * UNIT)

    def test_child_close_stops_watching(self) -> None:
        async def main() -> None:
            before = open_fds()
            child = spawn_pipes(["sleep", "100"])
            child.close()
            child.close()  # twice is fine
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)
            os.killpg(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            assert open_fds() == before
            assert child.returncode is None  # nobody watched it

        run(main())

    def test_reaped_elsewhere(self) -> None:
        """A child someone else reaped still ends ``wait()`` (its status is lost: 255)."""

        async def main() -> None:
            child = spawn_pipes(["sh", "-c", "exit 3"])
            for fd in (child.stdin, child.stdout, child.stderr):
                os.close(fd)
            child.close()  # stop watching it
            os.waitpid(child.pid, 0)  # reaped by someone else
            from tether.process.spawn import Child

            late = Child(child.pid, child.argv, asyncio.get_running_loop())
            assert await asyncio.wait_for(late.wait(), 50 * UNIT) == 255
            assert late.returncode == 255

        run(main())


class TestPipes:
    def test_round_trip_and_exit_status(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sh", "-c", 'read l; echo "got $l"; echo "err $l" >&2; exit 5'])
            assert isinstance(child, PipeChild)
            assert os.getsid(child.pid) == child.pid
            loop = asyncio.get_running_loop()
            stdin = FdStream(child.stdin, loop)
            stdin.write(b"hello\n")
            stdin.close()
            out, err = await asyncio.gather(read_all(child.stdout), read_all(child.stderr))
            assert out == b"got hello\n"
            assert err == b"err hello\n"
            assert await child.wait() == 5

        run(main())

    def test_descriptors_are_non_blocking_and_not_inherited(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["cat"])
            pty = spawn_pty(["cat"])
            for fd in (child.stdin, child.stdout, child.stderr, pty.fd):
                assert fd > 2
                assert not os.get_blocking(fd)
                assert not os.get_inheritable(fd)
            os.close(child.stdin)  # EOF: cat exits
            assert await child.wait() == 0
            os.close(child.stdout)
            os.close(child.stderr)
            assert await pty.terminate(10 * UNIT) == -signal.SIGHUP
            os.close(pty.fd)

        run(main())

    def test_eof_on_stdin(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["wc", "-c"])
            stdin = FdStream(child.stdin, asyncio.get_running_loop())
            stdin.write(b"x" * 100_000)
            await stdin.drain()
            await until(lambda: stdin.buffered == 0, what="all written")
            stdin.close()
            assert (await read_all(child.stdout)).strip() == b"100000"
            os.close(child.stderr)
            assert await child.wait() == 0

        run(main())


# -- FdStream ---------------------------------------------------------------------------------


class TestFdStream:
    def test_write_buffers_and_drain_waits_while_the_child_does_not_read(self) -> None:
        async def main() -> None:
            child = spawn_pipes(["sleep", "5"])
            loop = asyncio.get_running_loop()
            stdin = FdStream(child.stdin, loop, write_limit=65536)
            stdin.write(b"x" * 2**20)
            assert 0 < stdin.buffered <= 2**20
            assert stdin.bytes_written + stdin.buffered == 2**20
            drain = asyncio.ensure_future(stdin.drain())
            done, _ = await asyncio.wait([drain], timeout=3 * UNIT)
            assert not done  # the child never reads
            stdin.close()  # unsent data is dropped; drain returns
            await asyncio.wait_for(drain, 10 * UNIT)
            assert stdin.buffered == 0 and stdin.closed
            stdin.write(b"more")  # after close: ignored
            assert stdin.buffered == 0
            await child.terminate(10 * UNIT)
            os.close(child.stdout)
            os.close(child.stderr)

        run(main())

    def test_drain_ends_when_the_reader_catches_up(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            payload = os.urandom(2**20)
            writer = FdStream(w, loop, write_limit=1000)
            writer.write(payload[:300_000])
            writer.write(payload[300_000:])  # queued behind the first
            assert writer.buffered > 1000
            drain = asyncio.ensure_future(writer.drain())
            done, _ = await asyncio.wait([drain], timeout=2 * UNIT)
            assert not done
            received = bytearray()
            reader = FdStream(r, loop, received.extend)
            await asyncio.wait_for(drain, 50 * UNIT)
            assert writer.buffered <= 1000
            await until(lambda: len(received) == len(payload), what="everything read")
            assert bytes(received) == payload
            assert writer.bytes_written == len(payload) == reader.bytes_read
            writer.close()
            reader.close()

        run(main())

    def test_drain_unless_stops_waiting_when_the_other_completes(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            writer = FdStream(w, loop, write_limit=1000)
            writer.write(b"x" * 300_000)
            client_left: asyncio.Future[None] = loop.create_future()
            waiting = asyncio.ensure_future(writer.drain_unless(client_left))
            done, _ = await asyncio.wait([waiting], timeout=2 * UNIT)
            assert not done  # nobody reads the pipe
            client_left.set_result(None)
            assert await asyncio.wait_for(waiting, 10 * UNIT) is False
            assert writer.buffered > 1000  # still waiting to be written
            # Drained first: True, and the other awaitable is let go.
            never: asyncio.Future[None] = loop.create_future()
            waiting = asyncio.ensure_future(writer.drain_unless(never))
            reader = FdStream(r, loop, lambda data: None)
            assert await asyncio.wait_for(waiting, 50 * UNIT) is True
            assert never.cancelled()
            writer.close()
            reader.close()

        run(main())

    def test_drain_returns_at_once_under_the_limit(self) -> None:
        async def main() -> None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            writer = FdStream(w, asyncio.get_running_loop())
            writer.write(b"abc")
            assert writer.buffered == 0 and writer.bytes_written == 3
            await asyncio.wait_for(writer.drain(), 10 * UNIT)
            writer.close()
            writer.close()  # twice is fine
            assert os.read(r, 10) == b"abc"
            os.close(r)

        run(main())

    def test_write_after_the_reader_left_is_dropped(self) -> None:
        async def main() -> None:
            r, w = os.pipe()
            os.set_blocking(w, False)
            writer = FdStream(w, asyncio.get_running_loop())
            writer.write(b"x" * 200_000)  # fills the pipe; the rest waits
            assert writer.buffered > 0
            drain = asyncio.ensure_future(writer.drain())
            os.close(r)
            await asyncio.wait_for(drain, 10 * UNIT)  # EPIPE: dropped, drain wakes
            assert writer.buffered == 0
            writer.write(b"more")  # dropped, no exception
            assert writer.buffered == 0
            writer.close()

        run(main())

    def test_eof_callback_once(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            os.set_blocking(r, False)
            chunks: list[bytes] = []
            eofs: list[None] = []
            reader = FdStream(r, loop, chunks.append, lambda: eofs.append(None))
            assert reader.reading
            os.write(w, b"one")
            await until(lambda: chunks, what="data")
            os.close(w)
            await until(lambda: eofs, what="EOF")
            await asyncio.sleep(2 * UNIT)
            reader.resume_reading()  # at EOF: stays off
            reader.read_now()
            assert eofs == [None] and chunks == [b"one"]
            assert reader.eof and not reader.reading
            reader.close()
            assert eofs == [None]

        run(main())

    def test_pty_eof_after_the_child_exits(self) -> None:
        async def main() -> None:
            child = spawn_pty(["sh", "-c", "echo bye"])
            tty = Tty(child)
            assert await child.wait() == 0
            await until(lambda: tty.eofs, what="EOF")  # EIO on the master
            await asyncio.sleep(UNIT)
            assert tty.eofs == 1 and bytes(tty.output) == b"bye\r\n"
            tty.stream.close()

        run(main())

    def test_pause_and_resume_reading(self) -> None:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            r, w = os.pipe()
            os.set_blocking(r, False)
            chunks: list[bytes] = []
            reader = FdStream(r, loop, chunks.append)
            reader.pause_reading()
            assert not reader.reading
            os.write(w, b"held")
            await asyncio.sleep(2 * UNIT)
            assert chunks == []
            reader.resume_reading()
            await until(lambda: chunks, what="data")
            assert chunks == [b"held"]
            reader.pause_reading()
            os.write(w, b"now")
            reader.read_now()  # while paused
            assert chunks == [b"held", b"now"] and not reader.reading
            reader.close()
            assert not reader.reading
            reader.resume_reading()  # closed: stays off
            assert not reader.reading
            os.close(w)

        run(main())


# -- ReplayBuffer -----------------------------------------------------------------------------


class TestReplayBuffer:
    def test_offsets_and_limit(self) -> None:
        replay = ReplayBuffer(10)
        assert (replay.start, replay.end, len(replay)) == (0, 0, 0)
        replay.append(b"abcd")
        replay.append(b"")  # nothing
        replay.append(b"efgh")
        replay.append(b"ijkl")
        # 12 bytes: without "abcd" only 8 would stay, fewer than the limit
        assert (replay.start, replay.end, len(replay)) == (0, 12, 12)
        replay.append(b"mnop")
        assert (replay.start, replay.end, len(replay)) == (4, 16, 12)
        assert replay.read(4, 100) == b"efghijklmnop"
        for _ in range(10):
            replay.append(b"0123456789")
        assert (replay.start, replay.end) == (106, 116)
        assert replay.read(106, 1000) == b"0123456789"

    def test_at_least_limit_at_most_one_chunk_more(self) -> None:
        replay = ReplayBuffer(100)
        replay.append(b"x" * 1000)  # one chunk bigger than the limit is kept whole
        assert (replay.start, replay.end) == (0, 1000)
        replay.append(b"y" * 99)  # dropping the big chunk would leave 99 < 100 bytes
        assert (replay.start, replay.end) == (0, 1099)
        replay.append(b"z")
        assert (replay.start, replay.end) == (1000, 1100)
        assert replay.read(1000, 1000) == b"y" * 99 + b"z"

    def test_read_across_chunks(self) -> None:
        replay = ReplayBuffer(1000)
        for chunk in (b"abc", b"de", b"f", b"ghij"):
            replay.append(chunk)
        data = b"abcdefghij"
        for since in range(11):
            for size in range(12):
                assert replay.read(since, size) == data[since:since + size], (since, size)
        assert replay.read(10, 5) == b""
        assert replay.read(3, 0) == b"" and replay.read(3, -1) == b""

    def test_read_outside_the_window(self) -> None:
        replay = ReplayBuffer(4)
        for chunk in (b"abcd", b"efgh", b"ijkl"):
            replay.append(chunk)
        assert replay.start == 8
        with pytest.raises(ValueError):
            replay.read(7, 1)
        with pytest.raises(ValueError):
            replay.read(13, 1)
        assert replay.read(8, 100) == b"ijkl"

    def test_resume_point(self) -> None:
        replay = ReplayBuffer(4)
        assert replay.resume_point(0) == (0, False)
        assert replay.resume_point(1) == (0, True)  # past the end: a stream it never saw
        for chunk in (b"abcd", b"efgh", b"ijkl"):
            replay.append(chunk)
        assert replay.resume_point(8) == (8, False)
        assert replay.resume_point(10) == (10, False)
        assert replay.resume_point(12) == (12, False)
        assert replay.resume_point(7) == (8, True)  # fell out of the window
        assert replay.resume_point(0) == (8, True)
        assert replay.resume_point(13) == (8, True)

    def test_limit_must_be_positive(self) -> None:
        with pytest.raises(ValueError):
            ReplayBuffer(0)
        ReplayBuffer(1).append(b"a")

    @settings(max_examples=300, deadline=None)
    @given(limit=st.integers(1, 64),
           chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=30),
           probes=st.lists(st.tuples(st.integers(-5, 1300), st.integers(-1, 200)), max_size=20))
    def test_against_a_bytes_model(self, limit: int, chunks: list[bytes],
                                   probes: list[tuple[int, int]]) -> None:
        replay = ReplayBuffer(limit)
        stream = b""
        kept: list[bytes] = []  # the model: whole chunks, the oldest dropped while the rest
        for chunk in chunks:    # still holds at least `limit` bytes
            replay.append(chunk)
            stream += chunk
            if chunk:
                kept.append(chunk)
                while sum(map(len, kept)) - len(kept[0]) >= limit:
                    kept.pop(0)
            assert replay.end == len(stream)
            assert replay.start == len(stream) - sum(map(len, kept))
            assert len(replay) >= min(limit, len(stream))  # at least the limit
            assert not kept or len(replay) - len(kept[0]) < limit  # at most one chunk more
            assert replay.read(replay.start, len(stream)) == stream[replay.start:]
        for since, size in probes:
            since = since % (len(stream) + 3) if since >= 0 else since
            offset, gap = replay.resume_point(since)
            if replay.start <= since <= replay.end:
                assert (offset, gap) == (since, False)
                assert replay.read(since, size) == (
                    stream[since:since + size] if size > 0 else b"")
            else:
                assert (offset, gap) == (replay.start, True)
                with pytest.raises(ValueError):
                    replay.read(since, max(size, 1))
