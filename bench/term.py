#!/usr/bin/env python3
"""Web terminals side by side: tether term against terminado (Jupyter's terminal backend)
and wetty, in one run, on loopback, with Debian's Chromium driven by Playwright.

Three measurements, each server fresh every round, servers interleaved (order rotates):

  ctrlc  Ctrl-C under `yes`, in Chromium: the page runs `yes`; after ~1 s of output the
         script presses Control+C in the terminal; figure = from the keydown's event time
         (event.timeStamp: when the browser got the key, even if the page is busy) until the
         first animation frame after xterm.js parsed the write that left the prompt as the
         cursor line, with nothing more arriving for --quiet s. Also: how much output the page
         handed xterm.js after the key (what was in flight between server and page; output
         already queued inside xterm.js is not counted). p50/p95 over rounds x --ctrlc-tries.
  cat    output throughput to the page: `cat` a --cat-mb MB file of 80-column text lines
         (made once in a temporary folder); MB/s = file size / (Enter's event time -> the
         prompt after it drawn). Median of --rounds.
  idle   memory and CPU per idle session, no browser: a warm-up session, then the server's
         VmRSS; --sessions more sessions from plain WebSocket clients in this process (each
         an idle shell at its prompt); VmRSS again after --settle s: (after - before) / N;
         then utime+stime of the server process (/proc/PID/stat) over --idle s / N. The
         shells' own VmRSS is read too (every descendant of the server). All servers are
         measured in the same idle window. Median of --idle-rounds.

Servers (same `bash --norc --noprofile`, same terminal size: the viewport is sized so that
each page's fit addon gives --cols x --rows; the plain clients ask for that size too):

  tether      python -m tether term --token T --command 'bash --norc --noprofile'
              --max-sessions 1000 (its page at /#token=T; its defaults otherwise, which
              include permessage-deflate, which Chromium and the plain client both offer)
  tether-nc   the same with --no-compression (to separate deflate's cost from the rest)
  terminado   a tornado app (this file, `--serve terminado`, run by --terminado-python):
              terminado.TermSocket at /websocket with UniqueTermManager(shell_command=
              ['bash', '--norc', '--noprofile']) (TERM=xterm-256color, as tether sets it),
              and bench/term/terminado.html + terminado.js: tether's vendored xterm.js set up
              exactly as tether's page sets it up, speaking terminado's JSON protocol
  wetty       node .../wetty/build/main.js --command 'bash --norc --noprofile' (its own
              page and bundled xterm.js, socket.io). wetty runs a local command only when it
              runs as root (otherwise it logs in over ssh): skipped when not root. Installed
              into bench/.node-wetty when missing (npm install wetty@3; node-pty has no Linux
              prebuild: its install script builds it with node-gyp, and when npm did not run
              that script, this script runs node-gyp itself)
  tether-win  opt-in (not in the default --servers): tether with its flow-control window
              (Terminal's high_water, 128 KiB, which the command line does not expose) set
              to --window bytes and low_water to --low-water (default: a quarter of it), to
              see what the window costs in `cat` throughput and buys in Ctrl-C latency

Requirements: Linux, /usr/bin/chromium (Debian's; Playwright never downloads a browser here),
an interpreter with playwright and websockets to run this script (the project's .venv has
both), one with terminado for the terminado server, node + npm for wetty:

  python3 -m venv /tmp/benchvenv && /tmp/benchvenv/bin/pip install terminado tornado
  .venv/bin/python bench/term.py --terminado-python /tmp/benchvenv/bin/python    # ~12 min
  .venv/bin/python bench/term.py --terminado-python /tmp/benchvenv/bin/python \\
      --rounds 2 --ctrlc-tries 3 --idle-rounds 1 --idle 10          # quick look, ~5 min
  .venv/bin/python bench/term.py --servers tether,wetty --phases ctrlc,idle
  .venv/bin/python bench/term.py --terminado-python /tmp/benchvenv/bin/python \\
      --servers tether,tether-win,terminado --phases cat --window 4194304

tether runs under --tether-python (default: the repository's .venv/bin/python if present,
else this interpreter) with src/ first on PYTHONPATH, so it has its C extension and uvloop
as installed there. Every process this script starts is stopped by its PID (SIGTERM, then
SIGKILL after 5 s), and so is any shell a server leaves behind. Exit status 1 if a
measurement failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PAGE_DIR = BENCH_DIR / "term"
TETHER_STATIC = REPO_DIR / "src" / "tether" / "apps" / "term" / "static"
WETTY_DIR = BENCH_DIR / ".node-wetty"
WETTY_VERSION = "3"
HOST = "127.0.0.1"
SHELL = ["bash", "--norc", "--noprofile"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SERVERS = ["tether", "tether-nc", "terminado", "wetty"]
VARIANTS = ["tether-win"]  # opt-in: tether with its flow-control window set by --window
# `python -m tether term` with another flow-control window: Terminal's high_water and
# low_water (--window, --low-water) and TermSession's socket budget (4 x high_water), which the
# command line does not expose, set through the functions' keyword defaults.
WINDOW_PATCH = (
    "import os, sys\n"
    "from tether.apps.term import server, session\n"
    "hw, lw = (int(v) for v in os.environ['BENCH_TERM_WINDOW'].split(','))\n"
    "server.Terminal.__init__.__kwdefaults__.update(high_water=hw, low_water=lw)\n"
    "session.TermSession.__init__.__kwdefaults__.update(max_buffered=4 * hw)\n"
    "from tether.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
PHASES = ["ctrlc", "cat", "idle"]
PROMPT_RE = re.compile(r"[#$] ?$")
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]|[\x00-\x08\x0e-\x1f]")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# terminado's server (runs in its own process, under --terminado-python)


def serve_terminado(port: int) -> None:
    import tornado.web
    from terminado import TermSocket, UniqueTermManager

    async def main() -> None:
        manager = UniqueTermManager(shell_command=SHELL,
                                    term_settings={"type": "xterm-256color"},
                                    extra_env={"COLORTERM": "truecolor"})

        class Static(tornado.web.StaticFileHandler):
            def set_extra_headers(self, path: str) -> None:
                self.set_header("Cache-Control", "no-cache")

        app = tornado.web.Application([
            (r"/websocket", TermSocket, {"term_manager": manager}),
            (r"/vendor/(.*)", Static, {"path": str(TETHER_STATIC / "vendor")}),
            (r"/()", Static, {"path": str(PAGE_DIR), "default_filename": "terminado.html"}),
            (r"/(terminado\.(?:js|html))", Static, {"path": str(PAGE_DIR)}),
        ])
        app.listen(port, HOST)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await manager.shutdown()  # SIGHUP, then SIGTERM, to every shell, as Jupyter does

    asyncio.run(main())


# ------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """Every live descendant of pid (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent:
                found.append(child)
                frontier.append(child)
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE_KIB


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def cpu_ns(pid: int) -> int:
    """Time on CPU of every live thread (schedstat, ns): finer than the 10 ms ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


class Server:
    """One server process on a free loopback port; stop() ends it (and any shell it left)
    by PID."""

    def __init__(self, kind: str, args: argparse.Namespace, folder: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.token = secrets.token_urlsafe(16)
        self.log_path = folder / f"{kind}-{self.port}.log"
        env = dict(os.environ)
        if kind in ("tether", "tether-nc"):
            env["PYTHONPATH"] = str(REPO_DIR / "src") + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            cmd = [args.tether_python, "-m", "tether", "term", "--host", HOST,
                   "--port", str(self.port), "--token", self.token,
                   "--command", shlex.join(SHELL), "--max-sessions", "1000"]
            if kind == "tether-nc":
                cmd.append("--no-compression")
            self.url = f"http://{HOST}:{self.port}/#token={self.token}"
        elif kind == "tether-win":
            env["PYTHONPATH"] = str(REPO_DIR / "src") + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
            env["BENCH_TERM_WINDOW"] = f"{args.window},{args.low_water or args.window // 4}"
            cmd = [args.tether_python, "-c", WINDOW_PATCH, "term", "--host", HOST,
                   "--port", str(self.port), "--token", self.token,
                   "--command", shlex.join(SHELL), "--max-sessions", "1000",
                   "--replay", str(max(2**20, 4 * args.window))]
            self.url = f"http://{HOST}:{self.port}/#token={self.token}"
        elif kind == "terminado":
            cmd = [args.terminado_python, str(Path(__file__).resolve()), "--serve", "terminado",
                   "--port", str(self.port)]
            self.url = f"http://{HOST}:{self.port}/"
        elif kind == "wetty":
            cmd = ["node", str(args.wetty_dir / "node_modules" / "wetty" / "build" / "main.js"),
                   "--host", HOST, "--port", str(self.port), "--base", "/wetty",
                   "--command", shlex.join(SHELL)]
            self.url = f"http://{HOST}:{self.port}/wetty"
        else:
            raise ValueError(kind)
        self.command = cmd
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url.split("#")[0], timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{kind} did not answer in 20 s: {self.tail()}")
            time.sleep(0.05)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def shells(self) -> list[int]:
        return children_of(self.pid)

    def stop(self) -> None:
        left = self.shells() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 3
        for pid in left:  # shells the server did not end (by PID: ours, started for us)
            while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()


# ------------------------------------------------------------------------------------------
# what each server needs, and versions


def ensure_wetty(wetty_dir: Path, install: bool) -> str | None:
    """None when wetty can run here, else why not (installs it when missing)."""
    if os.geteuid() != 0:
        return "wetty runs a local command only as root (otherwise it logs in over ssh)"
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return "node not found"
    main_js = wetty_dir / "node_modules" / "wetty" / "build" / "main.js"
    pty_dir = wetty_dir / "node_modules" / "node-pty"
    if not main_js.exists():
        if not install:
            return f"wetty not installed in {wetty_dir} (and --no-install)"
        if not npm:
            return "npm not found (needed to install wetty)"
        wetty_dir.mkdir(exist_ok=True)
        pkg = wetty_dir / "package.json"
        if not pkg.exists():
            pkg.write_text('{"name": "tether-bench-wetty", "private": true}\n')
        log(f"installing wetty@{WETTY_VERSION} into {wetty_dir} (npm)")
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", f"wetty@{WETTY_VERSION}"],
                           cwd=wetty_dir, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return "npm install wetty failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    probe = [node, "-e", "require(process.argv[1]).spawn('/bin/true', [], {})", str(pty_dir)]
    if subprocess.run(probe, capture_output=True, timeout=60).returncode != 0:
        if not install:
            return "node-pty has no native module (and --no-install)"
        # node-pty ships prebuilds for macOS and Windows only; npm 11 leaves its install
        # script (node-gyp rebuild) unrun: build it with npm's own node-gyp, else npx's.
        gyp = Path("/usr/lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js")
        cmd = [node, str(gyp), "rebuild"] if gyp.exists() else ["npx", "--yes", "node-gyp",
                                                                  "rebuild"]
        log(f"building node-pty with node-gyp in {pty_dir}")
        r = subprocess.run(cmd, cwd=pty_dir, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
            return "node-gyp could not build node-pty: " + (
                (r.stderr.strip() or r.stdout.strip()).splitlines() or ["?"])[-1]
    return None


def check_servers(servers: list[str], args: argparse.Namespace) -> dict[str, str]:
    """{server: reason} for those that cannot run."""
    skipped = {}
    for kind in servers:
        if kind in ("tether", "tether-nc", "tether-win"):
            r = subprocess.run([args.tether_python, "-c", "import tether.apps.term"],
                               env={**os.environ, "PYTHONPATH": str(REPO_DIR / "src")},
                               capture_output=True, text=True)
            if r.returncode != 0:
                skipped[kind] = "cannot import tether: " + r.stderr.strip()[-200:]
        elif kind == "terminado":
            r = subprocess.run([args.terminado_python, "-c", "import terminado, tornado"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                skipped[kind] = (f"{args.terminado_python} cannot import terminado "
                                 "(pip install terminado tornado; see --terminado-python)")
        elif kind == "wetty":
            reason = ensure_wetty(args.wetty_dir, not args.no_install)
            if reason:
                skipped[kind] = reason
    return skipped


def versions(servers: list[str], args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}

    def run(cmd: list[str], **kw: Any) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kw)
            return r.stdout.strip() or r.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"? ({exc})"

    vendored = (TETHER_STATIC / "vendor" / "VERSIONS").read_text().split()
    xterm_vendored = next((v for v in vendored if v.startswith("@xterm/xterm@")), "?")
    if any(s.startswith("tether") for s in servers):
        commit = run(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
        dirty = run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"])
        out["tether"] = run([args.tether_python, "-c", "import tether, uvloop, sys; print("
                             "tether.__version__, 'uvloop', uvloop.__version__, 'python', "
                             "sys.version.split()[0])"],
                            env={**os.environ, "PYTHONPATH": str(REPO_DIR / "src")}) + \
            f", commit {commit}{' (src/ modified)' if dirty else ''}; page: {xterm_vendored} (vendored)"
    if "terminado" in servers:
        out["terminado"] = run([args.terminado_python, "-c",
                                "import terminado, tornado, sys; print('terminado', "
                                "terminado.__version__, 'tornado', tornado.version, 'python', "
                                "sys.version.split()[0])"]) + \
            f"; page: bench/term/terminado.html with tether's {xterm_vendored}"
    if "wetty" in servers:
        def pkg_version(name: str) -> str:
            try:
                path = args.wetty_dir / "node_modules" / name / "package.json"
                return str(json.loads(path.read_text())["version"])
            except (OSError, ValueError, KeyError):
                return "?"
        out["wetty"] = (f"wetty {pkg_version('wetty')}, node-pty {pkg_version('node-pty')}, "
                        f"socket.io {pkg_version('socket.io')}, node {run(['node', '--version'])}"
                        f"; page: its own bundle, built against @xterm/xterm ^6 (installed: "
                        f"{pkg_version('@xterm/xterm')}; the bundle has no version string)")
    out["bash"] = run(["bash", "--version"]).splitlines()[0] if run(["bash", "--version"]) else "?"
    return out


# ------------------------------------------------------------------------------------------
# the browser phases


INSTRUMENT = """(term) => {
  // Counts what the page hands xterm.js, and watches the cursor line after each parse.
  if (window.__bench) return true;
  const B = window.__bench = {
    term, units: 0, writes: 0, lastWrite: 0, prompt: null, armed: false, minUnits: 0,
    keyAt: null, keyHandledAt: null, keyUnits: 0, promptAt: null, drawnAt: null,
    promptUnits: 0,
  };
  const write = term.write;
  term.write = function (data, callback) {
    B.units += data.length;  // bytes (tether) or UTF-16 units (the others): ASCII here
    return write.call(this, data, callback);
  };
  B.cursorLine = () => {
    const buffer = term.buffer.active;
    const line = buffer.getLine(buffer.baseY + buffer.cursorY);
    return line ? line.translateToString(true) : "";
  };
  term.onWriteParsed(() => {
    const now = performance.now();
    B.writes += 1;
    B.lastWrite = now;
    if (B.keyAt === null || B.prompt === null) return;
    if (B.cursorLine() === B.prompt && B.units - B.keyUnits >= B.minUnits) {
      if (B.promptAt === null) {
        B.promptAt = now;
        B.promptUnits = B.units;
        requestAnimationFrame(() => { if (B.promptAt === now) B.drawnAt = performance.now(); });
      }
    } else {
      B.promptAt = null;
      B.drawnAt = null;
    }
  });
  document.addEventListener("keydown", (event) => {
    if (!B.armed) return;
    if (event.key === "Enter" || (event.ctrlKey && (event.key === "c" || event.key === "C"))) {
      B.armed = false;
      B.keyAt = event.timeStamp;      // when the browser got the key
      B.keyHandledAt = performance.now();
      B.keyUnits = B.units;
      B.promptAt = null;
      B.drawnAt = null;
    }
  }, true);
  return true;
}"""

TERM_EXPR = {
    "tether": "window.tetherTerm && window.tetherTerm.state === 'online' && window.tetherTerm.term",
    "tether-nc": "window.tetherTerm && window.tetherTerm.state === 'online' && window.tetherTerm.term",
    "tether-win": "window.tetherTerm && window.tetherTerm.state === 'online' && window.tetherTerm.term",
    "terminado": "window.benchSocket && window.benchSocket.readyState === 1 && window.benchTerm",
    "wetty": "window.wetty_term",
}

STATE = """() => {
  const B = window.__bench;
  return { now: performance.now(), units: B.units, writes: B.writes, lastWrite: B.lastWrite,
           keyAt: B.keyAt, keyHandledAt: B.keyHandledAt, keyUnits: B.keyUnits,
           promptAt: B.promptAt, drawnAt: B.drawnAt, promptUnits: B.promptUnits,
           line: B.cursorLine(), cols: B.term.cols, rows: B.term.rows };
}"""


class BrowserPage:
    """One server's page in a fresh browser context, instrumented, at --cols x --rows."""

    def __init__(self, browser: Any, server: Server, args: argparse.Namespace,
                 viewports: dict[str, tuple[int, int]]) -> None:
        self.kind = server.kind
        self.args = args
        self.viewport = viewports.get(server.kind, (1100, 760))
        self.context = browser.new_context(viewport={"width": self.viewport[0],
                                                     "height": self.viewport[1]},
                                           device_scale_factor=1, service_workers="block")
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.goto(server.url)
        expr = TERM_EXPR[server.kind]
        self.page.wait_for_function(f"() => !!({expr})")
        self.page.evaluate(f"() => ({INSTRUMENT})({expr})")
        self.prompt = self.wait_prompt(None)
        self.size = self.fit(args.cols, args.rows)
        viewports[server.kind] = self.viewport
        self.prompt = self.wait_prompt(None)
        self.page.evaluate("(p) => { window.__bench.prompt = p; }", self.prompt)
        self.renderer = self.page.evaluate(
            "() => document.querySelector('.xterm-screen canvas') ? 'webgl/canvas' : 'dom'")
        self.page.focus(".xterm-helper-textarea")

    def state(self) -> dict[str, Any]:
        return dict(self.page.evaluate(STATE))

    def wait_prompt(self, prompt: str | None, timeout: float = 20.0) -> str:
        """The cursor line once it looks like (or is) the prompt and is stable for 0.3 s."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            line = self.state()["line"]
            ok = (line == prompt) if prompt is not None else bool(PROMPT_RE.search(line))
            if ok and line == last:
                if time.monotonic() - since >= 0.3:
                    return line
            else:
                last, since = line, time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind}: no prompt in {timeout} s (cursor line "
                           f"{self.state()['line']!r})")

    def fit(self, cols: int, rows: int) -> tuple[int, int]:
        """Resize the viewport until the page's fit addon gives cols x rows: the room it
        sees, computed as FitAddon.proposeDimensions() does, is set to (cols + 0.5) x
        (rows + 0.5) cells."""
        for _ in range(5):
            g = self.page.evaluate("""() => {
                const t = window.__bench.term;
                const cell = t._core._renderService.dimensions.css.cell;
                const scroll = t.options.scrollback === 0 ? 0
                    : (t.options.overviewRuler?.width || 14);
                const ps = getComputedStyle(t.element.parentElement);
                const es = getComputedStyle(t.element);
                const px = (v) => parseInt(v) || 0;
                return { cols: t.cols, rows: t.rows, cw: cell.width, ch: cell.height,
                         w: Math.max(0, px(ps.width)) - px(es.paddingLeft) - px(es.paddingRight)
                            - scroll,
                         h: px(ps.height) - px(es.paddingTop) - px(es.paddingBottom) };
            }""")
            if (g["cols"], g["rows"]) == (cols, rows):
                return cols, rows
            width = self.viewport[0] + round((cols + 0.5) * g["cw"] - g["w"])
            height = self.viewport[1] + round((rows + 0.5) * g["ch"] - g["h"])
            self.viewport = (width, height)
            self.page.set_viewport_size({"width": width, "height": height})
            time.sleep(0.5)
        state = self.state()
        return state["cols"], state["rows"]

    def wait_done(self, timeout: float) -> dict[str, Any]:
        """Until the prompt is the cursor line and nothing was parsed for --quiet s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.state()
            if s["promptAt"] is not None and s["now"] - s["lastWrite"] >= self.args.quiet * 1000:
                if s["drawnAt"] is None:  # the frame after the prompt; there is always one
                    time.sleep(0.05)
                    s = self.state()
                return s
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind}: prompt not back within {timeout} s "
                           f"(cursor line {self.state()['line']!r})")

    def arm(self, min_units: int) -> None:
        self.page.evaluate("(n) => { const B = window.__bench; B.armed = true; B.keyAt = null;"
                           " B.promptAt = null; B.drawnAt = null; B.minUnits = n; }", min_units)

    def ctrlc(self) -> dict[str, Any]:
        self.wait_prompt(self.prompt)
        keyboard = self.page.keyboard
        keyboard.type("yes")
        start = self.state()["units"]
        keyboard.press("Enter")
        deadline = time.monotonic() + 10
        while self.state()["units"] - start < 65536:  # output is flowing
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind}: `yes` printed nothing")
            time.sleep(0.02)
        time.sleep(self.args.yes_for)
        self.arm(0)
        keyboard.press("Control+c")
        s = self.wait_done(self.args.ctrlc_timeout)
        end = s["drawnAt"] if s["drawnAt"] is not None else s["promptAt"]
        return {"ms": end - s["keyAt"], "parsed_ms": s["promptAt"] - s["keyAt"],
                "key_queue_ms": s["keyHandledAt"] - s["keyAt"],
                "after_key_kb": (s["promptUnits"] - s["keyUnits"]) / 1024}

    def cat(self, path: Path, size: int) -> dict[str, Any]:
        self.wait_prompt(self.prompt)
        self.page.keyboard.type(f"cat {path}")
        time.sleep(0.3)  # the echo of the command line comes back
        self.arm(size)
        self.page.keyboard.press("Enter")
        s = self.wait_done(self.args.cat_timeout)
        end = s["drawnAt"] if s["drawnAt"] is not None else s["promptAt"]
        seconds = (end - s["keyAt"]) / 1000
        return {"s": seconds, "mb_per_s": size / 1e6 / seconds,
                "units": s["promptUnits"] - s["keyUnits"]}

    def close(self) -> None:
        self.context.close()


