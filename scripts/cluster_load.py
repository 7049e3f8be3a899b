#!/usr/bin/env python3
"""Load driver for scripts/cluster-bench.sh (Python standard library only).

Subcommands, each printing one JSON object on stdout:

  seed     write COUNT random blobs straight into the S3 stand-in's bucket
           directory (s3s-fs keeps an object as a plain file) and append
           "MD5 SIZE" lines to a list
  sweep    GET every blob of a list once, targets taken in turn (client-side round robin)
  count    ask every node GET /blobs/{md5}/status for every blob: cached per node,
           distinct blobs cached anywhere, copies
  zipf     GETs drawn from a Zipf law over a list of blobs, in two halves (warm-up,
           measured); the nodes' /stats before, between and after give the store reads
  cold     for each blob of a list, concurrent GETs on every target at once; the
           store reads that cost, summed over the nodes
  owner    which node owns a blob (GET /cluster?md5=), and one node that does not
  latency  wrk -t1 -c1 --latency on two URLs in turn, N runs each: p50/p99 medians

Every loop is bounded by a count, and every request by a timeout.
"""

import argparse
import bisect
import hashlib
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

TIMEOUT = 30.0
CHUNK = 4 * 1024 * 1024 - 8 * 1024  # blobcache's chunk size


def split_url(url):
    u = urllib.parse.urlsplit(url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit(f"cluster_load: {url} is not a loopback address")
    return u.hostname, u.port or 80


def get_json(url):
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        return json.load(r)


def read_keys(path, sizes=False):
    """The MD5s of a list written by `seed` (lines "MD5 SIZE"), or with their sizes."""
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    if not rows:
        sys.exit(f"cluster_load: no keys in {path}")
    return [(r[0], int(r[1])) for r in rows] if sizes else [r[0] for r in rows]


class Client:
    """One keep-alive connection per target, for one thread."""

    def __init__(self):
        self.conns = {}

    def get(self, base, path, verify=None):
        """GET base+path; returns (status, x-cache, body length, md5 ok)."""
        for attempt in range(2):  # one retry on a connection the server closed
            conn = self.conns.get(base)
            if conn is None:
                host, port = split_url(base)
                conn = self.conns[base] = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                h = hashlib.md5() if verify else None
                n = 0
                while True:
                    b = r.read(1 << 20)
                    if not b:
                        break
                    n += len(b)
                    if h:
                        h.update(b)
                ok = (h.hexdigest() == verify) if h else True
                return r.status, (r.getheader("X-Cache") or "-"), n, ok
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self.conns.pop(base, None)
                if attempt:
                    return 0, "error", 0, False
        return 0, "error", 0, False


def run_threads(n, fn):
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def stats_sum(nodes):
    """Sum of the counters that matter over the nodes' /stats."""
    tot = {}
    for node in nodes:
        s = get_json(node + "/stats")
        for name, val in (
            ("store_gets", s["store"]["gets"]),
            ("store_heads", s["store"]["heads"]),
            ("store_bytes_read", s["store"]["bytes_read"]),
            ("hits", s["metrics"]["hits"]),
            ("peer_hits", s["metrics"]["peer_hits"]),
            ("misses", s["metrics"]["misses"]),
            ("spool_hits", s["metrics"]["spool_hits"]),
            ("coalesced_waiters", s["metrics"]["coalesced_waiters"]),
            ("fills", s["metrics"]["fills"]),
        ):
            tot[name] = tot.get(name, 0) + val
    return tot


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


# ------------------------------------------------------------------ seed


def cmd_seed(a):
    rng = random.Random(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    keys = []
    for _ in range(a.count):
        data = rng.randbytes(a.size)
        md5 = hashlib.md5(data).hexdigest()
        tmp = os.path.join(a.dir, f".{md5}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(a.dir, md5))
        keys.append(f"{md5} {a.size}")
    with open(a.out, "a") as f:
        f.write("\n".join(keys) + "\n")
    print(json.dumps({"count": len(keys), "size": a.size, "out": a.out}))


# ------------------------------------------------------------------ sweep


def cmd_sweep(a):
    keys = read_keys(a.keys)
    targets = a.targets.split(",")
    counts, lock = {}, threading.Lock()
    bad = [0]

    def work(t):
        c = Client()
        for i in range(t, len(keys), a.concurrency):
            status, xc, _, ok = c.get(targets[i % len(targets)], f"/blobs/{keys[i]}", keys[i] if a.verify else None)
            with lock:
                counts[xc] = counts.get(xc, 0) + 1
                if status != 200 or not ok:
                    bad[0] += 1

    t0 = time.monotonic()
    run_threads(a.concurrency, work)
    print(json.dumps({"requests": len(keys), "x_cache": counts, "failed": bad[0], "seconds": round(time.monotonic() - t0, 2)}))


# ------------------------------------------------------------------ count


def cmd_count(a):
    keys = read_keys(a.keys)
    nodes = a.nodes.split(",")
    cached = {n: set() for n in nodes}
    lock = threading.Lock()
    errors = [0]

    def work(t):
        c = {n: http.client.HTTPConnection(*split_url(n), timeout=TIMEOUT) for n in nodes}
        for i in range(t, len(keys), a.concurrency):
            for n in nodes:
                try:
                    c[n].request("GET", f"/blobs/{keys[i]}/status")
                    r = c[n].getresponse()
                    body = json.loads(r.read())
                    if body.get("cached"):
                        with lock:
                            cached[n].add(keys[i])
                except (http.client.HTTPException, OSError, ValueError):
                    c[n].close()
                    c[n] = http.client.HTTPConnection(*split_url(n), timeout=TIMEOUT)
                    with lock:
                        errors[0] += 1

    run_threads(a.concurrency, work)
    union = set().union(*cached.values())
    per_node = [len(cached[n]) for n in nodes]
    caches = [get_json(n + "/stats")["cache"] for n in nodes]
    entries = [c["memory_entries"] for c in caches]
    print(json.dumps({
        "per_node": per_node,
        "distinct": len(union),
        "copies": sum(per_node),
        "memory_entries": entries,
        "memory_used_bytes": [c["memory_used_bytes"] for c in caches],
        # A cached blob is one metadata entry plus its chunks; for one-chunk blobs the
        # entries that are not a cached blob's metadata are chunks, each one blob whose
        # bytes are in memory (with or without its metadata entry).
        "resident_per_node": [e - c for e, c in zip(entries, per_node)],
        "resident": sum(entries) - sum(per_node),
        "errors": errors[0],
    }))


# ------------------------------------------------------------------ zipf


def zipf_sequence(n_keys, n_requests, s, seed):
    """Ranks (0 = most popular) drawn from a Zipf law with exponent s."""
    rng = random.Random(seed)
    cdf, acc = [], 0.0
    for i in range(1, n_keys + 1):
        acc += 1.0 / i ** s
        cdf.append(acc)
    return [min(bisect.bisect_left(cdf, rng.random() * acc), n_keys - 1) for _ in range(n_requests)]


def cmd_zipf(a):
    keys = read_keys(a.keys)
    # Popularity ranks land on blobs in a shuffled (seeded) order, so the hot blobs are
    # spread over the owners like any others.
    order = list(range(len(keys)))
    random.Random(a.seed + 1).shuffle(order)
    ranks = zipf_sequence(len(keys), a.requests, a.s, a.seed)
    seq = [keys[order[r]] for r in ranks]
    targets = a.targets.split(",")
    nodes = a.nodes.split(",")

    def run(part, offset):
        counts, lock, bad = {}, threading.Lock(), [0]
        lat = []

        def work(t):
            c = Client()
            mine = []
            for i in range(t, len(part), a.concurrency):
                t0 = time.perf_counter()
                status, xc, _, ok = c.get(targets[(offset + i) % len(targets)], f"/blobs/{part[i]}", part[i] if a.verify else None)
                mine.append(time.perf_counter() - t0)
                with lock:
                    counts[xc] = counts.get(xc, 0) + 1
                    if status != 200 or not ok:
                        bad[0] += 1
            with lock:
                lat.extend(mine)

        before = stats_sum(nodes)
        t0 = time.monotonic()
        run_threads(a.concurrency, work)
        secs = time.monotonic() - t0
        d = delta(stats_sum(nodes), before)
        lat.sort()
        n = len(part)
        return {
            "requests": n,
            "failed": bad[0],
            "x_cache": counts,
            "seconds": round(secs, 2),
            "req_per_s": round(n / secs, 1),
            "latency_ms_p50": round(lat[n // 2] * 1000, 3),
            "latency_ms_p99": round(lat[min(n - 1, int(n * 0.99))] * 1000, 3),
            "store_gets": d["store_gets"],
            "store_heads": d["store_heads"],
            # Hit ratio, as requests that did not cost a store read (one-chunk blobs:
            # one store GET per request that read from the store).
            "hit_ratio_store": round(1 - d["store_gets"] / n, 4),
            "store_heads_per_request": round(d["store_heads"] / n, 4),
            # Answers that came from another node (X-Cache: peer): the node the request
            # landed on was not the blob's owner.
            "forwarded": counts.get("peer", 0),
            "forwarded_ratio": round(counts.get("peer", 0) / n, 4),
            # The nodes' counters, summed (a forwarded GET is counted by the node it
            # landed on as peer_hit, and by the owner, which it asks twice: a lookup
            # and a GET, as two hits or two misses).
            "node_hits": d["hits"],
            "node_misses": d["misses"],
            "node_peer_hits": d["peer_hits"],
            "coalesced_waiters": d["coalesced_waiters"],
        }

    half = len(seq) // 2
    warm = run(seq[:half], 0)
    measured = run(seq[half:], half)
    # What a cache holding exactly the k most popular blobs would hit (no misses to
    # fill it), for the capacities given: the ceiling for this request sequence.
    ideal = {}
    tail = ranks[half:]
    for k in [int(x) for x in a.ideal.split(",") if x]:
        ideal[str(k)] = round(sum(1 for r in tail if r < k) / len(tail), 4)
    print(json.dumps({"keys": len(keys), "s": a.s, "warmup": warm, "measured": measured, "ideal_top_k": ideal}))


# ------------------------------------------------------------------ cold


def cmd_cold(a):
    keys = read_keys(a.keys, sizes=True)
    targets = a.targets.split(",")
    nodes = a.nodes.split(",")
    rows = []
    for key, size in keys:
        chunks = max(1, -(-size // CHUNK))
        jobs = [t for t in targets for _ in range(a.per_target)]
        results = [None] * len(jobs)
        barrier = threading.Barrier(len(jobs))

        def work(i):
            c = Client()
            barrier.wait(timeout=TIMEOUT)
            results[i] = c.get(jobs[i], f"/blobs/{key}", key)

        before = stats_sum(nodes)
        run_threads(len(jobs), work)
        d = delta(stats_sum(nodes), before)
        xc = {}
        for r in results:
            xc[r[1]] = xc.get(r[1], 0) + 1
        rows.append({
            "md5": key,
            "size": size,
            "chunks": chunks,
            "clients": len(jobs),
            "failed": sum(1 for r in results if r[0] != 200 or not r[3] or r[2] != size),
            "store_gets": d["store_gets"],
            "store_heads": d["store_heads"],
            "store_bytes_read": d["store_bytes_read"],
            "x_cache": xc,
        })
    print(json.dumps({"blobs": rows}))


# ------------------------------------------------------------------ owner


def cmd_owner(a):
    c = get_json(f"{a.node}/cluster?md5={a.md5}")
    owner = c["owner"]
    others = [m for m in c["order"] if m != owner]
    print(json.dumps({"owner": owner, "non_owner": others[0] if others else None, "order": c["order"]}))


# ------------------------------------------------------------------ latency


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk_once(url, secs):
    out = subprocess.run(
        ["wrk", "-t1", "-c1", f"-d{secs}s", "--latency", "--timeout", "10s", url],
        capture_output=True, text=True, timeout=secs + 30, check=True,
    ).stdout
    pct = {m.group(1): float(m.group(2)) * UNITS[m.group(3)]
           for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": pct["50"], "p99_ms": pct["99"], "rps": rps, "non2xx": int(errors.group(1)) if errors else 0}


def cmd_latency(a):
    urls = {"local": a.local, "forwarded": a.forwarded}
    runs = {k: [] for k in urls}
    for _ in range(a.runs):  # alternate, so drift of the machine hits both alike
        for name, url in urls.items():
            runs[name].append(wrk_once(url, a.seconds))
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rs), 3),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 3),
            "rps": round(statistics.median(r["rps"] for r in rs)),
            "non2xx": sum(r["non2xx"] for r in rs),
            "p50_runs": [r["p50_ms"] for r in rs],
        }
    out["added_p50_ms"] = round(out["forwarded"]["p50_ms"] - out["local"]["p50_ms"], 3)
    out["added_p99_ms"] = round(out["forwarded"]["p99_ms"] - out["local"]["p99_ms"], 3)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("seed")
    s.add_argument("--dir", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, required=True)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--out", required=True)

    s = sub.add_parser("sweep")
    s.add_argument("--keys", required=True)
    s.add_argument("--targets", required=True)
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--verify", action="store_true")

    s = sub.add_parser("count")
    s.add_argument("--keys", required=True)
    s.add_argument("--nodes", required=True)
    s.add_argument("--concurrency", type=int, default=4)

    s = sub.add_parser("zipf")
    s.add_argument("--keys", required=True)
    s.add_argument("--targets", required=True)
    s.add_argument("--nodes", required=True)
    s.add_argument("--requests", type=int, required=True)
    s.add_argument("--s", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--ideal", default="")
    s.add_argument("--verify", action="store_true")

    s = sub.add_parser("cold")
    s.add_argument("--keys", required=True)
    s.add_argument("--targets", required=True)
    s.add_argument("--nodes", required=True)
    s.add_argument("--per-target", type=int, default=4)

    s = sub.add_parser("owner")
    s.add_argument("--node", required=True)
    s.add_argument("--md5", required=True)

    s = sub.add_parser("latency")
    s.add_argument("--local", required=True)
    s.add_argument("--forwarded", required=True)
    s.add_argument("--runs", type=int, default=3)
    s.add_argument("--seconds", type=int, default=4)

    a = p.parse_args()
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
