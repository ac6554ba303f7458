// Join-storm load client for bench/presence_storm.py (issue 17). One Node process, one thread.
//
//   NODE_PATH=bench/.socketio/node_modules node bench/presence_storm_client.js \
//       --kind tether|socketio --url URL --members N [--concurrency 50] [--topic storm]
//       [--timeout 180] [--drain-quiet 1] [--drain-max 60] [--warmup 5] [--origin ORIGIN]
//       [--client raw|lib]
//
// kind tether:   a WebSocket to URL?name=memberNNNN with Origin ORIGIN; once open, it sends
//                {"type":"subscribe","topic":TOPIC}; joined = its `subscribed` frame came.
// kind socketio: Socket.IO v4 over a WebSocket (Engine.IO 4, WebSocket transport only);
//                once connected to the "/" namespace, it emits "join" TOPIC with an ack;
//                joined = the ack came.
//
// --client raw (default): one small WebSocket client of this file's own for both kinds
//   (net + RFC 6455 handshake, Sec-WebSocket-Accept checked, masked client frames, pings
//   answered, the closing handshake), which reads the server's frames as a stream without
//   assembling or copying their payload: it keeps a message's first 48 bytes (enough for its
//   "type") and its length. For Socket.IO it speaks the Engine.IO/Socket.IO text packets
//   socket.io-client sends over a WebSocket: "40" (connect to "/"), '420["join","storm"]'
//   (event with ack id 0), "3" (pong); it waits for "0{...}" (open), "40{...}" (connected),
//   "430[...]" (the ack).
// --client lib: the libraries instead, to cross-check the raw client: `ws` for tether
//   (perMessageDeflate off) and socket.io-client (transports ["websocket"], forceNew, no
//   reconnection, perMessageDeflate off). They cost more client CPU per connection and per
//   presence byte (ws assembles every message in a Buffer).
//
// At most --concurrency clients are between "connect" and "joined" at any time; a joined
// client stays connected. Every client counts the frames whose "type" is "presence" and
// their size (UTF-8 bytes of the text), whatever their fields: the full member list of
// today's hub, or the snapshot + joined/left deltas of issue 17's. 3 sampled tether clients
// (the first, middle and last to start) keep and parse every presence frame and rebuild their
// member view from it (a check that presence is complete; past a capped snapshot, `more`,
// they ask for the other pages with {"type": "members", "after": ...}, as tether.js can).
//
// Protocol with the driver: after --warmup joins on topic "warmup" (closed again), prints
// "ready" on stderr and waits for a line "go" on stdin. Then prints "joined" on stderr once
// every client has joined and "drained" once no client has received anything for
// --drain-quiet s (at most --drain-max s after "joined"); or "timeout" if not every client
// joined within --timeout s of "go", or "failed" if a join failed. Then one line of JSON on
// stdout, closes every connection (at most 5 s) and exits 0. Errors: "error: ..." on stderr,
// exit 1. Every phase is bounded.
"use strict";

const crypto = require("crypto");
const net = require("net");
const readline = require("readline");