def make_text_file(folder: Path, mb: float) -> tuple[Path, int]:
    path = folder / "cat.txt"
    line_body = "the quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJ abc"
    target = int(mb * 1e6)
    with open(path, "w") as f:
        n, written, chunk = 0, 0, []
        while written < target:
            line = f"{n:08d} {line_body}\n"  # 79 characters + newline: no wrapping at 120
            chunk.append(line)
            written += len(line)
            n += 1
            if len(chunk) >= 10000:
                f.write("".join(chunk))
                chunk = []
        f.write("".join(chunk))
    return path, path.stat().st_size


def browser_phases(servers: list[str], args: argparse.Namespace, folder: Path,
                   results: dict[str, dict[str, Any]], failures: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    cat_path, cat_size = (make_text_file(folder, args.cat_mb) if "cat" in args.phases
                          else (Path("/dev/null"), 0))
    viewports: dict[str, tuple[int, int]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS,
                                             headless=True)
        results["_meta"]["chromium"] = browser.version
        try:
            for r in range(args.rounds):
                order = servers[r % len(servers):] + servers[:r % len(servers)]
                for kind in order:
                    res = results[kind]
                    server = page = None
                    try:
                        server = Server(kind, args, folder)
                        page = BrowserPage(browser, server, args, viewports)
                        res["size"] = f"{page.size[0]}x{page.size[1]}"
                        res["viewport"] = f"{page.viewport[0]}x{page.viewport[1]}"
                        res["renderer"] = page.renderer
                        res["prompt"] = page.prompt
                        if "ctrlc" in args.phases:
                            for _ in range(args.ctrlc_tries):
                                t = page.ctrlc()
                                res["ctrlc"].append(t)
                                log(f"round {r + 1} {kind:9} Ctrl-C {t['ms']:8.1f} ms "
                                    f"(parsed {t['parsed_ms']:.1f}, key queued "
                                    f"{t['key_queue_ms']:.1f} ms, {t['after_key_kb']:.0f} KiB "
                                    "after the key)")
                        if "cat" in args.phases:
                            t = page.cat(cat_path, cat_size)
                            res["cat"].append(t)
                            log(f"round {r + 1} {kind:9} cat {cat_size / 1e6:.0f} MB "
                                f"{t['mb_per_s']:6.2f} MB/s ({t['s']:.2f} s)")
                    except Exception as exc:  # noqa: BLE001 — report, go on with the others
                        msg = f"round {r + 1} {kind}: {type(exc).__name__}: {exc}"
                        failures.append(msg)
                        log("FAILED", msg)
                        if server is not None:
                            log(server.tail()[-600:])
                    finally:
                        if page is not None:
                            page.close()
                        if server is not None:
                            server.stop()
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------
# the idle phase: plain WebSocket clients, no browser


def _has_prompt(text: str) -> bool:
    return bool(PROMPT_RE.search(ANSI_RE.sub("", text).rstrip("\r\n")))


async def client_tether(server: Server, cols: int, rows: int, ready: asyncio.Event,
                        stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://{HOST}:{server.port}/ws", max_size=None, ping_interval=None,
                       subprotocols=["tether.term.v1", f"bearer.{server.token}"]) as ws:
        await ws.send(json.dumps({"type": "attach", "session": None, "since": None,
                                  "cols": cols, "rows": rows}))
        offset, text = 0, ""
        reader = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, reader}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                break
            message = recv.result()
            if isinstance(message, bytes):
                offset += len(message)
                text = (text + message.decode(errors="replace"))[-200:]
                await ws.send(json.dumps({"type": "ack", "offset": offset}))
                if _has_prompt(text):
                    ready.set()
        reader.cancel()


