/**
 * tether.js: a small browser client for tether's hub protocol (docs/hub-protocol.md).
 * An ES module with no dependencies and no build step.
 *
 * A WebSocket that reconnects by itself (exponential backoff with full jitter, capped), and
 * topics that resume where they left off: after every reconnect each topic is subscribed
 * again with the highest `seq` seen and its `epoch`, so no message is lost and none is shown
 * twice. Publishes made while offline wait in a bounded queue and go out on reconnect.
 *
 * @example
 * import { TetherClient } from "/tether.js";
 *
 * const scheme = location.protocol === "https:" ? "wss" : "ws";
 * const client = new TetherClient(`${scheme}://${location.host}/ws`, {
 *   name: "alice",                        // sent as ?name=alice
 *   token: "s3cret",                      // sent as ?token=…, or tokenIn: "subprotocol"
 *   backoff: { initial: 500, max: 15000 } // milliseconds
 * });
 * client.addEventListener("statechange", (e) => console.log(e.detail.state));
 * client.addEventListener("message", (e) => {
 *   const { topic, seq, data, sender, time } = e.detail;
 *   console.log(`#${topic} ${seq} ${sender}: ${JSON.stringify(data)}`);
 * });
 * client.addEventListener("presence", (e) => console.log(e.detail.topic, e.detail.members));
 * client.subscribe("general");
 * const ack = await client.publish("general", { text: "hello" }); // { id, topic, seq }
 *
 * Events (all are CustomEvents; what they carry is in `event.detail`):
 * - "statechange" {state, previous, delay}: `state` is "connecting" | "online" |
 *   "reconnecting" | "closed"; `delay` is the wait in ms before the next attempt.
 * - "open" {url, protocol}, "close" {code, reason, wasClean, opened}: the browser
 *   WebSocket's own; `opened` is false for a socket that closed without ever opening (the
 *   server refused the upgrade, e.g. 401 for a missing token, or could not be reached: a
 *   browser is not told which).
 * - "rawmessage" {data}: every frame as received (the browser WebSocket's "message" event,
 *   renamed because "message" means a topic message here).
 * - "message" {topic, seq, epoch, data, sender, time}: a topic message, in seq order, once.
 * - "subscribed" {topic, epoch, seq, replayed, gap, first, resumed, reset}: `resumed` when
 *   the subscription continued from a known seq; `reset` when the server's history for the
 *   topic was reset (new epoch): seqs start over and what follows is new. `retracted`
 *   [from, to] (with `reset`): messages this client saw that a Redis failover lost.
 * - "presence" {topic, members, count, more, joined, left}: members is the whole list known
 *   here (sorted), kept from the server's snapshot and changes; joined and left are the
 *   names of this change (empty for a snapshot).
 * - "gap" {topic, from, to}: messages from..to (inclusive) are lost to this client: too old
 *   for the server's history when it resumed. (Messages the server skipped for a slow client
 *   come back from the history first: only those it no longer has make a "gap".)
 * - "direct" {data, sender, time}: a message from the server to this connection alone.
 * - "error" {source: "socket"} for the browser WebSocket's error event, or
 *   {source: "server", code, message, id} for an `error` frame from the hub.
 *
 * Delivery: a publish that was sent but not yet acknowledged when the connection dropped is
 * sent again after the reconnect, with the same id; the hub answers the repeat with its first
 * ack rather than storing it twice (docs/hub-protocol.md, "Resending a publish").
 *
 * Size: a publish larger than the hub accepts fails with code "too_big" and is never sent
 * again. With `maxFrame` known (an option, or set later), `publish()` refuses it before
 * sending; `publishSize()` tells what a publish would weigh. Otherwise the hub's `too_big`
 * error fails it: the hub echoes its `id` (tether.js puts `id` right after `type`, where the
 * hub finds it without parsing the frame); an older hub's error without `id` fails the oldest
 * publish still waiting for its answer (the hub answers a connection's requests in order).
 * A server closing with 1009 (past its WebSocket message limit) fails the largest publish
 * that was waiting for an answer.
 *
 * Slow-subscriber "drop" policy: after the hub's `gap` notice the client asks for the topic
 * again from the last seq it has, holds the live messages that arrive meanwhile, and emits
 * them with the replay, in seq order, each once.
 *
 * The token never appears in what the client emits (`this.url`, the "open" event, errors).
 * Sent as a query parameter it is part of the URL the browser opens, so the browser's own
 * console may show it on a failed attempt; as a subprotocol it is not.
 */

