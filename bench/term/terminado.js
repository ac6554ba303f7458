// A minimal client for terminado (like the demos in terminado's repository), for
// bench/term.py. The terminal is set up exactly as tether term's page sets up its own
// (same xterm.js build, options, addons and layout), so the two pages differ only in the
// protocol: terminado sends JSON text frames ["stdout", text] as it reads the PTY, with no
// flow control; the page sends ["stdin", text] and ["set_size", rows, cols].
import { Terminal } from "./vendor/xterm/xterm.mjs";
import { FitAddon } from "./vendor/addon-fit/addon-fit.mjs";
import { Unicode11Addon } from "./vendor/addon-unicode11/addon-unicode11.mjs";

const term = new Terminal({
  allowProposedApi: true,
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
const element = document.getElementById("terminal");
term.open(element);
fit.fit();
term.focus();

const url = new URL("websocket", location.href);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(url.href);
window.benchTerm = term;
window.benchSocket = ws;

function sendSize() {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(["set_size", term.rows, term.cols]));
}

ws.onopen = sendSize;
ws.onmessage = (event) => {
  const message = JSON.parse(event.data);
  if (message[0] === "stdout") term.write(message[1]);
  else if (message[0] === "disconnect") term.write("\r\n[disconnected]\r\n");
};
ws.onclose = () => term.write("\r\n[connection closed]\r\n");
term.onData((data) => {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(["stdin", data]));
});
term.onResize(sendSize);
new ResizeObserver(() => fit.fit()).observe(element);