async def client_terminado(server: Server, cols: int, rows: int, ready: asyncio.Event,
                           stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    async with connect(f"ws://{HOST}:{server.port}/websocket", max_size=None,
                       ping_interval=None) as ws:
        await ws.send(json.dumps(["set_size", rows, cols]))
        text = ""
        reader = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, reader}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                break
            message = json.loads(recv.result())
            if message[0] == "stdout":
                text = (text + message[1])[-200:]
                if _has_prompt(text):
                    ready.set()
        reader.cancel()


async def client_wetty(server: Server, cols: int, rows: int, ready: asyncio.Event,
                       stop: asyncio.Event) -> None:
    """socket.io (Engine.IO 4) over a WebSocket, as wetty's page speaks it once upgraded:
    answers the server's pings ("2" -> "3"), says its size, reads "data" events."""
    from websockets.asyncio.client import connect

    url = f"ws://{HOST}:{server.port}/wetty/socket.io/?EIO=4&transport=websocket"
    async with connect(url, max_size=None, ping_interval=None) as ws:
        text = ""
        reader = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            recv = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({recv, reader}, return_when=asyncio.FIRST_COMPLETED)
            if recv not in done:
                recv.cancel()
                break
            packet = recv.result()
            assert isinstance(packet, str)
            if packet.startswith("0"):
                await ws.send("40")
            elif packet == "2":
                await ws.send("3")
            elif packet.startswith("40"):
                await ws.send("42" + json.dumps(["resize", {"cols": cols, "rows": rows}]))
            elif packet.startswith("42"):
                event = json.loads(packet[2:])
                if event[0] == "data":
                    text = (text + event[1])[-200:]
                    if _has_prompt(text):
                        ready.set()
        reader.cancel()