const TOPIC_PATTERN = /^[A-Za-z0-9\-_.:/]{1,128}$/;
// RFC 7230 token characters: what a subprotocol may hold.
const SUBPROTOCOL_PATTERN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const TOKEN_SUBPROTOCOL_PREFIX = "bearer.";

/** Whether `topic` is a valid hub topic name (1-128 letters, digits, `-_.:/`). */
export function isValidTopic(topic) {
  return typeof topic === "string" && TOPIC_PATTERN.test(topic);
}

/** An Error with the hub's error `code` ("not_subscribed", "queue_full", "closed", ...). */
/** Names in the server's order (it sorts by code point; close enough for UTF-16 here). */
const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

export class TetherError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "TetherError";
    this.code = code;
  }
}

export class TetherClient extends EventTarget {
  /**
   * @param {string} url ws:// or wss:// URL, or a path such as "/ws" (same host as the page).
   * @param {object} [options]
   * @param {string} [options.name] member name, sent as the `name` query parameter.
   * @param {string} [options.token] a bearer token for a server that requires one.
   * @param {"query"|"subprotocol"} [options.tokenIn] how the token is sent: as the `token`
   *   query parameter (default), or offered as the subprotocol `bearer.TOKEN` (which the
   *   server never selects; the token must then be made of RFC 7230 token characters).
   * @param {string|string[]} [options.protocols] WebSocket subprotocols.
   * @param {{initial?: number, max?: number}} [options.backoff] reconnect delays in ms:
   *   attempt n waits a random time in [0, min(max, initial * 2^n)] (full jitter).
   * @param {number} [options.queueLimit] most publishes waiting while offline (default 100).
   * @param {number} [options.maxFrame] the hub's frame limit in bytes (UTF-8 of the whole
   *   publish frame), when known: larger publishes are refused at once with "too_big". Also a
   *   plain property, for a limit learned later (the chat's welcome frame carries it).
   * @param {number} [options.openTimeout] ms to wait for a connection to open (default 10000).
   * @param {number} [options.pingInterval] ms between application pings that find a dead
   *   connection (default 25000; 0 turns them off).
   * @param {number} [options.pingTimeout] ms of silence after a ping before the connection is
   *   given up and reopened (default 10000).
   * @param {number} [options.recoverTimeout] ms to wait for the replay that fills a `gap`
   *   notice before the connection is given up and reopened (default 10000).
   * @throws {TetherError} "bad_token": tokenIn is "subprotocol" and the token cannot be one.
   */
  constructor(url, options = {}) {
    super();
    this.url = buildUrl(url, options.name);  // never holds the token
    this.name = options.name ?? null;
    this.tokenIn = options.tokenIn ?? "query";
    if (this.tokenIn !== "query" && this.tokenIn !== "subprotocol") {
      throw new TetherError("bad_option", 'tokenIn is "query" or "subprotocol"');
    }
    if (options.token && this.tokenIn === "subprotocol"
        && !SUBPROTOCOL_PATTERN.test(options.token)) {
      throw new TetherError("bad_token", "this token cannot be sent as a subprotocol");
    }
    this.setTokenProperty(options.token);
    this.protocols = options.protocols;
    this.backoff = { initial: 500, max: 15000, ...(options.backoff || {}) };
    this.queueLimit = options.queueLimit ?? 100;
    this.maxFrame = options.maxFrame ?? null;
    this.openTimeout = options.openTimeout ?? 10000;
    this.pingInterval = options.pingInterval ?? 25000;
    this.pingTimeout = options.pingTimeout ?? 10000;
    this.recoverTimeout = options.recoverTimeout ?? 10000;

    this.state = "connecting";
    this.socket = null;
    this.attempt = 0;           // failed attempts since the last successful open
    this.topics = new Map();    // topic -> {since, epoch, recovery}
    this.pending = new Map();   // publish id -> {frame, size, resolve, reject, sent}
    this.nextId = 1;
    this.idPrefix = randomId(); // makes this client's publish ids its own (idempotent resend)
    this.retryTimer = null;
    this.openTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;

    this.onBrowserOnline = () => this.reconnectNow();
    if (typeof window !== "undefined") window.addEventListener("online", this.onBrowserOnline);
    this.open();
  }

