// Socket.IO 4.8 server for bench/presence_storm.py and bench/rooms.py: each socket's "join"
// event does socket.join(room) and calls the ack (no presence); "publish" (room, data) emits
// "message" (data) to the room, the sender included: io.to(room).emit (rooms.py only).
//
//   NODE_PATH=bench/.socketio/node_modules node bench/servers/socketio_storm.js HOST PORT
//
// Defaults kept (both transports allowed; the load client uses WebSocket only, and
// perMessageDeflate is off by default in engine.io 6). Prints "listening" once bound.
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const [host, port] = process.argv.slice(2);
const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack(true);
  });
  socket.on("publish", (room, data) => {
    io.to(String(room)).emit("message", data);
  });
});

httpServer.listen(Number(port), host, 1024, () => console.log("listening"));
