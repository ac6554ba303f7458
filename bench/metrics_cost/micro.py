"""Direct cost of the statements a8d95d3 added on the per-message path, in this interpreter:
_process_events: a local `received += 1` per message, then one `self.messages_received +=
received` per batch; send_nowait (and broadcast per delivery): `self.messages_sent += 1`
on a __slots__ instance. Best of 7 repeats, CPU time (thread_time)."""
import time, timeit

class WS:
    __slots__ = ("messages_received", "messages_sent", "bytes_sent")
    def __init__(self):
        self.messages_received = self.messages_sent = self.bytes_sent = 0

class Text: pass

def process_before(self, events):
    for event in events:
        cls = type(event)
        if cls is Text:
            pass

def process_after(self, events):
    received = 0
    for event in events:
        cls = type(event)
        if cls is Text:
            received += 1
    if received:
        self.messages_received += received

def send_before(self):
    pass

def send_after(self):
    self.messages_sent += 1

ws = WS()
def best(stmt, glb, number):
    t = timeit.Timer(stmt, globals=glb, timer=time.thread_time)
    return min(t.repeat(repeat=7, number=number)) / number

for batch in (1, 10, 100):
    ev = [Text() for _ in range(batch)]
    g = dict(globals(), ev=ev)
    b = best("process_before(ws, ev)", g, 200000 // batch)
    a = best("process_after(ws, ev)", g, 200000 // batch)
    print(f"_process_events, {batch:3d} messages per batch: +{(a - b) * 1e9 / batch:.1f} ns per message")
b = best("send_before(ws)", globals(), 2000000)
a = best("send_after(ws)", globals(), 2000000)
print(f"send_nowait's messages_sent += 1: +{(a - b) * 1e9:.1f} ns per message")
s = best("sum(range(1000))", globals(), 2000)
print(f"sum(range(1000)): {s * 1e6:.2f} µs")