  // ---- public API -------------------------------------------------------------------------

  /** Join `topic` (nothing happens if it is joined already); it is subscribed again, from
   * where it left off, after every reconnect. */
  subscribe(topic) {
    if (!isValidTopic(topic)) throw new TetherError("bad_topic", `invalid topic ${topic}`);
    if (this.topics.has(topic)) return;
    this.topics.set(topic, { since: null, epoch: null, recovery: null });
    if (this.state === "online") this.sendSubscribe(topic);
  }

  /** Leave `topic`; its queued publishes are rejected. */
  unsubscribe(topic) {
    if (!this.forget(topic)) return;
    if (this.state === "online") this.send({ type: "unsubscribe", topic });
  }

  /** Drop `topic` from the subscriptions (not resubscribed after a reconnect) and reject
   * its queued publishes; whether it was subscribed. */
  forget(topic) {
    const entry = this.topics.get(topic);
    if (!entry) return false;
    this.endRecovery(entry);
    this.topics.delete(topic);
    for (const [id, entry] of this.pending) {
      if (entry.frame.topic === topic && !entry.sent) {
        this.pending.delete(id);
        entry.reject(new TetherError("not_subscribed", `unsubscribed from ${topic}`));
      }
    }
    return true;
  }

  /** The topics joined, in the order they were joined. */
  subscriptions() {
    return [...this.topics.keys()];
  }

  /**
   * Publish `data` (any JSON value) to `topic`, which must be subscribed.
   * @returns {Promise<{id: string, topic: string, seq: number}>} resolved by the server's ack;
   *   rejected with a TetherError (the hub's error code, "too_big", "bad_data" for what JSON
   *   cannot hold, "queue_full" or "closed").
   */
  publish(topic, data) {
    if (this.state === "closed") {
      return Promise.reject(new TetherError("closed", "the client is closed"));
    }
    const waiting = [...this.pending.values()].filter((entry) => !entry.sent).length;
    if (this.state !== "online" && waiting >= this.queueLimit) {
      return Promise.reject(new TetherError("queue_full", "too many messages waiting to be sent"));
    }
    const frame = this.publishFrame(topic, data, `${this.idPrefix}-${this.nextId}`);
    let size;
    try {
      size = utf8Length(JSON.stringify(frame));
    } catch (error) {
      return Promise.reject(new TetherError("bad_data", `not a JSON value: ${error.message}`));
    }
    if (this.maxFrame && size > this.maxFrame) {
      return Promise.reject(tooBig(size, this.maxFrame));
    }
    this.nextId += 1;
    return new Promise((resolve, reject) => {
      const entry = { frame, size, resolve, reject, sent: false };
      this.pending.set(frame.id, entry);
      if (this.state === "online") this.sendPublish(entry);
    });
  }

  /** The size in bytes (UTF-8) of the frame `publish(topic, data)` would send now: what the
   * hub compares with its limit (`maxFrame`). */
  publishSize(topic, data) {
    const frame = this.publishFrame(topic, data, `${this.idPrefix}-${this.nextId}`);
    return utf8Length(JSON.stringify(frame));
  }

  /** Use `token` (null: none) from the next connection attempt on, and make that attempt now
   * if the client is waiting to reconnect: for a token the user typed after a refusal. */
  setToken(token) {
    if (token && this.tokenIn === "subprotocol" && !SUBPROTOCOL_PATTERN.test(token)) {
      throw new TetherError("bad_token", "this token cannot be sent as a subprotocol");
    }
    this.setTokenProperty(token);
    this.attempt = 0;
    this.reconnectNow();
  }

  /** Skip the backoff wait and try to connect now (when reconnecting and not already
   * trying). */
  reconnectNow() {
    if (this.state !== "reconnecting" || this.socket !== null) return;
    clearTimeout(this.retryTimer);
    this.open();
  }

  /** Close for good: no more reconnects; publishes not yet acknowledged are rejected. */
  close(code = 1000, reason = "") {
    if (this.state === "closed") return;
    clearTimeout(this.retryTimer);
    if (typeof window !== "undefined") window.removeEventListener("online", this.onBrowserOnline);
    const socket = this.socket;
    this.dropSocket();
    if (socket) socket.close(code, reason);
    this.setState("closed");
    for (const entry of this.pending.values()) {
      entry.reject(new TetherError("closed", "the client was closed"));
    }
    this.pending.clear();
  }

