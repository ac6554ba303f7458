// The admin page: samples pushed by the server over /admin/ws (see server.py for the
// protocol). The token comes from the address (#token=..., removed at once), the tab's
// sessionStorage, or the form; it goes to the server as a "bearer.TOKEN" subprotocol (next to
// the one the server selects), never in a URL, and is never shown.

const KEY = "tether.admin.token";
const $ = (id) => document.getElementById(id);
let socket = null;
let history = [];
let interval = 1;
let readonly = true;
let opened = false;
let failures = 0;
let refs = 0;

function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const fromHash = hash.get("token");
  if (fromHash) {
    sessionStorage.setItem(KEY, fromHash);
    history_replace();
  }
  return sessionStorage.getItem(KEY);
}

function history_replace() {
  window.history.replaceState(null, "", location.pathname + location.search);
}

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (kind || "");
}

function askToken(message) {
  if (socket) socket.close();
  socket = null;
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-message").textContent = message;
  $("token").focus();
  status("no token", "bad");
}

function connect() {
  const token = takeToken();
  if (!token) {
    askToken("This page needs the admin token (--admin-token).");
    return;
  }
  const url = new URL(document.body.dataset.base + "/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  opened = false;
  socket = new WebSocket(url, ["tether.admin.v1", "bearer." + token]);
  socket.onopen = () => {
    opened = true;
    failures = 0;
    status("live", "ok");
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
  socket.onclose = (event) => closed(event, token);
}

async function closed(event, token) {
  socket = null;
  if (!opened) {
    // The browser hides the 401 of a refused handshake: ask the page's own route.
    try {
      const probe = await fetch(location.pathname, {
        method: "HEAD", headers: { Authorization: "Bearer " + token }, cache: "no-store",
      });
      if (probe.status === 401) {
        sessionStorage.removeItem(KEY);
        askToken("That token was refused.");
        return;
      }
    } catch (_) { /* the server is unreachable: retry below */ }
  }
  failures += 1;
  const wait = Math.min(10000, 500 * 2 ** Math.min(failures, 5));
  status(`disconnected (${event.code}); retrying…`, "bad");
  setTimeout(connect, wait);
}

function receive(message) {
  if (message.type === "hello") {
    readonly = message.readonly;
    interval = message.interval;
    history = message.history || [];
    document.body.classList.toggle("readonly", readonly);
    $("mode").hidden = !readonly;
    $("hub").hidden = !message.hub;
    $("login").hidden = true;
    $("main").hidden = false;
    if (message.stats) render(message.stats, false);
  } else if (message.type === "stats") {
    render(message, true);
  } else if (message.type === "result") {
    const el = $("result");
    el.textContent = message.ok ? message.done : "refused: " + message.error;
    el.className = "result " + (message.ok ? "" : "bad");
  }
}

function render(stats, append) {
  if (append) {
    history.push(stats.point);
    const keep = Math.max(1, Math.round(600 / interval));
    if (history.length > keep) history.splice(0, history.length - keep);
  }
  const [, , msgIn, msgOut, bytesIn, bytesOut] = stats.point;
  $("connections").textContent = fmt(stats.connections);
  $("opening").textContent = fmt(stats.opening);
  $("upgraded").textContent = fmt(stats.totals.upgraded);
  $("msg-in").textContent = fmt(msgIn);
  $("msg-out").textContent = fmt(msgOut);
  $("total-in").textContent = fmt(stats.totals.messages_in);
  $("total-out").textContent = fmt(stats.totals.messages_out);
  $("bytes-in").textContent = bytes(bytesIn);
  $("bytes-out").textContent = bytes(bytesOut);
  $("window").textContent = Math.max(1, Math.round(history.length * interval / 60));
  chart("chart-connections", [1]);
  chart("chart-messages", [2, 3]);
  chart("chart-bytes", [4, 5]);
  counts("refusals", stats.refusals);
  counts("closes", stats.closes);
  counts("slow", stats.slow_consumers);
  slowest(stats.slowest);
  if (stats.topics) topics(stats.topics);
}

function chart(id, columns) {
  const svg = $(id);
  const n = history.length;
  let max = 1;
  for (const point of history) for (const c of columns) max = Math.max(max, point[c]);
  svg.replaceChildren(...columns.map((c, i) => {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", i ? "b" : "a");
    line.setAttribute("points", history.map((point, x) =>
      `${n > 1 ? (x * 300) / (n - 1) : 0},${58 - (point[c] / max) * 56}`).join(" "));
    return line;
  }));
  svg.setAttribute("aria-label", `max ${fmt(max)}`);
}

function counts(id, table) {
  const rows = Object.entries(table || {}).sort((a, b) => b[1] - a[1]);
  $(id).tBodies[0].replaceChildren(...rows.map(([key, n]) => row([key, fmt(n)])));
}

function slowest(list) {
  $("slowest").tBodies[0].replaceChildren(...list.map((c) => {
    const tr = row([c.id, c.remote + (c.admin ? " (this page)" : ""), c.route, c.user ?? "–",
      bytes(c.buffered), `${c.age}s`, fmt(c.in), fmt(c.out)]);
    const td = document.createElement("td");
    td.dataset.action = "";
    const button = document.createElement("button");
    button.textContent = "disconnect";
    button.dataset.id = c.id;
    button.onclick = () => act({
      type: "disconnect", id: c.id,
      code: Number($("close-code").value), reason: $("close-reason").value,
    });
    td.append(button);
    tr.append(td);
    return tr;
  }));
}

function topics(list) {
  $("topics").tBodies[0].replaceChildren(...list.map((t) => {
    const tr = row([t.topic, fmt(t.subscribers), fmt(t.publish_rate)]);
    const td = document.createElement("td");
    for (const member of t.members) {
      const span = document.createElement("span");
      span.className = "member";
      span.textContent = member;
      const kick = document.createElement("button");
      kick.textContent = "kick";
      kick.dataset.action = "";
      kick.title = `remove ${member} from ${t.topic}`;
      kick.onclick = () => act({ type: "kick", topic: t.topic, member });
      span.append(kick);
      td.append(span);
    }
    tr.append(td);
    return tr;
  }));
}

function act(request) {
  if (readonly || !socket || socket.readyState !== WebSocket.OPEN) return;
  refs += 1;
  socket.send(JSON.stringify({ ...request, ref: refs }));
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    td.textContent = String(cell);
    tr.append(td);
  }
  return tr;
}

function fmt(n) {
  return Number(n).toLocaleString("en", { maximumFractionDigits: 1 });
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) return;
  sessionStorage.setItem(KEY, token);
  $("login").hidden = true;
  connect();
});

connect();
