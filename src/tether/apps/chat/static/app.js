// The chat page: rooms are hub topics, the member list is the topic's presence, and
// TetherClient (tether.js) does the reconnecting and the resuming. Everything users type is
// put on the page with textContent, never as HTML.
//
// A server started with --token needs a token: from the page's URL (?token=… or #token=…,
// removed from the address bar at once) or the name dialog's field; it is remembered in this
// browser like the name. The name shown is the server's: the one picked here, unless the
// server's token file names the token's holder.
//
// A browser never learns why a WebSocket did not open (401 and "server down" look the same).
// When one closes without opening, the page asks the server's /auth-check, with the token it
// has in an Authorization header: 401 means the token is missing or refused, and the page
// asks for one (a server without /auth-check: the page guesses so after a few such closes
// while the server answers HTTP). The token is never logged or shown.
//
// Messages may be as long as the hub accepts: the server's welcome frame says how many bytes
// a publish frame may have; a counter shows the size near the limit, and a longer message is
// refused here, kept in the input, never cut.

import { TetherClient, isValidTopic } from "./tether.js";

const DEFAULT_ROOMS = ["general", "random", "help"];
const MAX_KEPT = 500;              // messages kept per room
const MAX_CUSTOM_ROOMS = 20;
const KEYS = {
  name: "tether.chat.name", room: "tether.chat.room", rooms: "tether.chat.rooms",
  token: "tether.chat.token",
};
const STATE_TEXT = {
  connecting: "connecting…",
  online: "online",
  reconnecting: "reconnecting…",
  closed: "offline",
  "token-needed": "token needed",
  "token-refused": "token refused",
};
const AUTH_CHECK = "/auth-check";
const GUESS_AFTER = 2;          // closes without open before guessing "token" without /auth-check
const LIMIT_SHOWN_FROM = 0.8;   // the size counter shows from this share of the limit on

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  roomTitle: $("room-title"),
  roomList: $("room-list"),
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  messages: $("messages"),
  composer: $("composer"),
  messageInput: $("message-input"),
  members: $("members"),
  memberList: $("member-list"),
  memberCount: $("member-count"),
  myName: $("my-name"),
  nameDialog: $("name-dialog"),
  nameForm: $("name-form"),
  nameInput: $("name-input"),
  tokenInput: $("token-input"),
  tokenPrompt: $("token-prompt"),
  tokenPromptText: $("token-prompt-text"),
  tokenPromptInput: $("token-prompt-input"),
  tokenPromptSubmit: $("token-prompt-submit"),
  messageLimit: $("message-limit"),
};

const storage = {
  get(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try { localStorage.setItem(key, value); } catch { /* private mode: not remembered */ }
  },
  remove(key) {
    try { localStorage.removeItem(key); } catch { /* nothing to forget */ }
  },
};

/** A token in the page's URL (?token=… or #token=…), taken out of the address bar. */
function takeTokenFromUrl() {
  const url = new URL(location.href);
  const fromQuery = url.searchParams.get("token");
  url.searchParams.delete("token");
  let fromHash = null;
  const parts = url.hash.slice(1).split("&"); // "#token=…", or "#room&token=…"
  const tokenPart = parts.find((part) => part.startsWith("token="));
  if (tokenPart !== undefined) {
    try {
      fromHash = decodeURIComponent(tokenPart.slice("token=".length).replace(/\+/g, " "));
    } catch {
      fromHash = ""; // a malformed %-escape: not a token we can use
    }
    url.hash = parts.filter((part) => part !== tokenPart).join("&");
  }
  const found = fromHash || fromQuery;
  if (fromQuery !== null || fromHash !== null) history.replaceState(null, "", url.toString());
  return found ? found.trim() : null;
}

const tokenInUrl = takeTokenFromUrl();
if (tokenInUrl) storage.set(KEYS.token, tokenInUrl);
let token = tokenInUrl || storage.get(KEYS.token) || "";
let picked = (storage.get(KEYS.name) || "").trim();  // the name chosen on this page
let me = picked;                                      // the name the server gave us
let client = null;
let current = null;             // the room on screen
const rooms = new Map();        // name -> {messages, seqs, pending, members, unread}
let nextLocalId = 1;
let authProblem = null;         // null, "needed" or "refused": why the socket does not open
let closesWithoutOpen = 0;      // in a row
let diagnosing = false;

// ---- rooms ------------------------------------------------------------------------------

