// tether.js under Node (no browser): a scripted fake WebSocket plays the hub. Run by
// tests/apps/test_tether_js.py, which checks the JSON this prints. Usage:
//   node tether_js_cases.mjs file:///…/tether.js
// Each case returns what the client emitted and sent; a failure prints {"error": …} and exits 1.

const [moduleUrl] = process.argv.slice(2);
const { TetherClient, TetherError } = await import(moduleUrl);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class FakeSocket {
  static OPEN = 1;
  static all = [];
  static failNext = null; // an Error the next constructor throws
  constructor(url, protocols) {
    if (FakeSocket.failNext) {
      const error = FakeSocket.failNext;
      FakeSocket.failNext = null;
      throw error;
    }
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.protocol = "";
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  open() { this.readyState = 1; this.onopen({}); }
  receive(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.readyState = 3; this.onclose({ code, reason: "", wasClean: false }); }
}
globalThis.WebSocket = FakeSocket;

const URL_ = "ws://127.0.0.1:1/ws";
const msg = (seq, epoch = "e1", topic = "room") =>
  ({ type: "message", topic, epoch, seq, data: `m${seq}`, sender: "x", time: 0 });

/** A client on a fresh fake socket, with everything it emits recorded. */
function start(options = {}) {
  const count = FakeSocket.all.length;
  const client = new TetherClient(URL_, { pingInterval: 0, backoff: { initial: 1, max: 2 },
    ...options });
  const out = { messages: [], gaps: [], subscribed: [], direct: [], opens: [], errors: [] };
  client.addEventListener("message", (e) => out.messages.push(e.detail.seq));
  client.addEventListener("gap", (e) => out.gaps.push([e.detail.from, e.detail.to]));
  client.addEventListener("subscribed", (e) => out.subscribed.push(e.detail));
  client.addEventListener("direct", (e) => out.direct.push(e.detail));
  client.addEventListener("open", (e) => out.opens.push(e.detail));
  client.addEventListener("error", (e) => out.errors.push(e.detail));
  const socket = FakeSocket.all[count];
  return { client, out, socket };
}

async function nextSocket(after) {
  for (let i = 0; i < 400; i++) {
    const found = FakeSocket.all.slice(FakeSocket.all.indexOf(after) + 1)[0];
    if (found) return found;
    await sleep(5);
  }
  throw new Error("no new socket");
}

/** Subscribed to "room" in epoch e1 with seqs 1..3 seen. */
function joined(options) {
  const started = start(options);
  const { client, socket } = started;
  client.subscribe("room");
  socket.open();
  socket.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 3, replayed: 3, gap: false });
  socket.receive({ type: "presence", topic: "room", members: ["me"] });
  for (const seq of [1, 2, 3]) socket.receive(msg(seq));
  return started;
}

