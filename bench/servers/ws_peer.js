// Node `ws` echo / broadcast / relay server for bench/peers.py (bufferutil installed
// alongside, so ws masks/unmasks natively). Compression off.
// relay: every message received goes to every open client, the sender included, as in ws's
// README ("Server broadcast": a loop over wss.clients calling client.send()).
//
// Usage: node ws_peer.js {echo|broadcast|relay} HOST PORT [--clients K] [--messages N] [--size S]
//        [--burst B]   (same meaning as bench/servers/_peer_common.py; trigger: SIGUSR2)
'use strict';
const { WebSocket, WebSocketServer } = require('ws');

const argv = process.argv.slice(2);
const [mode, host, portStr] = argv;
const opt = { clients: 1000, messages: 300, size: 32, burst: 10 };
for (let i = 3; i < argv.length; i += 2) opt[argv[i].replace(/^--/, '')] = Number(argv[i + 1]);
const HIGH_WATER = 256 * 1024;

const wss = new WebSocketServer({
  host, port: Number(portStr), perMessageDeflate: false, maxPayload: 2000000, backlog: 1024,
});
if (mode === 'echo') {
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
} else if (mode === 'relay') {
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => {
      wss.clients.forEach((client) => {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      });
    });
  });
}
// Encoded once, as in ws's broadcast example (which forwards the received Buffer).
const message = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz'
  .repeat(Math.ceil(opt.size / 36) + 1).slice(0, opt.size));

function maxBuffered() {
  let m = 0;
  for (const ws of wss.clients) if (ws.bufferedAmount > m) m = ws.bufferedAmount;
  return m;
}

function run() {
  if (wss.clients.size < opt.clients) { setTimeout(run, 10); return; }
  let i = 0;
  const step = () => {
    if (maxBuffered() > HIGH_WATER) { setTimeout(step, 1); return; }
    for (let b = 0; b < opt.burst && i < opt.messages; b++, i++) {
      for (const ws of wss.clients) ws.send(message, { binary: false });
    }
    if (i < opt.messages) setImmediate(step);
    else console.log(`sent ${opt.messages} to ${wss.clients.size}`);
  };
  step();
}

process.on('SIGUSR2', run);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
wss.on('listening', () => console.log(`node ws ${mode} server on ${host}:${portStr}`));
