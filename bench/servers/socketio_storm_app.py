"""python-socketio on ASGI for bench/presence_storm.py and bench/rooms.py: each socket's "join"
event enters the room and acknowledges (the handler's return value is the ack; no presence);
"publish" (room, data) emits "message" (data) to the room, the sender included (rooms.py only).

  /tmp/s7storm/venv/bin/python -m uvicorn socketio_storm_app:app --app-dir bench/servers \\
      --host 127.0.0.1 --port P

Every other setting is python-socketio's and uvicorn's default (uvicorn picks uvloop,
httptools and its default websockets engine when installed).
"""

import socketio

sio = socketio.AsyncServer(async_mode="asgi")
app = socketio.ASGIApp(sio)


@sio.on("join")
async def join(sid: str, room: str) -> bool:
    await sio.enter_room(sid, str(room))
    return True


@sio.on("publish")
async def publish(sid: str, room: str, data: object) -> None:
    await sio.emit("message", data, to=str(room))