function customRooms() {
  try {
    const list = JSON.parse(storage.get(KEYS.rooms) || "[]");
    return Array.isArray(list) ? list.filter(isValidTopic) : [];
  } catch {
    return [];
  }
}

function roomNames() {
  const names = [...DEFAULT_ROOMS];
  for (const name of [...customRooms(), ...rooms.keys()]) {
    if (!names.includes(name)) names.push(name);
  }
  return names;
}

function room(name) {
  let entry = rooms.get(name);
  if (!entry) {
    entry = { messages: [], seqs: new Set(), pending: [], members: [], memberTotal: 0,
      moreMembers: false, unread: 0 };
    rooms.set(name, entry);
  }
  return entry;
}

function rememberRoom(name) {
  if (DEFAULT_ROOMS.includes(name)) return;
  const list = customRooms().filter((r) => r !== name);
  list.unshift(name);
  storage.set(KEYS.rooms, JSON.stringify(list.slice(0, MAX_CUSTOM_ROOMS)));
}

function roomFromHash() {
  try {
    const name = decodeURIComponent(location.hash.slice(1));
    return isValidTopic(name) ? name : null;
  } catch {
    return null; // a malformed %-escape
  }
}

function switchRoom(name) {
  if (!isValidTopic(name)) return;
  current = name;
  rememberRoom(name);
  storage.set(KEYS.room, name);
  if (roomFromHash() !== name) {
    history.replaceState(null, "", `#${encodeURIComponent(name)}`);
  }
  room(name).unread = 0;
  client.subscribe(name); // joined rooms stay joined (and resumed) for the session
  document.title = `#${name} · tether chat`;
  ui.roomTitle.textContent = name;
  ui.messageInput.placeholder = `Message #${name}`;
  showLimit();
  document.body.classList.remove("show-rooms", "show-members");
  renderRooms();
  renderMessages();
  renderMembers();
}

// ---- rendering --------------------------------------------------------------------------

function renderRooms() {
  ui.roomList.replaceChildren();
  for (const name of roomNames()) {
    const li = document.createElement("li");
    li.dataset.testid = "room";
    li.dataset.room = name;
    if (name === current) li.setAttribute("aria-current", "true");
    const button = document.createElement("button");
    button.type = "button";
    const label = document.createElement("span");
    label.className = "room-name";
    label.textContent = name;
    button.append(label);
    const unread = rooms.get(name)?.unread || 0;
    if (unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.dataset.testid = "unread";
      badge.textContent = unread > 99 ? "99+" : String(unread);
      button.append(badge);
    }
    button.addEventListener("click", () => switchRoom(name));
    li.append(button);
    ui.roomList.append(li);
  }
}

