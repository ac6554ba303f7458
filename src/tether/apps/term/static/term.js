// The page of `tether term`: xterm.js in the window, a WebSocket to a program on a PTY.
//
// Wire protocol (docs/terminal.md): binary frames carry terminal bytes both ways (keystrokes
// up, raw PTY output down, never decoded on the server); text frames carry small JSON
// control messages. The page acknowledges the output offset it has drawn, so the server
// never has more than its high-water mark in flight, and a reconnect resumes from the last
// byte drawn: nothing lost, nothing twice.
import { Terminal } from "./vendor/xterm/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit/addon-fit.mjs";
import { Unicode11Addon } from "./vendor/addon-unicode11/addon-unicode11.mjs";

const SUBPROTOCOL = "tether.term.v1";
const ACK_EVERY = 16384;            // bytes drawn between acknowledgements (and when idle)
const TAKEN_OVER = 4000;            // another page attached to this session
const BACKOFF = { initial: 250, max: 10000 };
const TOKEN_KEY = "tether-term-token";
const SESSION_KEY = "tether-term-session:" + location.pathname;
const TOKEN_CHARS = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;  // can travel as a subprotocol

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();

const term = new Terminal({
  allowProposedApi: true,           // for the Unicode 11 widths (emoji are two cells)
  cursorBlink: true,
  scrollback: 10000,
  fontFamily: "ui-monospace, 'DejaVu Sans Mono', 'Menlo', 'Consolas', monospace",
  fontSize: 14,
  theme: { background: "#111111" },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.loadAddon(new Unicode11Addon());
term.unicode.activeVersion = "11";
term.open($("terminal"));
fit.fit();
term.focus();

let token = takeToken();
let session = sessionStorage.getItem(SESSION_KEY);
let ws = null;
let role = null;
let state = "connecting";
let everOpened = false;     // this page has been attached at least once
let opened = false;         // the current socket opened
let attempt = 0;
let ended = null;           // the exit message, once the program has ended
let drawnAny = false;       // output of `session` is on screen
let received = 0;           // offset after the last output byte handed to xterm.js
let processed = 0;          // offset after the last byte xterm.js has drawn
let acked = 0;              // offset last acknowledged
let pending = 0;            // writes handed to xterm.js and not yet drawn
let replayEnd = 0;          // input is dropped until the replayed output is drawn
let generation = 0;         // bumps when the screen starts over (another session)
let applyingSize = false;   // a size from the server, not the user's window
let reconnectTimer = null;

// For tests and the curious: the state of the page, read-only.
window.tetherTerm = {
  term,
  get state() { return state; },
  get role() { return role; },
  get session() { return session; },
  get received() { return received; },
  get processed() { return processed; },
  get ended() { return ended; },
  lines() {
    const buffer = term.buffer.active;
    const out = [];
    for (let i = 0; i < buffer.length; i++) out.push(buffer.getLine(i).translateToString(true));
    while (out.length && out[out.length - 1] === "") out.pop();
    return out;
  },
};

function takeToken() {
  // #token=… (never sent to any server) or ?token=…; taken out of the address bar and
  // kept in this tab's sessionStorage for reconnects and reloads.
  const url = new URL(location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  let found = null;
  if (fragment.has("token")) {
    found = fragment.get("token");
    fragment.delete("token");
    url.hash = fragment.toString();
  }
  if (url.searchParams.has("token")) {
    found = found ?? url.searchParams.get("token");
    url.searchParams.delete("token");
  }
  if (found !== null) {
    history.replaceState(null, "", url.pathname + url.search + url.hash);
    if (found) sessionStorage.setItem(TOKEN_KEY, found);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function socketUrl() {
  const url = new URL("ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  if (token && !TOKEN_CHARS.test(token)) url.searchParams.set("token", token);
  return url.href;
}

function setState(next, text) {
  state = next;
  const status = $("status");
  status.dataset.state = next;
  status.textContent = text || next;
  status.hidden = next === "online";
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function proposedSize() {
  const size = fit.proposeDimensions();
  if (size && size.cols > 0 && size.rows > 0) return { cols: size.cols, rows: size.rows };
  return { cols: term.cols, rows: term.rows };
}

function connect() {
  clearTimeout(reconnectTimer);
  setState(everOpened ? "reconnecting" : "connecting");
  const protocols = [SUBPROTOCOL];
  if (token && TOKEN_CHARS.test(token)) protocols.push("bearer." + token);
  opened = false;
  const socket = new WebSocket(socketUrl(), protocols);
  socket.binaryType = "arraybuffer";
  ws = socket;
  socket.onopen = () => {
    opened = true;
    const size = proposedSize();
    socket.send(JSON.stringify({
      type: "attach", session, since: drawnAny ? received : null, cols: size.cols, rows: size.rows,
    }));
  };
  socket.onmessage = (event) => {
    if (socket !== ws) return;
    if (typeof event.data === "string") control(JSON.parse(event.data));
    else output(new Uint8Array(event.data));
  };
  socket.onclose = (event) => { if (socket === ws) closed(event); };
}

function output(bytes) {
  const end = received + bytes.length;
  const mine = generation;
  received = end;
  pending += 1;
  drawnAny = true;
  term.write(bytes, () => {
    if (mine !== generation) return;
    pending -= 1;
    processed = Math.max(processed, end);
    acknowledge();
  });
}

function acknowledge() {
  if (processed - acked >= ACK_EVERY || (pending === 0 && processed > acked)) {
    acked = processed;
    send({ type: "ack", offset: processed });
  }
}

function startOver(offset, notice) {
  // The screen starts again from `offset` of the stream: a full reset (RIS) goes through
  // xterm.js's queue, after what is already there.
  generation += 1;
  pending = 0;
  received = processed = acked = offset;
  term.write("\x1bc" + (notice ? `\x1b[2m[${notice}]\x1b[0m\r\n` : ""));
}

function control(message) {
  switch (message.type) {
    case "attached": {
      const sameSession = message.session === session;
      if (!sameSession || !drawnAny || message.offset !== received) {
        if (sameSession && drawnAny && message.gap) {
          startOver(message.offset, "output lost while disconnected; showing what the server kept");
        } else if (drawnAny || !sameSession) {
          startOver(message.offset, sameSession || !session ? "" : "a new session");
        } else {
          received = processed = acked = message.offset;
        }
      }
      session = message.session;
      sessionStorage.setItem(SESSION_KEY, session);
      role = message.role;
      replayEnd = message.replay_end;
      everOpened = true;
      attempt = 0;
      document.body.classList.toggle("viewer", role === "viewer");
      setState(role === "viewer" ? "viewer" : "online", role === "viewer" ? "view only" : "");
      if (role === "writer") {
        const size = proposedSize();
        if (size.cols !== message.cols || size.rows !== message.rows) {
          applySize(message.cols, message.rows);
          fit.fit();
        } else {
          applySize(message.cols, message.rows);
        }
      } else {
        applySize(message.cols, message.rows);
      }
      break;
    }
    case "size":
      applySize(message.cols, message.rows);
      break;
    case "gap":
      startOver(message.offset, "output skipped: this page fell too far behind");
      replayEnd = message.replay_end;
      break;
    case "exit":
      ended = message;
      sessionStorage.removeItem(SESSION_KEY);
      break;
    case "error":
      console.warn("tether term:", message.message);
      break;
    default:
      break;
  }
}

function applySize(cols, rows) {
  if (cols === term.cols && rows === term.rows) return;
  applyingSize = true;
  try { term.resize(cols, rows); } finally { applyingSize = false; }
}

term.onResize(({ cols, rows }) => {
  if (!applyingSize && role === "writer") send({ type: "resize", cols, rows });
});

function sendInput(bytes) {
  if (!ws || ws.readyState !== WebSocket.OPEN || role !== "writer") return;
  if (processed < replayEnd) return;  // xterm.js answering queries in replayed output
  ws.send(bytes);
}

term.onData((data) => sendInput(encoder.encode(data)));
term.onBinary((data) => {
  const bytes = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 255;
  sendInput(bytes);
});

function closed(event) {
  ws = null;
  if (ended) {
    setState("closed", "ended");
    $("ended-text").textContent = `The program ended (${ended.description}).`;
    $("ended").hidden = false;
    $("restart").focus();
    return;
  }
  if (event.code === TAKEN_OVER) {
    setState("closed", "opened elsewhere");
    $("ended-text").textContent = "This terminal was opened in another tab or window.";
    $("restart").textContent = "Take it back";
    $("ended").hidden = false;
    return;
  }
  if (event.code === 1008 || event.code === 1011) {
    setState("closed", event.reason || "refused");
    $("ended-text").textContent = `The server refused: ${event.reason || event.code}.`;
    $("restart").textContent = "Try again";
    $("ended").hidden = false;
    return;
  }
  if (!opened && !everOpened) {
    // Refused before opening: most likely no token or a wrong one (a browser never learns
    // the HTTP status). Ask for it, and keep trying in the background.
    $("token-form").hidden = false;
    setState("closed", token ? "refused: check the token" : "token needed");
  }
  const delay = Math.min(BACKOFF.max, BACKOFF.initial * 2 ** attempt) * (0.5 + Math.random() / 2);
  attempt += 1;
  if (everOpened) setState("reconnecting");
  reconnectTimer = setTimeout(connect, delay);
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  $("token-form").hidden = true;
  attempt = 0;
  connect();
  term.focus();
});

$("restart").addEventListener("click", () => {
  $("ended").hidden = true;
  $("restart").textContent = "Start a new session";
  if (ended) {
    ended = null;
    session = null;
    drawnAny = false;
    startOver(0, "");
  }
  attempt = 0;
  connect();
  term.focus();
});

new ResizeObserver(() => {
  if (role !== "viewer") fit.fit();
}).observe($("terminal"));
window.addEventListener("online", () => {
  if (!ws && !ended && everOpened) { attempt = 0; connect(); }
});

connect();