const cases = {
  // The drop policy: gap notice 4-6, live 7 and 8 arrive before the replay 4..8.
  async gapFilledByTheReplay() {
    const { client, out, socket } = joined();
    socket.receive({ type: "gap", topic: "room", from: 4, to: 6 });
    const resubscribe = socket.sent.at(-1);
    socket.receive(msg(7));
    socket.receive(msg(8));
    const heldBack = [...out.messages];
    socket.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 8, replayed: 5, gap: false });
    socket.receive({ type: "presence", topic: "room", members: ["me"] });
    for (const seq of [4, 5, 6, 7]) socket.receive(msg(seq));
    const beforeLast = [...out.messages];
    socket.receive(msg(8));
    socket.receive(msg(9)); // live again
    client.close();
    return { resubscribe, heldBack, beforeLast, ...out };
  },

  // The history lost 4 and 5 meanwhile: the replay starts at 6.
  async gapPartlyFilled() {
    const { client, out, socket } = joined();
    socket.receive({ type: "gap", topic: "room", from: 4, to: 6 });
    socket.receive(msg(7));
    socket.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 8, replayed: 3, gap: true, first: 6 });
    for (const seq of [6, 7, 8]) socket.receive(msg(seq));
    socket.receive(msg(9));
    client.close();
    return out;
  },

  // Nothing left in history: the held messages go out after a gap for the rest.
  async gapNotFilled() {
    const { client, out, socket } = joined();
    socket.receive({ type: "gap", topic: "room", from: 4, to: 6 });
    socket.receive(msg(7));
    socket.receive(msg(8));
    socket.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 10, replayed: 0, gap: true, first: 11 });
    socket.receive(msg(11));
    client.close();
    return out;
  },

  // No answer to the resubscribe: the client reconnects and resumes from what it emitted.
  async recoveryTimesOut() {
    const { client, out, socket } = joined({ recoverTimeout: 20 });
    socket.receive({ type: "gap", topic: "room", from: 4, to: 6 });
    socket.receive(msg(7));
    const next = await nextSocket(socket);
    next.open();
    const resume = next.sent[0];
    next.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 7, replayed: 4, gap: false });
    for (const seq of [4, 5, 6, 7]) next.receive(msg(seq));
    client.close();
    return { resume, ...out };
  },

  // A drop while holding: the held messages come back with the resume.
  async dropWhileHolding() {
    const { client, out, socket } = joined();
    socket.receive({ type: "gap", topic: "room", from: 4, to: 4 });
    socket.receive(msg(5));
    socket.drop();
    const next = await nextSocket(socket);
    next.open();
    const resume = next.sent[0];
    next.receive({ type: "subscribed", topic: "room", epoch: "e1", seq: 5, replayed: 2, gap: false });
    next.receive(msg(4));
    next.receive(msg(5));
    client.close();
    return { resume, ...out };
  },

  // Another topic goes on while one recovers.
  async otherTopicsAreNotHeld() {
    const { client, out, socket } = joined();
    client.subscribe("other");
    socket.receive({ type: "subscribed", topic: "other", epoch: "o", seq: 0, replayed: 0, gap: false });
    socket.receive({ type: "gap", topic: "room", from: 4, to: 4 });
    socket.receive(msg(1, "o", "other"));
    const whileHolding = [...out.messages];
    client.close();
    return { whileHolding };
  },

  // A publish not acknowledged before a drop goes again with the same id.
  async resendKeepsTheId() {
    const { client, socket } = joined();
    const acked = client.publish("room", "hello");
    const first = socket.sent.find((f) => f.type === "publish");
    socket.drop();
    const next = await nextSocket(socket);
    next.open();
    const again = next.sent.find((f) => f.type === "publish");
    next.receive({ type: "ack", id: again.id, topic: "room", seq: 4 });
    const ack = await acked;
    const other = start();
    other.client.publish("room", 1).catch(() => {});
    const otherId = [...other.client.pending.keys()][0];
    other.client.close();
    client.close();
    return { first, again, ack, otherId };
  },

  async tokenInTheQuery() {
    const { client, out, socket } = start({ name: "zoe", token: "s3 cret&x" });
    socket.open();
    const result = {
      socketUrl: socket.url, url: client.url, protocols: socket.protocols ?? null,
      opens: out.opens, keys: Object.keys(client), json: JSON.stringify({ ...client, socket: null }),
    };
    client.close();
    return result;
  },

  async tokenAsASubprotocol() {
    const { client, out, socket } = start({ token: "s3cret", tokenIn: "subprotocol", protocols: "chat" });
    socket.open();
    const result = { socketUrl: socket.url, protocols: socket.protocols, opens: out.opens };
    client.close();
    const refused = [];
    for (const options of [{ token: "no spaces", tokenIn: "subprotocol" }, { tokenIn: "header" }]) {
      try {
        new TetherClient(URL_, options).close();
        refused.push("accepted");
      } catch (error) {
        refused.push(error instanceof TetherError ? error.code : String(error));
      }
    }
    return { ...result, refused };
  },

  async errorsDoNotShowTheToken() {
    const { client, out, socket } = start({ token: "s3cret/" });
    socket.open();
    // The reconnect's WebSocket constructor throws, naming the URL it was given.
    FakeSocket.failNext = new SyntaxError(`The URL '${URL_}?token=s3cret%2F' is invalid (s3cret/)`);
    socket.drop();
    for (let i = 0; i < 200 && out.errors.length === 0; i++) await sleep(5);
    client.close();
    return { errors: out.errors };
  },

  // The hub refuses a publish as too_big, echoing its id: the promise fails with that code,
  // and the publish is not sent again after a reconnect.
  async tooBigWithItsId() {
    const { client, socket } = joined();
    const big = client.publish("room", "x".repeat(70000));
    const small = client.publish("room", "fine");
    const [bigFrame, smallFrame] = socket.sent.filter((f) => f.type === "publish");
    const keys = Object.keys(bigFrame);
    socket.receive({ type: "error", code: "too_big", message: "frame with 70060 bytes exceeds limit of 65536 bytes", id: bigFrame.id });
    const refused = await big.catch((e) => ({ code: e.code, message: e.message, tether: e instanceof TetherError }));
    socket.drop();
    const next = await nextSocket(socket);
    next.open();
    const resent = next.sent.filter((f) => f.type === "publish").map((f) => f.id);
    next.receive({ type: "ack", id: smallFrame.id, topic: "room", seq: 4 });
    const smallAck = await small;
    client.close();
    return { keys, refused, resent, smallId: smallFrame.id, smallAck };
  },

  // An older hub's too_big without an id: the oldest publish waiting for its answer fails.
  async tooBigWithoutAnId() {
    const { client, socket } = joined();
    const first = client.publish("room", "acked");
    const big = client.publish("room", "y".repeat(70000));
    const after = client.publish("room", "after");
    const ids = socket.sent.filter((f) => f.type === "publish").map((f) => f.id);
    socket.receive({ type: "ack", id: ids[0], topic: "room", seq: 4 });
    await first;
    socket.receive({ type: "error", code: "too_big", message: "frame too big" });
    const refused = await big.catch((e) => e.code);
    socket.receive({ type: "error", code: "bad_json", message: "not ours" }); // no id: ignored
    socket.drop();
    const next = await nextSocket(socket);
    next.open();
    const resent = next.sent.filter((f) => f.type === "publish").map((f) => f.id);
    next.receive({ type: "ack", id: ids[2], topic: "room", seq: 5 });
    const afterAck = await after;
    client.close();
    return { refused, resent, ids, afterSeq: afterAck.seq };
  },

  // maxFrame known: refused before anything is sent; publishSize() is what the hub counts.
  async maxFrameRefusesAtOnce() {
    const { client, socket } = joined({ maxFrame: 200 });
    const predicted = client.publishSize("room", { text: "é".repeat(40) });
    client.publish("room", { text: "é".repeat(40) }).catch(() => {});
    const sentFrame = socket.sent.at(-1);
    const actual = Buffer.byteLength(JSON.stringify(sentFrame));
    const sentBefore = socket.sent.length;
    const refused = await client.publish("room", { text: "é".repeat(100) }).catch((e) => e.code);
    const sentForRefused = socket.sent.length - sentBefore;
    client.maxFrame = null; // unknown again: the hub decides
    client.publish("room", "é".repeat(100)).catch(() => {});
    const sentOnceUnknown = socket.sent.length - sentBefore;
    const badData = await client.publish("room", 10n).catch((e) => e.code);
    client.close();
    return { predicted, actual, refused, sentForRefused, sentOnceUnknown, badData };
  },

  // A close with 1009 (the server's WebSocket message limit): the largest publish fails.
  async close1009FailsTheLargest() {
    const { client, socket } = joined();
    const small = client.publish("room", "small");
    const big = client.publish("room", "z".repeat(5000));
    const smallId = socket.sent.filter((f) => f.type === "publish")[0].id;
    const opened = [];
    client.addEventListener("close", (e) => opened.push([e.detail.code, e.detail.opened]));
    socket.drop(1009);
    const refused = await big.catch((e) => e.code);
    const next = await nextSocket(socket);
    next.drop(); // never opened
    const third = await nextSocket(next);
    third.open();
    const resent = third.sent.filter((f) => f.type === "publish").map((f) => f.id);
    third.receive({ type: "ack", id: smallId, topic: "room", seq: 4 });
    await small;
    client.close();
    return { refused, resent, smallId, opened };
  },

  // setToken(): the next attempt uses the new token, at once.
  async setTokenReconnectsNow() {
    const { client, socket } = start({ backoff: { initial: 60000, max: 60000 } });
    socket.drop(); // refused: the next attempt would be up to a minute away
    client.setToken("n3w t0ken");
    const next = FakeSocket.all.at(-1);
    const result = {
      newSocket: next !== socket, url: next.url, keys: Object.keys(client),
      json: JSON.stringify({ ...client, socket: null, openTimer: null, retryTimer: null }),
    };
    next.drop();
    client.setToken(null);
    result.without = FakeSocket.all.at(-1).url;
    client.close();
    return result;
  },

  // Kicked: an `unsubscribed` frame forgets the topic (no resubscribe after a reconnect);
  // a publish already sent gets the hub's answer; subscribe() again joins it again.
  async kickedIsNotResubscribed() {
    const { client, socket } = joined();
    const events = [];
    client.addEventListener("unsubscribed", (e) => events.push(e.detail));
    const inFlight = client.publish("room", "racing the kick").catch((e) => e.code);
    const [sent] = socket.sent.filter((f) => f.type === "publish");
    socket.receive({ type: "unsubscribed", topic: "room", reason: "kicked" });
    socket.receive({ type: "error", code: "not_subscribed", message: "not subscribed", id: sent.id });
    const failed = await inFlight;
    const topics = client.subscriptions();
    socket.drop();
    const next = await nextSocket(socket);
    next.open();
    const resubscribed = next.sent.filter((f) => f.type === "subscribe").map((f) => f.topic);
    const resent = next.sent.filter((f) => f.type === "publish").length;
    client.subscribe("room");
    const rejoined = next.sent.filter((f) => f.type === "subscribe").map((f) => f.topic);
    client.close();
    return { events, failed, topics, resubscribed, resent, rejoined };
  },

  // Presence as a snapshot then changes (issue 17): the list is kept here, and each event
  // carries all of it; a large room's snapshot pages in on request.
  async presenceKeepsTheList() {
    const { client, socket } = joined();
    const events = [];
    client.addEventListener("presence", (e) => events.push(e.detail));
    socket.receive({ type: "presence", topic: "room", joined: ["b", "a"] });
    socket.receive({ type: "presence", topic: "room", left: ["a"], joined: ["me"] }); // a repeat
    socket.receive({ type: "presence", topic: "room", joined: "c" }); // an older hub's form
    socket.receive({ type: "presence", topic: "room", members: ["a", "b"], count: 5, more: true });
    const asked = client.loadMoreMembers("room");
    const request = socket.sent[socket.sent.length - 1];
    socket.receive({ type: "members", topic: "room", members: ["c", "d", "e"], count: 5 });
    const known = client.members("room");
    const notMore = client.loadMoreMembers("room");
    client.close();
    return {
      events: events.map((e) => [e.members, e.count, e.more, e.joined, e.left]),
      asked, request, known, notMore,
    };
  },

  async directFrames() {
    const { client, out, socket } = start();
    socket.open();
    socket.receive({ type: "direct", data: { chat: "welcome", name: "carol" }, sender: null, time: 5 });
    client.close();
    return out.direct;
  },
};

const results = {};
try {
  for (const [name, run] of Object.entries(cases)) {
    results[name] = await Promise.race([
      run(),
      sleep(5000).then(() => { throw new Error(`${name}: time limit`); }),
    ]);
  }
} catch (error) {
  console.log(JSON.stringify({ error: String(error.stack || error) }));
  process.exit(1);
}
console.log(JSON.stringify(results));
process.exit(0);