  // ---- connection -------------------------------------------------------------------------

  open() {
    // The state stays "connecting" until the first open, then "reconnecting" between opens.
    let socket;
    try {
      socket = new WebSocket(this.socketUrl(), this.socketProtocols());
    } catch (error) {
      // A malformed URL: retrying will not help, but keep the same path as any failure.
      this.emit("error", { source: "socket", message: this.redact(String(error)) });
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.handleOpen(socket);
    socket.onmessage = (event) => this.handleFrame(event.data);
    socket.onerror = () => this.emit("error", { source: "socket" });
    socket.onclose = (event) => this.handleClose(event);
    this.openTimer = setTimeout(() => {
      // Still not open: give this attempt up.
      if (this.socket === socket) this.lose(socket);
    }, this.openTimeout);
  }

  handleOpen(socket) {
    clearTimeout(this.openTimer);
    this.attempt = 0;
    this.emit("open", { url: this.url, protocol: socket.protocol });
    this.setState("online");
    this.startHeartbeat();
    // Subscriptions first: a publish needs its topic subscribed.
    for (const topic of this.topics.keys()) this.sendSubscribe(topic);
    for (const entry of this.pending.values()) this.sendPublish(entry);
  }

  handleClose(event) {
    const opened = this.state === "online";
    const { code, reason, wasClean } = event;
    this.emit("close", { code, reason, wasClean, opened });
    if (this.state === "closed") return;
    if (code === 1009) this.failLargestSent(); // RFC 6455 §7.4.1: a message too big
    this.dropSocket();
    this.scheduleReconnect();
  }

  /** Give up `socket` without waiting for its closing handshake, then reconnect. */
  lose(socket) {
    const opened = this.state === "online";
    this.dropSocket();
    socket.close();
    this.emit("close", { code: 1006, reason: "no answer", wasClean: false, opened });
    this.scheduleReconnect();
  }

  /** The server closed the connection for a message over its limit: the largest publish
   * sent and not answered is the one; it fails instead of going again after the reconnect. */
  failLargestSent() {
    let largest = null;
    for (const [id, entry] of this.pending) {
      if (entry.sent && (largest === null || entry.size > largest[1].size)) largest = [id, entry];
    }
    if (largest === null) return;
    this.pending.delete(largest[0]);
    largest[1].reject(new TetherError("too_big",
      `a message of ${largest[1].size} bytes is over the server's limit`));
  }

  /** Detach the current socket: no more events from it. */
  dropSocket() {
    clearTimeout(this.openTimer);
    this.stopHeartbeat();
    if (this.socket) {
      this.socket.onopen = this.socket.onmessage = this.socket.onerror = null;
      this.socket.onclose = null;
      this.socket = null;
    }
    // Whatever was sent and not acknowledged goes again on the next connection.
    for (const entry of this.pending.values()) entry.sent = false;
    // Held messages are dropped: the resume on the next connection asks for them again.
    for (const topic of this.topics.values()) this.endRecovery(topic);
  }

  /** The URL to open: `this.url` with the token when it goes in the query. */
  socketUrl() {
    if (!this.token || this.tokenIn !== "query") return this.url;
    const url = new URL(this.url);
    url.searchParams.set("token", this.token);
    return url.toString();
  }

  /** The subprotocols to offer: the application's, then the token's when it goes there. */
  socketProtocols() {
    if (!this.token || this.tokenIn !== "subprotocol") return this.protocols;
    const offered = this.protocols === undefined ? [] : [].concat(this.protocols);
    return [...offered, TOKEN_SUBPROTOCOL_PREFIX + this.token];
  }

  /** `text` without the token, for what the client emits. */
  redact(text) {
    if (!this.token) return text;
    let result = text;
    for (const form of new Set([this.token, encodeURIComponent(this.token),
      new URLSearchParams({ t: this.token }).toString().slice(2)])) {
      result = result.split(form).join("***");
    }
    return result;
  }

  scheduleReconnect() {
    const ceiling = Math.min(this.backoff.max, this.backoff.initial * 2 ** this.attempt);
    const delay = Math.round(Math.random() * ceiling); // full jitter
    this.attempt += 1;
    this.setState("reconnecting", delay);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  startHeartbeat() {
    if (!this.pingInterval) return;
    this.pingTimer = setInterval(() => {
      this.send({ type: "ping" });
      if (this.pongTimer === null) {
        const socket = this.socket;
        this.pongTimer = setTimeout(() => {
          if (this.socket === socket) this.lose(socket);
        }, this.pingTimeout);
      }
    }, this.pingInterval);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
  }

  // ---- frames -----------------------------------------------------------------------------

  send(frame) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  sendSubscribe(topic) {
    const { since, epoch } = this.topics.get(topic);
    const frame = { type: "subscribe", topic };
    if (since !== null && epoch !== null) {
      frame.since = since;
      frame.epoch = epoch;
    }
    this.send(frame);
  }

  sendPublish(entry) {
    if (!entry.sent && this.send(entry.frame)) entry.sent = true;
  }

  handleFrame(raw) {
    // Any frame shows the connection is alive.
    clearTimeout(this.pongTimer);
    this.pongTimer = null;
    this.emit("rawmessage", { data: raw });
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return; // not JSON: not ours to interpret
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "subscribed": return this.onSubscribed(frame);
      case "message": return this.onMessage(frame);
      case "presence": return this.onPresence(frame);
      case "members": return this.onMembers(frame);
      case "ack": return this.onAck(frame);
      case "error": return this.onError(frame);
      case "gap": return this.onGap(frame);
      case "unsubscribed":
        // The server removed us (an administrator's kick): not resubscribed by itself.
        if (!this.forget(frame.topic)) return;
        return this.emit("unsubscribed", { topic: frame.topic, reason: frame.reason ?? null });
      case "direct": return this.emit("direct", {
        data: frame.data, sender: frame.sender ?? null, time: frame.time,
      });
      default: return; // pong and anything newer
    }
  }

  onSubscribed(frame) {
    const topic = this.topics.get(frame.topic);
    if (!topic) return;
    // `continues`: a Redis failover gave the topic a new epoch, and the new master has every
    // message up to our `since`: the same messages, seqs keep counting.
    const same = topic.epoch === frame.epoch ||
      (frame.continues !== undefined && frame.continues === topic.epoch);
    const resumed = topic.since !== null && same;
    const reset = topic.epoch !== null && !same;
    const recovery = topic.recovery;
    if (recovery && !resumed) this.finishRecovery(frame.topic, topic); // another life: as is
    if (!resumed) {
      // Fresh start (first join or a new epoch): everything that follows is new. With no
      // replay, the next message is the one after the topic's latest seq.
      topic.since = frame.replayed > 0 ? 0 : frame.seq;
    }
    topic.epoch = frame.epoch;
    this.emit("subscribed", {
      topic: frame.topic, epoch: frame.epoch, seq: frame.seq, replayed: frame.replayed,
      gap: Boolean(frame.gap), first: frame.first, resumed, reset,
      retracted: frame.retracted,
    });
    if (recovery && resumed) {
      // The replay that fills a gap notice: the next `replayed` messages of the topic. The
      // held ones and the replay go out together, in order, once it is complete.
      recovery.replayLeft = typeof frame.replayed === "number" ? frame.replayed : 0;
      recovery.last = frame.seq;
      if (recovery.replayLeft === 0) this.finishRecovery(frame.topic, topic);
      return;
    }
    if (frame.gap && resumed) {
      const to = typeof frame.first === "number" ? frame.first - 1 : frame.seq;
      if (to > topic.since) this.emit("gap", { topic: frame.topic, from: topic.since + 1, to });
    }
  }

  onMessage(frame) {
    const topic = this.topics.get(frame.topic);
    if (!topic || typeof frame.seq !== "number") return;
    if (topic.epoch !== null && frame.epoch !== undefined && frame.epoch !== topic.epoch &&
        topic.since !== null && frame.seq === topic.since + 1 && !topic.recovery) {
      // A Redis failover started a new epoch and its first message follows the last one we
      // saw: nothing was lost, seqs keep counting.
      topic.epoch = frame.epoch;
    } else if (topic.epoch !== null && frame.epoch !== undefined &&
               frame.epoch !== topic.epoch) {
      // The history was reset while we were subscribed (or a failover lost messages we saw):
      // seqs start over. What a recovery held belongs to the old life: out it goes first.
      this.finishRecovery(frame.topic, topic);
      topic.epoch = frame.epoch;
      topic.since = 0;
      this.emit("subscribed", {
        topic: frame.topic, epoch: frame.epoch, seq: frame.seq, replayed: 0, gap: false,
        first: undefined, resumed: false, reset: true,
      });
    }
    const recovery = topic.recovery;
    if (recovery) {
      // Waiting for the replay after a gap notice: hold everything, in seq order.
      if (topic.since === null || frame.seq > topic.since) recovery.held.set(frame.seq, frame);
      if (recovery.replayLeft !== null && --recovery.replayLeft <= 0) {
        this.finishRecovery(frame.topic, topic);
      }
      return;
    }
    this.deliver(frame.topic, topic, frame);
  }

  /** Emit a topic message unless its seq was seen already. */
  deliver(name, topic, frame) {
    if (topic.since !== null && frame.seq <= topic.since) return; // already seen
    topic.since = frame.seq;
    this.emit("message", {
      topic: name, seq: frame.seq, epoch: frame.epoch, data: frame.data,
      sender: frame.sender ?? null, time: frame.time,
    });
  }

  // Presence comes as a snapshot (members, count, more) after each `subscribed`, then as
  // changes (joined and left name lists); the list is kept here, applied as a set (a change
  // may repeat what the snapshot says), and every "presence" event carries all of it.
  onPresence(frame) {
    const topic = this.topics.get(frame.topic);
    if (!topic) return;
    let joined = [];
    let left = [];
    if (Array.isArray(frame.members)) {
      topic.members = new Set(frame.members);
      topic.memberCount = Number.isInteger(frame.count) ? frame.count : frame.members.length;
      topic.moreMembers = frame.more === true;
    } else {
      const members = topic.members || (topic.members = new Set());
      // Older hubs sent one name as a string; this one sends lists.
      joined = [].concat(frame.joined ?? []).filter((n) => typeof n === "string");
      left = [].concat(frame.left ?? []).filter((n) => typeof n === "string");
      for (const name of left) {
        if (members.delete(name) || topic.moreMembers) topic.memberCount -= 1;
      }
      for (const name of joined) {
        if (!members.has(name)) { members.add(name); topic.memberCount += 1; }
      }
      topic.memberCount = Math.max(topic.memberCount, members.size);
    }
    this.emitPresence(frame.topic, topic, joined, left);
  }

  emitPresence(name, topic, joined = [], left = []) {
    this.emit("presence", {
      topic: name, members: [...topic.members].sort(cmp), count: topic.memberCount,
      more: topic.moreMembers, joined, left,
    });
  }

  /** The members of `topic` as known here: sorted names, how many there are in all, and
   * whether the server holds more than were sent (see loadMoreMembers). */
  members(topic) {
    const entry = this.topics.get(topic);
    if (!entry || !entry.members) return { members: [], count: 0, more: false };
    return { members: [...entry.members].sort(cmp), count: entry.memberCount,
      more: entry.moreMembers };
  }

  /** Ask the server for the next page of a large topic's members (the snapshot holds the
   * first ones only); a "presence" event follows with the longer list. */
  loadMoreMembers(topic) {
    const entry = this.topics.get(topic);
    if (!entry || !entry.members || !entry.moreMembers || this.state !== "online") return false;
    const names = [...entry.members].sort(cmp);
    this.send({ type: "members", topic, after: names[names.length - 1] });
    return true;
  }

  onMembers(frame) {
    const topic = this.topics.get(frame.topic);
    if (!topic || !topic.members || !Array.isArray(frame.members)) return;
    for (const name of frame.members) topic.members.add(name);
    if (Number.isInteger(frame.count)) topic.memberCount = frame.count;
    topic.moreMembers = frame.more === true;
    this.emitPresence(frame.topic, topic);
  }

  onAck(frame) {
    const entry = this.pending.get(frame.id);
    if (!entry) return;
    this.pending.delete(frame.id);
    entry.resolve({ id: frame.id, topic: frame.topic, seq: frame.seq });
  }

  onError(frame) {
    this.emit("error", { source: "server", code: frame.code, message: frame.message, id: frame.id });
    let id = frame.id;
    if ((id === undefined || id === null) && frame.code === "too_big") {
      // A hub that could not tell the frame's id. It answers a connection's requests in
      // order, and a publish is the only frame of ours that can be that big: the oldest
      // publish sent and not yet answered is the one.
      id = [...this.pending].find(([, entry]) => entry.sent)?.[0];
    }
    const entry = id !== undefined && id !== null ? this.pending.get(id) : undefined;
    if (!entry) return;
    this.pending.delete(id);
    entry.reject(new TetherError(frame.code, frame.message));
  }

  onGap(frame) {
    const topic = this.topics.get(frame.topic);
    if (!topic) return;
    // The server skipped messages for us (the "drop" policy): ask again from what we have.
    // Whatever is still in history comes back in the replay; live messages that arrive
    // before it are held, so that nothing is emitted out of order or lost. Only what the
    // history no longer has becomes a "gap" event. A second notice meanwhile asks again.
    this.endRecovery(topic);
    const socket = this.socket;
    topic.recovery = {
      held: new Map(),   // seq -> message frame
      replayLeft: null,  // replayed messages still to come, once `subscribed` says how many
      last: null,        // the topic's latest seq when the replay was read
      timer: setTimeout(() => {
        // No replay: the subscribe failed or went unanswered. Reconnect and resume.
        if (this.socket === socket && socket !== null) this.lose(socket);
      }, this.recoverTimeout),
    };
    this.sendSubscribe(frame.topic);
  }

  /** Emit what a recovery held, in seq order, with a "gap" for what is still missing. */
  finishRecovery(name, topic) {
    const recovery = topic.recovery;
    this.endRecovery(topic);
    if (!recovery) return;
    const held = [...recovery.held.values()].sort((a, b) => a.seq - b.seq);
    for (const frame of held) {
      if (topic.since !== null && frame.seq > topic.since + 1) {
        this.emit("gap", { topic: name, from: topic.since + 1, to: frame.seq - 1 });
      }
      this.deliver(name, topic, frame);
    }
    if (typeof recovery.last === "number" && topic.since !== null && recovery.last > topic.since) {
      this.emit("gap", { topic: name, from: topic.since + 1, to: recovery.last });
      topic.since = recovery.last;
    }
  }

  /** Stop a recovery without emitting what it held. */
  endRecovery(topic) {
    if (!topic.recovery) return;
    clearTimeout(topic.recovery.timer);
    topic.recovery = null;
  }

  // ---- helpers ----------------------------------------------------------------------------

  /** A publish frame: `id` right after `type`, where the hub looks for it in a frame too big
   * to parse. */
  publishFrame(topic, data, id) {
    return { type: "publish", id, topic, data };
  }

  setTokenProperty(token) {
    // Kept out of the object's enumerable properties, so that logging the client shows none.
    Object.defineProperty(this, "token", {
      value: token || null, enumerable: false, writable: false, configurable: true,
    });
  }

  setState(state, delay) {
    const previous = this.state;
    this.state = state;
    if (previous !== state || delay !== undefined) {
      this.emit("statechange", { state, previous, delay });
    }
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** How many bytes `text` takes in UTF-8 (what the hub counts). */
function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

function tooBig(size, limit) {
  return new TetherError("too_big",
    `message of ${size} bytes exceeds the server's limit of ${limit} bytes`);
}

/** A random id for this client's publish ids: 16 hex digits from the platform's CSPRNG. */
function randomId() {
  const source = typeof crypto !== "undefined" && crypto.getRandomValues
    ? crypto.getRandomValues(new Uint32Array(2)) : [Math.random() * 2 ** 32, Math.random() * 2 ** 32];
  return Array.from(source, (n) => (n >>> 0).toString(16).padStart(8, "0")).join("");
}

/** `url` with `name` as its `name` query parameter; a path becomes same-host ws(s)://. */
function buildUrl(url, name) {
  const base = typeof location !== "undefined" ? location.href : undefined;
  const result = new URL(url, base);
  if (result.protocol === "http:") result.protocol = "ws:";
  if (result.protocol === "https:") result.protocol = "wss:";
  if (name) result.searchParams.set("name", name);
  return result.toString();
}