CLIENTS = {"tether": client_tether, "tether-nc": client_tether, "tether-win": client_tether,
           "terminado": client_terminado, "wetty": client_wetty}


async def open_sessions(server: Server, n: int, args: argparse.Namespace,
                        stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Open n sessions (10 at a time), each until its shell's prompt arrived."""
    client = CLIENTS[server.kind]
    limit = asyncio.Semaphore(10)

    async def one() -> None:
        async with limit:
            ready = asyncio.Event()
            task = asyncio.ensure_future(client(server, args.cols, args.rows, ready, stop))
            tasks.append(task)
            waiter = asyncio.ensure_future(ready.wait())
            done, _ = await asyncio.wait({task, waiter}, timeout=20,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                if task.done() and task.exception():
                    raise RuntimeError(f"{server.kind}: a session failed: "
                                       f"{task.exception()!r}")
                raise RuntimeError(f"{server.kind}: no prompt within 20 s")

    await asyncio.gather(*(one() for _ in range(n)))


async def idle_round(servers: list[str], args: argparse.Namespace, folder: Path,
                     r: int) -> dict[str, dict[str, Any]]:
    running: dict[str, Server] = {}
    out: dict[str, dict[str, Any]] = {}
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    try:
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        for kind in order:
            server = await loop.run_in_executor(None, Server, kind, args, folder)
            running[kind] = server
            await open_sessions(server, 1, args, stop, tasks)  # warm-up, kept open
            await asyncio.sleep(1.0)
            before = rss_kib(server.pid)
            await open_sessions(server, args.sessions, args, stop, tasks)
            await asyncio.sleep(args.settle)
            after = rss_kib(server.pid)
            shells = server.shells()
            shell_rss = [rss_kib(pid) for pid in shells if os.path.exists(f"/proc/{pid}")]
            out[kind] = {"rss_before_kib": before, "rss_after_kib": after,
                         "rss_per_session_kib": (after - before) / args.sessions,
                         "shells": len(shells),
                         "shell_rss_kib": statistics.median(shell_rss) if shell_rss else None}
            log(f"idle round {r + 1} {kind:9} server RSS {before / 1024:.1f} -> "
                f"{after / 1024:.1f} MiB: {out[kind]['rss_per_session_kib']:.1f} KiB/session; "
                f"{len(shells)} shells, median RSS {out[kind]['shell_rss_kib']} KiB")
        ticks0 = {k: cpu_ticks(s.pid) for k, s in running.items()}
        ns0 = {k: cpu_ns(s.pid) for k, s in running.items()}
        t0 = time.monotonic()
        await asyncio.sleep(args.idle)
        wall = time.monotonic() - t0
        for kind, server in running.items():
            ticks = cpu_ticks(server.pid) - ticks0[kind]
            ns = cpu_ns(server.pid) - ns0[kind]
            n = args.sessions + 1
            out[kind].update({
                "idle_s": wall, "cpu_ms": ticks * 1000 / CLK_TCK, "cpu_ns": ns,
                "cpu_us_per_session_s": ns / 1000 / n / wall,  # µs of CPU per session-second
                "cpu_ms_per_session": ticks * 1000 / CLK_TCK / n,
            })
            log(f"idle round {r + 1} {kind:9} CPU over {wall:.0f} s idle: "
                f"{out[kind]['cpu_ms']:.0f} ms (stat), {ns / 1e6:.1f} ms (schedstat), "
                f"{n} sessions")
    finally:
        stop.set()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            if not task.done():
                task.cancel()
        for server in running.values():
            await loop.run_in_executor(None, server.stop)
    return out


# ------------------------------------------------------------------------------------------
# the table


def pct(values: list[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt_range(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def table(servers: list[str], results: dict[str, dict[str, Any]],
          args: argparse.Namespace) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        cells = []
        for kind in servers:
            try:
                cells.append(fn(results[kind]))
            except (KeyError, ValueError, statistics.StatisticsError, TypeError, IndexError):
                cells.append("–")
        rows.append((label, cells))

    tries = max((len(results[k]["ctrlc"]) for k in servers), default=0)
    if "ctrlc" in args.phases:
        row(f"Ctrl-C under `yes` → prompt drawn, p50 ms ({tries} tries)",
            lambda r: f"{pct([t['ms'] for t in r['ctrlc']], 50):.0f}")
        row("… p95 ms", lambda r: f"{pct([t['ms'] for t in r['ctrlc']], 95):.0f}")
        row("… min–max ms", lambda r: f"{min(t['ms'] for t in r['ctrlc']):.0f}–"
            f"{max(t['ms'] for t in r['ctrlc']):.0f}")
        row("… output handed to xterm.js after the key, KiB (median, range)",
            lambda r: fmt_range([t["after_key_kb"] for t in r["ctrlc"]], 0))
        row("… key waited in the page's queue, ms (median)",
            lambda r: f"{statistics.median(t['key_queue_ms'] for t in r['ctrlc']):.1f}")
    if "cat" in args.phases:
        row(f"cat {args.cat_mb:g} MB → prompt drawn, MB/s (median, range; "
            f"{len(results[servers[0]]['cat'])} runs)",
            lambda r: fmt_range([t["mb_per_s"] for t in r["cat"]], 2))
    if "ctrlc" in args.phases or "cat" in args.phases:
        row("page: terminal size / renderer",
            lambda r: f"{r['size']} / {r['renderer']}")
    if "idle" in args.phases:
        idle = lambda r: r["idle"]  # noqa: E731
        row(f"server RSS per idle session, KiB ({args.sessions} sessions; median, range)",
            lambda r: fmt_range([x["rss_per_session_kib"] for x in idle(r)], 1))
        row("server RSS with 1 session (baseline), MiB",
            lambda r: fmt_range([x["rss_before_kib"] / 1024 for x in idle(r)], 1))
        row("shell (bash) RSS each, KiB (median)",
            lambda r: fmt_range([x["shell_rss_kib"] for x in idle(r)], 0))
        row(f"server CPU per idle session, ms per {args.idle:g} s (stat ticks)",
            lambda r: fmt_range([x["cpu_ms_per_session"] for x in idle(r)], 2))
        row("server CPU per idle session, µs per s (schedstat)",
            lambda r: fmt_range([x["cpu_us_per_session_s"] for x in idle(r)], 2))
    lines = ["| | " + " | ".join(servers) + " |",
             "|---|" + "---:|" * len(servers)]
    for label, cells in rows:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["terminado"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="ctrlc,cat,idle (default: all)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="browser rounds (fresh server and page each) (default: 5)")
    parser.add_argument("--ctrlc-tries", type=int, default=4,
                        help="Ctrl-C tries per round (default: 4, so 20 in all)")
    parser.add_argument("--yes-for", type=float, default=1.0,
                        help="seconds of `yes` output before Ctrl-C (default: 1)")
    parser.add_argument("--quiet", type=float, default=1.0,
                        help="seconds with nothing parsed after the prompt (default: 1)")
    parser.add_argument("--ctrlc-timeout", type=float, default=120.0)
    parser.add_argument("--cat-mb", type=float, default=24.0,
                        help="size of the file `cat` prints, MB (default: 24)")
    parser.add_argument("--cat-timeout", type=float, default=300.0)
    parser.add_argument("--sessions", type=int, default=50,
                        help="idle sessions per server (default: 50)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between opening them and reading RSS (default: 3)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds of idle CPU measured (default: 30)")
    parser.add_argument("--idle-rounds", type=int, default=3)
    parser.add_argument("--window", type=int, default=2**20,
                        help="tether-win's flow-control window (high_water), bytes "
                        "(default: 1 MiB; tether's own is 128 KiB)")
    parser.add_argument("--low-water", type=int, default=None,
                        help="tether-win's low_water: reading resumes below it (default: "
                        "--window / 4, as tether's own 32 KiB of 128 KiB)")
    parser.add_argument("--cols", type=int, default=120)
    parser.add_argument("--rows", type=int, default=40)
    default_tether = REPO_DIR / ".venv" / "bin" / "python"
    parser.add_argument("--tether-python",
                        default=str(default_tether) if default_tether.exists() else sys.executable)
    parser.add_argument("--terminado-python", default=sys.executable,
                        help="an interpreter that can import terminado (default: this one)")
    parser.add_argument("--wetty-dir", type=Path, default=WETTY_DIR)
    parser.add_argument("--no-install", action="store_true",
                        help="don't install wetty when it is missing")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    args = parser.parse_args()
    if args.serve:
        serve_terminado(args.port)
        return 0

    args.phases = [p for p in args.phases.split(",") if p]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}")
    wanted = [s for s in args.servers.split(",") if s]
    unknown = set(wanted) - set(SERVERS) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}")
    skipped = check_servers(wanted, args)
    for kind, reason in skipped.items():
        log(f"skipped {kind}: {reason}")
    servers = [s for s in wanted if s not in skipped]
    if not servers:
        return 1
    busy = None
    try:
        sys.path.insert(0, str(BENCH_DIR))
        from echo import background_load

        busy = background_load()
    except Exception:  # noqa: BLE001
        pass
    info = versions(servers, args)
    for key, value in info.items():
        log(f"{key}: {value}")
    if busy is not None:
        log(f"background load {busy:.2f} cores" + (" (busy machine: figures will be noisy)"
                                                    if busy > 0.2 else ""))
    results: dict[str, dict[str, Any]] = {k: {"ctrlc": [], "cat": [], "idle": []}
                                          for k in servers}
    results["_meta"] = {"versions": info, "argv": sys.argv, "skipped": skipped,
                        "background_load": busy}
    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tether-bench-term-") as tmp:
        folder = Path(tmp)
        try:
            if "ctrlc" in args.phases or "cat" in args.phases:
                browser_phases(servers, args, folder, results, failures)
            if "idle" in args.phases:
                for r in range(args.idle_rounds):
                    try:
                        for kind, value in asyncio.run(idle_round(servers, args, folder,
                                                                  r)).items():
                            results[kind]["idle"].append(value)
                    except Exception as exc:  # noqa: BLE001
                        msg = f"idle round {r + 1}: {type(exc).__name__}: {exc}"
                        failures.append(msg)
                        log("FAILED", msg)
        except KeyboardInterrupt:
            failures.append("interrupted")
    print()
    print(table(servers, results, args))
    print()
    for key, value in info.items():
        print(f"- {key}: {value}")
    print(f"- Chromium {results['_meta'].get('chromium', '?')} (headless, --disable-gpu)")
    for kind, reason in skipped.items():
        print(f"- {kind} skipped: {reason}")
    for failure in failures:
        print(f"- FAILED {failure}")
    print(f"\n({args.rounds} browser rounds, {args.idle_rounds} idle rounds; "
          f"total {time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
