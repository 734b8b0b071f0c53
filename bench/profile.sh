#!/usr/bin/env bash
# profile.sh: where the CPU goes while a benchmark scenario runs. Attaches `perf record`
# (software cpu-clock sampling: this machine kind has no hardware counters) to every
# process whose command line matches PATTERN for SECONDS, then prints the share of samples
# per process name, per thread name and per cost category (crypto, TLS, HTTP/2 + gRPC,
# RocksDB, allocator, memory copies, serialisation, openraft, tokio, kernel network,
# kernel scheduling, ...), and the top symbols.
#
# Usage (as root, while a run is in its measured phase; see BENCHMARKS.md):
#   bench/profile.sh PATTERN SECONDS OUT_DIR
#   e.g. bench/profile.sh 'sealpost node --config|sealpost-bench' 15 /tmp/prof-log
#        bench/profile.sh '/usr/bin/etcd|sealpost-bench' 15 /tmp/prof-etcd
# Needs `perf` (Debian linux-perf) and python3. Writes OUT_DIR/perf.data and
# OUT_DIR/breakdown.txt.
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: profile.sh PATTERN SECONDS OUT_DIR" >&2; exit 2; }
pattern="$1" secs="$2" out="$3"
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 1 && "$secs" -le 600 ]] \
  || { echo "profile.sh: SECONDS must be 1 to 600, not '$secs'" >&2; exit 2; }
command -v perf >/dev/null || { echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$out"
# Processes to sample: every match but this script, its pgrep and perf itself.
pids="$(pgrep -f -- "$pattern" | grep -vx "$$" || true)"
pids="$(for p in $pids; do
  comm="$(cat "/proc/$p/comm" 2>/dev/null || true)"
  case "$comm" in bash|pgrep|perf|timeout|profile.sh|"") ;; *) echo "$p" ;; esac
done | paste -sd, -)"
[[ -n "$pids" ]] || { echo "profile.sh: no process matches '$pattern'" >&2; exit 1; }
echo "profile.sh: sampling pids $pids for $secs s" >&2
# Which process each thread belongs to (perf reports threads), read while they run.
tasks() {
  local p t
  for p in ${pids//,/ }; do
    for t in /proc/"$p"/task/*; do
      [[ -e "$t" ]] && echo "${t##*/} $p $(cat "/proc/$p/comm" 2>/dev/null || echo "?")"
    done
  done
}
tasks >"$out/threads.txt"
timeout $((secs + 30)) perf record -F 499 -e cpu-clock -o "$out/perf.data" -p "$pids" -- sleep "$secs" \
  >/dev/null 2>"$out/perf-record.log" || { cat "$out/perf-record.log" >&2; exit 1; }
tasks >>"$out/threads.txt"

perf report -i "$out/perf.data" --no-children --sort pid,comm,dso,sym --stdio -F overhead,pid,comm,dso,sym 2>/dev/null \
  | THREADS="$out/threads.txt" python3 -c '
import os, re, sys, collections
owner = {}
for l in open(os.environ["THREADS"]):
    parts = l.split()
    if len(parts) >= 3: owner[parts[0]] = f"{parts[2]} ({parts[1]})"
# Cost categories by symbol (first match wins), then by shared object.
CATS = [
    ("crypto: HPKE, Ed25519, SHA-256", r"curve25519|ed25519|x25519|chacha|poly1305|sha2::|sha256|hpke|aes|ghash|fiat|scalar|edwards|montgomery"),
    ("TLS (rustls, ring)", r"rustls|ring::|ring_core|aes_gcm|gcm_|ChaCha20_ctr32|x25519_fe"),
    ("HTTP/2 + gRPC (h2, hyper, tonic, tower, prost)", r"\bh2::|hyper|tonic|tower|prost|axum|http::|bytes::"),
    ("RocksDB", r"rocksdb|LZ4_|ZSTD_|crc32c|InlineSkipList|MemTable|BlockBuilder|Compaction|WriteBatch"),
    ("allocator (mimalloc, malloc)", r"\bmi_|_mi_|malloc|free\b|cfree|__libc_|realloc"),
    ("memory copies", r"memmove|memcpy|memset|memcmp|__memc"),
    ("serialisation (bincode, serde)", r"bincode|serde"),
    ("openraft", r"openraft"),
    ("sealpost code", r"sealpost"),
    ("tokio runtime", r"tokio::|parking_lot|futures_"),
    ("kernel: network", r"tcp_|ip_|skb|sock|net_|inet|__dev_queue|loopback|napi|softirq|netif"),
    ("kernel: scheduling, futex, wake-ups", r"sched|futex|schedule|finish_task_switch|wake|_raw_spin|try_to_wake|select_task|enqueue|dequeue|pick_next|switch_|idle"),
    ("kernel: files, fsync, page cache", r"ext4|jbd2|xfs|filemap|folio|blk_|bio|iomap|writeback|fsync|fdatasync|vfs_|page_cache|copy_folio|iowrite|virtio"),
]
proc_tot = collections.Counter(); thread_tot = collections.Counter(); cat_tot = collections.Counter(); sym_tot = collections.Counter()
total = 0.0
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(\d+):(\S+)\s+(\S+)\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
    if not m: continue
    pct, pid, comm, tcomm, dso, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5), m.group(6).strip()
    total += pct
    proc_tot[owner.get(pid, f"thread {pid}")] += pct
    thread_tot[tcomm] += pct
    kernel = dso.startswith("[kernel")
    cat = None
    for name, rx in CATS:
        if name.startswith("kernel") != kernel: continue
        if re.search(rx, sym): cat = name; break
    if cat is None:
        cat = "kernel: other" if kernel else ("other: " + dso)
    cat_tot[cat] += pct
    sym_tot[f"{dso} {sym}"[:110]] += pct
def show(title, c, n):
    print(f"\n{title}")
    for k, v in c.most_common(n): print(f"  {v:6.2f}%  {k}")
print(f"samples attributed: {total:.1f}%")
show("by process", proc_tot, 20)
show("by thread name", thread_tot, 12)
show("by category", cat_tot, 30)
show("top symbols", sym_tot, 25)
' | tee "$out/breakdown.txt"