function renderMessages() {
  const entry = room(current);
  const items = entry.messages.map(messageItem);
  for (const pending of entry.pending) items.push(pendingItem(pending));
  if (items.length === 0) items.push(emptyItem());
  ui.messages.replaceChildren(...items);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function emptyItem() {
  const li = document.createElement("li");
  li.className = "empty";
  li.textContent = "No messages yet. Say hello!";
  return li;
}

function textOf(data) {
  if (typeof data === "string") return data;
  if (data && typeof data.text === "string") return data.text;
  return JSON.stringify(data);
}

function formatTime(ms) {
  const date = new Date(typeof ms === "number" ? ms : Date.now());
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function bubble(sender, timeText, text) {
  const li = document.createElement("li");
  li.className = "message";
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "sender";
  who.textContent = sender;
  const when = document.createElement("time");
  when.textContent = timeText;
  meta.append(who, when);
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  li.append(meta, body);
  return li;
}

function messageItem(record) {
  if (record.notice) return noticeItem(record.notice);
  const sender = record.sender ?? "anonymous";
  const li = bubble(sender, formatTime(record.time), textOf(record.data));
  li.dataset.testid = "message";
  li.dataset.seq = String(record.seq);
  li.dataset.sender = sender;
  if (record.sender === me) li.classList.add("mine");
  if (typeof record.time === "number") {
    li.querySelector("time").dateTime = new Date(record.time).toISOString();
  }
  return li;
}

function noticeItem(text) {
  const li = document.createElement("li");
  li.className = "notice";
  li.dataset.testid = "notice";
  li.textContent = text;
  return li;
}

function pendingStatus(pending) {
  if (pending.status === "failed") return "";
  return client.state === "online" ? "sending…" : "waiting for the connection…";
}

function pendingItem(pending) {
  const li = bubble(me, pendingStatus(pending), pending.text);
  li.classList.add("mine", pending.status === "failed" ? "failed" : "pending");
  li.dataset.testid = "pending-message";
  li.dataset.localId = String(pending.localId);
  if (pending.status === "failed") li.title = pending.error || "not sent";
  return li;
}

function refreshPending() {
  for (const li of ui.messages.querySelectorAll("[data-testid=pending-message]")) {
    const pending = room(current).pending.find((p) => String(p.localId) === li.dataset.localId);
    if (pending) li.replaceWith(pendingItem(pending));
  }
}

function renderMembers() {
  const entry = room(current);
  const members = entry.members;
  const items = members.map((name) => {
    const li = document.createElement("li");
    li.dataset.testid = "member";
    li.dataset.name = name;
    li.textContent = name;
    if (name === me) li.classList.add("me-member");
    return li;
  });
  if (entry.moreMembers) {
    // A large room: the server sent the first names; the rest page in on demand.
    const li = document.createElement("li");
    li.className = "more-members";
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.testid = "more-members";
    button.textContent = `${(entry.memberTotal - members.length).toLocaleString("en")} more…`;
    button.onclick = () => client.loadMoreMembers(current);
    li.append(button);
    items.push(li);
  }
  ui.memberList.replaceChildren(...items);
  ui.memberCount.textContent = String(Math.max(entry.memberTotal ?? 0, members.length));
}

function nearBottom() {
  const list = ui.messages;
  return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
}

/** Append one record to a room, and to the screen when the room is on screen. */
function addRecord(name, record) {
  const entry = room(name);
  entry.messages.push(record);
  const dropped = entry.messages.length > MAX_KEPT ? entry.messages.shift() : null;
  if (name !== current) {
    if (!record.notice) {
      entry.unread += 1;
      renderRooms();
    }
    return;
  }
  const stick = nearBottom() || record.sender === me;
  ui.messages.querySelector(".empty")?.remove();
  if (dropped) ui.messages.querySelector("[data-testid=message], [data-testid=notice]")?.remove();
  const firstPending = ui.messages.querySelector("[data-testid=pending-message]");
  ui.messages.insertBefore(messageItem(record), firstPending);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function removePending(name, pending) {
  const entry = room(name);
  entry.pending = entry.pending.filter((p) => p !== pending);
  if (name === current) {
    ui.messages.querySelector(`[data-local-id="${pending.localId}"]`)?.remove();
  }
}

function showState(state, delay) {
  if (authProblem !== null && state !== "online") state = `token-${authProblem}`;
  ui.state.hidden = false;
  ui.state.dataset.state = state;
  ui.state.textContent = STATE_TEXT[state] || state;
  ui.state.title = state === "reconnecting" && delay !== undefined
    ? `next attempt in ${Math.ceil(delay / 1000)} s` : "";
  ui.members.classList.toggle("stale", state !== "online");
}

// ---- the connection ---------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new TetherClient(`${scheme}://${location.host}/ws`, {
    name: picked,
    token: token || undefined,
    backoff: { initial: 500, max: 10000 },
  });
  showState(client.state);

  client.addEventListener("statechange", (event) => {
    showState(event.detail.state, event.detail.delay);
    refreshPending();
  });

  client.addEventListener("open", () => {
    closesWithoutOpen = 0;
    hideTokenPrompt();
  });

  client.addEventListener("close", (event) => {
    if (event.detail.opened) return;
    closesWithoutOpen += 1;
    if (authProblem === null) diagnose();
  });

  client.addEventListener("subscribed", (event) => {
    const { topic, reset } = event.detail;
    if (reset) {
      // The server started this room's history over: its seqs begin again.
      room(topic).seqs.clear();
      addRecord(topic, { notice: "The server's history of this room was reset." });
    }
  });

  client.addEventListener("gap", (event) => {
    const { topic, from, to } = event.detail;
    const count = to - from + 1;
    addRecord(topic, {
      notice: `${count} older message${count === 1 ? " is" : "s are"} no longer available.`,
    });
  });

  client.addEventListener("message", (event) => {
    const message = event.detail;
    const entry = room(message.topic);
    if (entry.seqs.has(message.seq)) return;
    entry.seqs.add(message.seq);
    const mine = entry.pending.find((p) => p.seq === message.seq);
    if (mine) removePending(message.topic, mine);
    addRecord(message.topic, message);
  });

  client.addEventListener("presence", (event) => {
    const { topic, members, count, more } = event.detail;
    const entry = room(topic);
    entry.members = [...members];
    entry.memberTotal = Number.isInteger(count) ? count : members.length;
    entry.moreMembers = more === true;
    if (topic === current) renderMembers();
  });

  client.addEventListener("unsubscribed", (event) => {
    const { topic, reason } = event.detail;
    Object.assign(room(topic), { members: [], memberTotal: 0, moreMembers: false });
    if (topic === current) renderMembers();
    addRecord(topic, {
      notice: reason === "kicked"
        ? "An administrator removed you from this room. Select it again to rejoin."
        : "The server removed you from this room.",
    });
  });

  client.addEventListener("direct", (event) => {
    const data = event.detail.data;
    if (!data || data.chat !== "welcome") return;
    if (Number.isInteger(data.max_frame) && data.max_frame > 0) {
      client.maxFrame = data.max_frame; // the hub's limit: publish() refuses beyond it
      showLimit();
    }
    if (typeof data.name !== "string" || data.name === me) return;
    me = data.name; // the server's token file names us
    ui.myName.textContent = me;
    renderMessages();
    renderMembers();
  });

  client.addEventListener("error", (event) => {
    if (event.detail.source === "server") console.warn("tether chat:", event.detail);
  });
}

