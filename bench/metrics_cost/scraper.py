"""GET http://HOST:PORT/metrics every INTERVAL s until SIGTERM/SIGINT; then print one JSON
line: scrapes, failures, last body size, and the client-side time per GET."""
import json, signal, sys, time, urllib.request

url, interval = sys.argv[1], float(sys.argv[2])
stop = False
def _stop(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
ok = fail = size = 0
times = []
stamps = []
errors = []
nxt = time.monotonic()
while not stop:
    t0 = time.perf_counter()
    t_start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read()
        ok += 1
        size = len(body)
        times.append(time.perf_counter() - t0)
        stamps.append((t_start, time.monotonic()))
    except Exception as e:  # noqa: BLE001
        fail += 1
        if len(errors) < 3:
            errors.append(repr(e))
    nxt += interval
    while not stop and time.monotonic() < nxt:
        time.sleep(min(0.05, max(0.0, nxt - time.monotonic())))
times.sort()
print(json.dumps({"scrapes": ok, "failures": fail, "bytes": size, "errors": errors,
                  "get_ms_median": times[len(times) // 2] * 1e3 if times else None,
                  "stamps": stamps}), flush=True)