function parseArgs(argv) {
  const o = {
    kind: "tether", url: null, members: 1000, concurrency: 50, topic: "storm", timeout: 180,
    drainQuiet: 1, drainMax: 60, warmup: 5, origin: null, sample: 3, client: "raw",
  };
  const names = {
    "--kind": "kind", "--url": "url", "--members": "members", "--concurrency": "concurrency",
    "--topic": "topic", "--timeout": "timeout", "--drain-quiet": "drainQuiet",
    "--drain-max": "drainMax", "--warmup": "warmup", "--origin": "origin", "--sample": "sample",
    "--client": "client",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (!key || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`);
    o[key] = typeof o[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!o.url) throw new Error("--url is required");
  if (o.kind !== "tether" && o.kind !== "socketio") throw new Error(`bad --kind ${o.kind}`);
  if (o.client !== "raw" && o.client !== "lib") throw new Error(`bad --client ${o.client}`);
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const LIB = opts.client === "lib";
const WebSocket = LIB && opts.kind === "tether" ? require("ws") : null;
const ioClient = LIB && opts.kind === "socketio" ? require("socket.io-client").io : null;
const TARGET = new URL(opts.url);
const width = Math.max(4, String(opts.members - 1).length);
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const TYPE_RE = /^\{\s*"type"\s*:\s*"([A-Za-z_]+)"/;
const HEAD = 48; // bytes kept of each message's start
const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const READ_BUFFER = Buffer.alloc(256 * 1024);

let lastFrameMs = 0; // when any storm client last received a frame (ms, monotonic)

function frameType(head, whole) {
  const m = TYPE_RE.exec(head.toString("latin1"));
  if (m) return m[1];
  if (!whole) return null; // "type" is not the first key and the message was not kept
  try {
    return JSON.parse(whole.toString("utf8")).type;
  } catch (e) {
    return null;
  }
}

// The member set a client ends up with, for a few sampled clients (a correctness check):
// `members` replaces it, then `joined` / `left` (a name or a list of names) apply.
function applyPresence(view, frame) {
  if (Array.isArray(frame.members)) {
    view.clear();
    for (const n of frame.members) view.add(n);
  }
  for (const n of [].concat(frame.joined ?? [])) view.add(n);
  for (const n of [].concat(frame.left ?? [])) view.delete(n);
}

// --------------------------------------------------------------------------
// A minimal WebSocket client (RFC 6455) that streams frames instead of assembling them.

class RawWebSocket {
  // callbacks: onopen(), onmessage(opcode, head, length, whole|null), onclose(code), onerror(e)
  constructor(path, origin, keepWhole) {
    this.keepWhole = keepWhole;
    this.state = 0; // 0 handshake, 1 open, 2 closing, 3 closed
    this.key = crypto.randomBytes(16).toString("base64");
    this.resp = null; // handshake response bytes so far
    this.fh = Buffer.alloc(14); // frame header bytes so far
    this.fhLen = 0;
    this.inFrame = false;
    this.need = 0; // payload bytes left in the current frame
    this.opcode = 0;
    this.fin = true;
    this.msgOpcode = 0;
    this.msgLen = 0;
    this.head = Buffer.alloc(HEAD);
    this.headLen = 0;
    this.parts = null; // whole message (keepWhole) or control payload
    this.closeCode = 1006;
    this.onopen = this.onmessage = this.onclose = this.onerror = () => {};
    const host = TARGET.hostname, port = Number(TARGET.port);
    // onread: the kernel's bytes land in one buffer shared by every connection (this thread
    // handles them before the next read), so receiving allocates nothing per read.
    const sock = net.connect({
      host, port, onread: { buffer: READ_BUFFER, callback: (nread, buf) => {
        this.data(buf.subarray(0, nread));
      } },
    });
    this.sock = sock;
    sock.setNoDelay(true);
    sock.on("connect", () => {
      sock.write(`GET ${path} HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\n`
        + `Connection: Upgrade\r\nSec-WebSocket-Key: ${this.key}\r\n`
        + `Sec-WebSocket-Version: 13\r\n` + (origin ? `Origin: ${origin}\r\n` : "") + "\r\n");
    });
    sock.on("error", (e) => this.fail(e));
    sock.on("close", () => {
      const was = this.state;
      this.state = 3;
      if (was !== 3) this.onclose(this.closeCode);
    });
  }

  data(chunk) {
    if (this.state === 0) {
      this.resp = this.resp ? Buffer.concat([this.resp, chunk]) : Buffer.from(chunk); // a copy
      const end = this.resp.indexOf("\r\n\r\n");
      if (end < 0) {
        if (this.resp.length > 65536) this.fail(new Error("handshake response too long"));
        return;
      }
      const text = this.resp.toString("latin1", 0, end);
      const rest = this.resp.subarray(end + 4);
      this.resp = null;
      const status = text.slice(0, text.indexOf("\r\n"));
      if (!/^HTTP\/1\.1 101 /.test(status)) return this.fail(new Error(`handshake: ${status}`));
      const m = /\r\nsec-websocket-accept:[ \t]*(\S+)/i.exec(text);
      const want = crypto.createHash("sha1").update(this.key + GUID).digest("base64");
      if (!m || m[1] !== want) return this.fail(new Error("handshake: bad Sec-WebSocket-Accept"));
      if (/\r\nsec-websocket-extensions:/i.test(text)) {
        return this.fail(new Error("handshake: the server selected an extension"));
      }
      this.state = 1;
      this.onopen();
      if (rest.length) this.frames(rest);
      return;
    }
    if (this.state !== 3) this.frames(chunk);
  }

  frames(buf) {
    let i = 0;
    const n = buf.length;
    while (i < n && this.state !== 3) {
      if (!this.inFrame) {
        while (i < n && this.fhLen < 2) this.fh[this.fhLen++] = buf[i++];
        if (this.fhLen < 2) return;
        const l7 = this.fh[1] & 0x7f;
        const hl = l7 === 126 ? 4 : l7 === 127 ? 10 : 2;
        while (i < n && this.fhLen < hl) this.fh[this.fhLen++] = buf[i++];
        if (this.fhLen < hl) return;
        const b0 = this.fh[0];
        if (this.fh[1] & 0x80) return this.fail(new Error("masked frame from the server"));
        if (b0 & 0x70) return this.fail(new Error("frame with RSV bits set"));
        this.fin = (b0 & 0x80) !== 0;
        this.opcode = b0 & 0x0f;
        this.need = l7 === 126 ? this.fh.readUInt16BE(2)
          : l7 === 127 ? Number(this.fh.readBigUInt64BE(2)) : l7;
        this.fhLen = 0;
        this.inFrame = true;
        if (this.opcode >= 8) {
          this.ctrl = [];
        } else if (this.opcode !== 0) {
          this.msgOpcode = this.opcode;
          this.msgLen = 0;
          this.headLen = 0;
          this.parts = this.keepWhole ? [] : null;
        }
        if (this.need === 0) {
          this.endFrame();
          continue;
        }
      }
      const take = Math.min(this.need, n - i);
      const piece = buf.subarray(i, i + take);
      i += take;
      this.need -= take;
      if (this.opcode >= 8) {
        this.ctrl.push(Buffer.from(piece));
      } else {
        this.msgLen += take;
        if (this.headLen < HEAD) {
          const c = Math.min(HEAD - this.headLen, take);
          piece.copy(this.head, this.headLen, 0, c);
          this.headLen += c;
        }
        if (this.parts) this.parts.push(Buffer.from(piece));
      }
      if (this.need === 0) this.endFrame();
    }
  }

  endFrame() {
    this.inFrame = false;
    if (this.opcode >= 8) {
      const payload = Buffer.concat(this.ctrl);
      this.ctrl = null;
      if (this.opcode === 9) {
        this.send(0xa, payload);
      } else if (this.opcode === 8) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        if (this.state === 1) this.send(0x8, payload.subarray(0, 2));
        this.state = 2;
        this.sock.end();
      }
      return;
    }
    if (this.fin) {
      const whole = this.parts ? Buffer.concat(this.parts) : null;
      this.parts = null;
      this.onmessage(this.msgOpcode, this.head.subarray(0, this.headLen), this.msgLen, whole);
    }
  }

  send(opcode, payload) {
    if (this.sock.destroyed || this.state === 3) return;
    const len = payload.length;
    const hl = len < 126 ? 2 : 4;
    const frame = Buffer.allocUnsafe(hl + 4 + len);
    frame[0] = 0x80 | opcode;
    if (len < 126) {
      frame[1] = 0x80 | len;
    } else {
      frame[1] = 0x80 | 126;
      frame.writeUInt16BE(len, 2);
    }
    crypto.randomFillSync(frame, hl, 4);
    for (let k = 0; k < len; k++) frame[hl + 4 + k] = payload[k] ^ frame[hl + (k & 3)];
    this.sock.write(frame);
  }

  sendText(text) {
    this.send(0x1, Buffer.from(text, "utf8"));
  }

  close(code = 1000) {
    if (this.state === 1) {
      const p = Buffer.alloc(2);
      p.writeUInt16BE(code, 0);
      this.send(0x8, p);
      this.state = 2;
    } else if (this.state === 0) {
      this.sock.destroy();
    }
  }

  fail(e) {
    if (this.state === 3) return;
    this.onerror(e);
    this.sock.destroy();
  }
}

// --------------------------------------------------------------------------
// one member

class Client {
  constructor(i, topic, storm) {
    this.i = i;
    this.name = "member" + String(i).padStart(width, "0");
    this.topic = topic;
    this.storm = storm;
    this.presenceFrames = 0;
    this.presenceBytes = 0;
    this.otherFrames = 0;
    this.pages = 0; // members pages asked for (sampled clients, capped snapshots)
    this.joined = false;
    this.closing = false;
    this.closed = false;
    this.closedByServer = null; // close code or reason, if the server closed us
    this.view = null; // a Set for sampled clients
    this.conn = null; // RawWebSocket, ws or a socket.io-client socket
    this.t0 = 0;
    this.joinMs = null;
    this.onClosed = null;
  }

  join() {
    this.t0 = nowMs();
    return new Promise((resolve, reject) => {
      let settled = false;
      const ok = () => {
        if (settled) return;
        settled = true;
        this.joined = true;
        this.joinMs = nowMs() - this.t0;
        resolve();
      };
      const fail = (why) => {
        if (settled) return;
        settled = true;
        reject(new Error(`${this.name}: ${why}`));
      };
      if (opts.kind === "tether") (LIB ? this.joinTetherLib : this.joinTetherRaw).call(this, ok, fail);
      else (LIB ? this.joinSocketIOLib : this.joinSocketIORaw).call(this, ok, fail);
    });
  }

  // A tether text frame: count presence, notice `subscribed` and `error`. A sampled client
  // also rebuilds its member view, asking for the pages past a capped snapshot (`more`).
  tetherText(head, length, whole, ok, fail) {
    if (this.storm) lastFrameMs = nowMs();
    const type = frameType(head, whole);
    if (type === "presence") {
      this.presenceFrames++;
      this.presenceBytes += length;
      if (this.view && whole) {
        const frame = JSON.parse(whole.toString("utf8"));
        applyPresence(this.view, frame);
        if (frame.more && Array.isArray(frame.members)) this.page(frame.members);
      }
    } else {
      this.otherFrames++;
      if (type === "subscribed") ok();
      else if (type === "error") fail(`error frame: ${(whole || head).toString("utf8")}`);
      else if (type === "members" && this.view && whole) {
        const frame = JSON.parse(whole.toString("utf8"));
        for (const n of frame.members || []) this.view.add(n);
        if (frame.more) this.page(frame.members || []);
      }
    }
  }

  page(names) {
    if (!names.length) return;
    this.pages++;
    const req = JSON.stringify({ type: "members", topic: this.topic, after: names[names.length - 1] });
    if (LIB) this.conn.send(req);
    else this.conn.sendText(req);
  }

  closedNow(code, fail) {
    this.closed = true;
    if (!this.closing) {
      this.closedByServer = code;
      fail(`closed before joining: ${code}`);
    }
    if (this.onClosed) this.onClosed();
  }

  joinTetherRaw(ok, fail) {
    const ws = new RawWebSocket(`${TARGET.pathname}?name=${this.name}`, opts.origin,
                                this.view !== null);
    this.conn = ws;
    ws.onopen = () => ws.sendText(JSON.stringify({ type: "subscribe", topic: this.topic }));
    ws.onmessage = (opcode, head, length, whole) => {
      if (opcode === 1) this.tetherText(head, length, whole, ok, fail);
      else this.otherFrames++;
    };
    ws.onerror = (e) => fail(`socket error: ${e.message}`);
    ws.onclose = (code) => this.closedNow(code, fail);
  }

  joinSocketIORaw(ok, fail) {
    const ws = new RawWebSocket("/socket.io/?EIO=4&transport=websocket", opts.origin, false);
    this.conn = ws;
    ws.onmessage = (opcode, head, length) => {
      if (this.storm) lastFrameMs = nowMs();
      this.otherFrames++;
      const text = head.toString("latin1");
      if (text === "2") ws.sendText("3"); // Engine.IO ping → pong
      else if (text.startsWith("0")) ws.sendText("40"); // open → connect to "/"
      else if (text.startsWith("40")) ws.sendText(`420${JSON.stringify(["join", this.topic])}`);
      else if (text.startsWith("430")) ok(); // the ack of "join"
      else if (text.startsWith("44")) fail(`connect_error: ${text}`);
      else if (text.startsWith("41") || text === "1") fail(`disconnected: ${text}`);
    };
    ws.onerror = (e) => fail(`socket error: ${e.message}`);
    ws.onclose = (code) => this.closedNow(code, fail);
  }

  joinTetherLib(ok, fail) {
    const ws = new WebSocket(`${opts.url}?name=${this.name}`, {
      origin: opts.origin || undefined, perMessageDeflate: false, handshakeTimeout: 60000,
    });
    this.conn = ws;
    ws.on("open", () => ws.send(JSON.stringify({ type: "subscribe", topic: this.topic })));
    ws.on("message", (data, isBinary) => {
      const buf = Buffer.isBuffer(data) ? data
        : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      if (isBinary) {
        this.otherFrames++;
        return;
      }
      this.tetherText(buf.subarray(0, HEAD), buf.length, buf, ok, fail);
    });
    ws.on("error", (e) => fail(`socket error: ${e.message}`));
    ws.on("close", (code) => this.closedNow(code, fail));
  }

  joinSocketIOLib(ok, fail) {
    const socket = ioClient(opts.url, {
      forceNew: true, transports: ["websocket"], reconnection: false, timeout: 60000,
      perMessageDeflate: false,
    });
    this.conn = socket;
    socket.on("connect", () => socket.emit("join", this.topic, () => ok()));
    socket.on("connect_error", (e) => fail(`connect_error: ${e.message}`));
    socket.on("disconnect", (reason) => this.closedNow(reason, fail));
    socket.io.engine?.on?.("packet", () => {
      this.otherFrames++;
      if (this.storm) lastFrameMs = nowMs();
    });
  }

  close() {
    this.closing = true;
    if (this.closed || !this.conn) return Promise.resolve();
    return new Promise((resolve) => {
      this.onClosed = resolve;
      try {
        if (LIB && opts.kind === "socketio") {
          this.conn.disconnect();
          resolve();
        } else {
          this.conn.close(1000);
        }
      } catch (e) {
        resolve();
      }
    });
  }
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

function stats(values) {
  if (!values.length) return { mean: null, max: null, min: null };
  let sum = 0, max = -Infinity, min = Infinity;
  for (const v of values) {
    sum += v;
    if (v > max) max = v;
    if (v < min) min = v;
  }
  return { mean: sum / values.length, max, min };
}

async function warmUp() {
  for (let i = 0; i < opts.warmup; i++) {
    const c = new Client(i, "warmup", false);
    c.name = `warmup${i}`;
    await withTimeout(c.join(), 30000, "warm-up join");
    await withTimeout(c.close(), 5000, "warm-up close").catch(() => {});
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function waitGo() {
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: process.stdin });
    rl.on("line", (line) => {
      if (line.trim() === "go") {
        resolve(); // before close(): it emits "close" synchronously
        rl.close();
      }
    });
    rl.on("close", () => reject(new Error("stdin closed before 'go'")));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  await warmUp();
  const n = opts.members;
  const clients = [];
  const sampled = new Set();
  if (opts.kind === "tether" && n > 0) {
    // the first joiner (gets the most presence), one in the middle, the last one
    for (const i of [0, Math.floor(n / 2), n - 1].slice(0, opts.sample)) sampled.add(i);
  }
  for (let i = 0; i < n; i++) {
    const c = new Client(i, opts.topic, true);
    if (sampled.has(i)) c.view = new Set();
    clients.push(c);
  }
  process.stderr.write("ready\n");
  await waitGo();

  const cpu0 = process.cpuUsage();
  const t0 = nowMs();
  lastFrameMs = t0;
  let next = 0, joinedCount = 0, stop = false;
  const errors = [];
  const deadline = t0 + opts.timeout * 1000;

  async function worker() {
    while (!stop && next < n) {
      const c = clients[next++];
      try {
        await c.join();
        joinedCount++;
      } catch (e) {
        errors.push(e.message);
        stop = true; // a failed join: the storm cannot complete; stop starting new ones
      }
    }
  }

  const workers = [];
  for (let k = 0; k < Math.min(opts.concurrency, n); k++) workers.push(worker());
  let timer;
  const outcome = await Promise.race([
    Promise.all(workers).then(() => (errors.length ? "failed" : "joined")),
    new Promise((resolve) => {
      timer = setTimeout(() => resolve("timeout"), Math.max(0, deadline - nowMs()));
    }),
  ]);
  clearTimeout(timer);
  stop = true;
  const tJoined = nowMs();
  const cpuJoined = process.cpuUsage(cpu0);
  process.stderr.write(outcome + "\n");

  // Drain: the presence frames of the last joins are still on their way.
  let tDrained = tJoined, cpuDrained = cpuJoined, drainComplete = null;
  if (outcome === "joined") {
    const drainEnd = tJoined + opts.drainMax * 1000;
    drainComplete = false;
    while (nowMs() < drainEnd) {
      if (nowMs() - lastFrameMs >= opts.drainQuiet * 1000) {
        drainComplete = true;
        break;
      }
      await sleep(50);
    }
    tDrained = Math.max(lastFrameMs, tJoined);
    cpuDrained = process.cpuUsage(cpu0);
    process.stderr.write("drained\n");
  }

  const joined = clients.filter((c) => c.joined);
  const frames = joined.map((c) => c.presenceFrames);
  const bytes = joined.map((c) => c.presenceBytes);
  const lat = joined.map((c) => c.joinMs).sort((a, b) => a - b);
  const views = clients.filter((c) => c.view).map((c) => ({
    client: c.name, members_seen: c.view.size, presence_frames: c.presenceFrames,
    presence_bytes: c.presenceBytes, member_pages: c.pages,
  }));
  const closedAfterJoin = clients.filter((c) => c.joined && c.closedByServer !== null);
  const fs = stats(frames), bs = stats(bytes);
  const result = {
    kind: opts.kind, client: opts.client, outcome, members: n, concurrency: opts.concurrency,
    joined: joinedCount,
    wall_joined_s: (tJoined - t0) / 1000,
    wall_drained_s: (tDrained - t0) / 1000,
    drain_complete: drainComplete,
    presence_frames_mean: fs.mean, presence_frames_max: fs.max, presence_frames_min: fs.min,
    presence_bytes_mean: bs.mean, presence_bytes_max: bs.max, presence_bytes_min: bs.min,
    presence_bytes_total: bytes.reduce((a, b) => a + b, 0),
    other_frames_total: clients.reduce((a, c) => a + c.otherFrames, 0),
    join_ms_p50: percentile(lat, 0.5), join_ms_p99: percentile(lat, 0.99),
    join_ms_max: lat.length ? lat[lat.length - 1] : null,
    closed_by_server_after_join: closedAfterJoin.length,
    closed_by_server_codes: [...new Set(closedAfterJoin.map((c) => c.closedByServer))],
    sampled_views: views,
    client_cpu_joined_s: (cpuJoined.user + cpuJoined.system) / 1e6,
    client_cpu_s: (cpuDrained.user + cpuDrained.system) / 1e6,
    client_user_s: cpuDrained.user / 1e6, client_sys_s: cpuDrained.system / 1e6,
    errors: errors.slice(0, 5), error_count: errors.length,
  };
  process.stdout.write(JSON.stringify(result) + "\n");

  // Close every connection (the server sees a normal close), at most 5 s, then exit.
  await Promise.race([Promise.all(clients.map((c) => c.close())), sleep(5000)]);
  process.exit(0);
}

// A watchdog on the whole run: warm-up, the wait for "go", the storm, the drain, the close.
setTimeout(() => {
  process.stderr.write("error: client watchdog expired\n");
  process.exit(1);
}, (opts.timeout + opts.drainMax + 600) * 1000).unref();

main().catch((e) => {
  process.stderr.write(`error: ${e.message}\n`);
  process.exit(1);
});