function send(text) {
  const name = current;
  const pending = { localId: nextLocalId++, text, status: "sending", seq: null };
  const entry = room(name);
  entry.pending.push(pending);
  if (name === current) {
    ui.messages.querySelector(".empty")?.remove();
    ui.messages.append(pendingItem(pending));
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }
  client.publish(name, { text }).then(
    (ack) => {
      pending.seq = ack.seq;
      // The message itself may have arrived before its ack.
      if (entry.seqs.has(ack.seq)) removePending(name, pending);
    },
    (error) => {
      pending.status = "failed";
      pending.error = error.message;
      if (name === current) refreshPending();
    },
  );
}

// ---- the token ----------------------------------------------------------------------------

/** What the server's /auth-check says of `candidate` (null: no token): "ok", "refused",
 * "unknown" (no /auth-check there, or a token no header can carry) or "unreachable". */
async function checkToken(candidate) {
  const headers = new Headers();
  try {
    if (candidate) headers.set("Authorization", `Bearer ${candidate}`);
  } catch {
    return "unknown"; // characters a header cannot hold: the socket alone will tell
  }
  let response;
  try {
    response = await fetch(AUTH_CHECK, { headers, cache: "no-store" });
  } catch {
    return "unreachable";
  }
  if (response.ok) return "ok";
  return response.status === 401 ? "refused" : "unknown";
}

/** A socket closed without opening: find out whether the token is the reason. */
async function diagnose() {
  if (diagnosing) return;
  diagnosing = true;
  try {
    const verdict = await checkToken(token);
    if (client.state === "online" || authProblem !== null) return;
    const problem = token ? "refused" : "needed";
    if (verdict === "refused") {
      showTokenPrompt(problem, false);
    } else if (verdict === "unknown" && closesWithoutOpen >= GUESS_AFTER) {
      showTokenPrompt(problem, true);
    }
  } finally {
    diagnosing = false;
  }
}

/** Ask for a token: none was given (`problem` "needed"), or the one given was ("refused").
 * `guessed`: the server has no /auth-check, so this is the likely reason, not a sure one. */
function showTokenPrompt(problem, guessed) {
  authProblem = problem;
  let text;
  if (authProblem === "needed") {
    text = guessed
      ? "The server refuses the connection: it probably needs an access token. Enter it to connect."
      : "This server needs an access token. Enter it to connect.";
  } else {
    text = guessed
      ? "Token refused, it seems: the server refuses the connection. Check the token and try again."
      : "Token refused: the server does not accept this token. Check it and try again.";
  }
  ui.tokenPromptText.textContent = text;
  ui.tokenPrompt.dataset.problem = authProblem;
  ui.tokenPrompt.hidden = false;
  showState(client.state);
  ui.tokenPromptInput.focus();
}

function hideTokenPrompt() {
  authProblem = null;
  ui.tokenPrompt.hidden = true;
  ui.tokenPromptText.textContent = "";
  delete ui.tokenPrompt.dataset.problem;
}

