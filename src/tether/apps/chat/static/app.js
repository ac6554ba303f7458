// The chat page: rooms are hub topics, the member list is the topic's presence, and
// TetherClient (tether.js) does the reconnecting and the resuming. Everything users type is
// put on the page with textContent, never as HTML.
//
// A server started with --token needs a token: from the page's URL (?token=… or #token=…,
// removed from the address bar at once) or the name dialog's field; it is remembered in this
// browser like the name. The name shown is the server's: the one picked here, unless the
// server's token file names the token's holder.

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
};

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
    entry = { messages: [], seqs: new Set(), pending: [], members: [], unread: 0 };
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
  const members = room(current).members;
  ui.memberList.replaceChildren(
    ...members.map((name) => {
      const li = document.createElement("li");
      li.dataset.testid = "member";
      li.dataset.name = name;
      li.textContent = name;
      if (name === me) li.classList.add("me-member");
      return li;
    }),
  );
  ui.memberCount.textContent = String(members.length);
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
    const { topic, members } = event.detail;
    room(topic).members = [...members];
    if (topic === current) renderMembers();
  });

  client.addEventListener("direct", (event) => {
    const data = event.detail.data;
    if (!data || data.chat !== "welcome" || typeof data.name !== "string") return;
    if (data.name === me) return;
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
  ui.messageInput.value = "";
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
