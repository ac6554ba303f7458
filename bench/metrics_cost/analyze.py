"""Medians over one or more drive.py JSON files; optionally only the runs in which the
server waited for a CPU less than --quiet of the measured wall time (schedstat run_delay)."""
import argparse, json, statistics
p = argparse.ArgumentParser(); p.add_argument("files", nargs="+"); p.add_argument("--quiet", type=float)
a = p.parse_args()
FIELD = {"a": "server_cpu_us_per_msg", "c": "server_cpu_us_per_msg", "e": "server_cpu_us_per_delivery", "g": "server_cpu_us_per_handshake"}
runs = []
for i, f in enumerate(a.files):
    for r in json.load(open(f))["runs"]:
        if "error" in r: continue
        r["file"] = i; runs.append(r)
def ok(r):
    if a.quiet is None: return True
    w = r.get("server_wait_s")
    return w is not None and w / (r["window"][1] - r["window"][0]) < a.quiet
V = ["before", "after", "after+metrics"]
print(f"files {a.files}; quiet filter {a.quiet}")
print("| scenario | before | after | after+metrics | after/before | after+metrics/before |")
print("|---|---:|---:|---:|---:|---:|")
for k in "aceg":
    med, cells = {}, []
    for v in V:
        xs = [r[FIELD[k]] for r in runs if r["variant"] == v and r["key"] == k and ok(r)]
        if xs:
            med[v] = statistics.median(xs)
            cells.append(f"{med[v]:.2f} ({min(xs):.2f}–{max(xs):.2f}) n={len(xs)}")
        else: cells.append("–")
    cells += [f"{med[v]/med['before']:.3f}" if v in med and 'before' in med else "–" for v in V[1:]]
    print(f"| {k} | " + " | ".join(cells) + " |")