ui.tokenPrompt.addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = ui.tokenPromptInput.value.trim();
  if (!candidate) {
    ui.tokenPromptInput.focus();
    return;
  }
  ui.tokenPromptSubmit.disabled = true;
  let verdict;
  try {
    verdict = await checkToken(candidate);
  } finally {
    ui.tokenPromptSubmit.disabled = false;
  }
  if (verdict === "refused") {
    showTokenPrompt("refused", false); // at once; the token in use stays what it was
    ui.tokenPromptInput.select();
    return;
  }
  token = candidate;
  storage.set(KEYS.token, token);
  ui.tokenPromptInput.value = "";
  hideTokenPrompt();
  closesWithoutOpen = 0;
  showState(client.state);
  client.setToken(token);
  ui.messageInput.focus();
});

// ---- the size of a message ----------------------------------------------------------------

/** Whether the message in the input may be sent; shows its size near the hub's limit and
 * an error beyond it. */
function showLimit() {
  const text = ui.messageInput.value.trim();
  const limit = client?.maxFrame;
  if (!limit || !text || !current) {
    ui.messageLimit.hidden = true;
    return true;
  }
  const size = client.publishSize(current, { text });
  const over = size > limit;
  const number = (n) => n.toLocaleString("en-US");
  ui.messageLimit.hidden = !over && size < limit * LIMIT_SHOWN_FROM;
  ui.messageLimit.classList.toggle("over", over);
  ui.messageLimit.textContent = over
    ? `Too long to send: ${number(size)} bytes, the limit is ${number(limit)}.`
    : `${number(size)} / ${number(limit)} bytes`;
  return !over;
}

ui.messageInput.addEventListener("input", showLimit);

// ---- the name ---------------------------------------------------------------------------

function askName(canCancel) {
  ui.nameInput.value = picked;
  ui.tokenInput.value = token;
  ui.nameDialog.dataset.cancelable = canCancel ? "yes" : "no";
  ui.nameDialog.showModal();
  ui.nameInput.focus();
}

ui.nameDialog.addEventListener("cancel", (event) => {
  if (ui.nameDialog.dataset.cancelable !== "yes") event.preventDefault();
});

ui.nameForm.addEventListener("submit", (event) => {
  const name = ui.nameInput.value.trim();
  if (!name) {
    event.preventDefault();
    return;
  }
  const newToken = ui.tokenInput.value.trim();
  const changed = client !== null && (name !== picked || newToken !== token);
  picked = me = name;
  token = newToken;
  storage.set(KEYS.name, name);
  if (token) storage.set(KEYS.token, token);
  else storage.remove(KEYS.token);
  if (changed) {
    location.reload(); // a new name is a new member: start afresh
  } else if (client === null) {
    start();
  }
});

$("change-name").addEventListener("click", () => askName(true));

// ---- the rest of the page ---------------------------------------------------------------

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.messageInput.value.trim();
  if (!text || !client) return;
  if (!showLimit()) {
    ui.messageInput.focus(); // too long: kept as typed, with the error above it
    return;
  }
  ui.messageInput.value = "";
  showLimit();
  send(text);
});

ui.roomForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.roomInput.value.trim();
  if (!isValidTopic(name)) {
    ui.roomInput.setCustomValidity("letters, digits and - _ . : only");
    ui.roomInput.reportValidity();
    return;
  }
  ui.roomInput.value = "";
  switchRoom(name);
});
ui.roomInput.addEventListener("input", () => ui.roomInput.setCustomValidity(""));

$("rooms-toggle").addEventListener("click", () => {
  document.body.classList.remove("show-members");
  const open = document.body.classList.toggle("show-rooms");
  $("rooms-toggle").setAttribute("aria-expanded", String(open));
});
$("members-toggle").addEventListener("click", () => {
  document.body.classList.remove("show-rooms");
  const open = document.body.classList.toggle("show-members");
  $("members-toggle").setAttribute("aria-expanded", String(open));
});
document.querySelector(".chat").addEventListener("click", () => {
  document.body.classList.remove("show-rooms", "show-members");
});

window.addEventListener("hashchange", () => {
  const name = roomFromHash();
  if (name && name !== current && client) switchRoom(name);
});

function start() {
  ui.myName.textContent = me;
  connect();
  switchRoom([roomFromHash(), storage.get(KEYS.room)].find(isValidTopic) || DEFAULT_ROOMS[0]);
  ui.messageInput.focus();
}

if (picked) start();
else askName(false);
