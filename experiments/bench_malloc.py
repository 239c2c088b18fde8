"""``make bench-malloc``: the MNIST meta-step under each allocator, in alternating processes.

Each round starts one process per setting (system malloc, the Makefile's malloc tunables,
tcmalloc when installed or fetched by the Makefile) that times ``make bench``'s MNIST
meta-step row (median of 21 calls alternated with a matmul) and counts its minor page faults;
settings alternate within a round so that all see the same machine. Writes
``results/bench/malloc.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import statistics
import subprocess
import sys

from metaopt.evaluate import git_commit

# The Makefile's MALLOC_TUNABLES (kept equal; tests/test_bench.py checks it).
TUNABLES = ("glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=33554432:"
            "glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456:"
            "glibc.malloc.hugetlb=1")
# The system's tcmalloc, else the one the Makefile fetches into .cache/malloc.
TCMALLOC = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4",
            ".cache/malloc/usr/lib/*/libtcmalloc_minimal.so.4")

WORKER = """
import json, resource
from experiments.bench import bench_meta_step, mnist_problem
from metaopt.evaluate import malloc_description
row = bench_meta_step("mnist", *mnist_problem(), 1, 20, {reps}, 2048)
print("BENCH-MALLOC " + json.dumps({{"malloc": malloc_description(), "seconds": row["seconds"],
      "fraction_of_matmul": row["fraction_of_matmul"],
      "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}}), flush=True)
"""


def settings() -> dict[str, dict[str, str]]:
  """Environment overrides per allocator setting (tcmalloc only when installed or fetched)."""
  base = {"GLIBC_TUNABLES": "", "LD_PRELOAD": ""}
  out = {"system": base, "tunables": {**base, "GLIBC_TUNABLES": TUNABLES}}
  found = [path for pattern in TCMALLOC for path in sorted(glob.glob(pattern))]
  if found:
    out["tcmalloc"] = {**base, "LD_PRELOAD": os.path.abspath(found[0]),
                       "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2 ** 40)}
  return out


def run_once(env: dict[str, str], reps: int) -> dict:
  """One worker process with ``env`` over the current environment; its parsed result."""
  full = {**os.environ, **env}
  for key in [k for k, v in env.items() if v == ""]:
    full.pop(key, None)
  out = subprocess.run([sys.executable, "-c", WORKER.format(reps=reps)], env=full,
                       capture_output=True, text=True, check=True)
  line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH-MALLOC "))
  return json.loads(line.split(" ", 1)[1])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--reps", type=int, default=21)
  parser.add_argument("--out", default="results/bench/malloc.json")
  args = parser.parse_args(argv)
  runs = {name: [] for name in settings()}
  for r in range(args.rounds):
    for name, env in settings().items():
      runs[name].append(run_once(env, args.reps))
      m = runs[name][-1]
      print(f"round {r + 1} {name:<9} {m['seconds'] * 1e3:7.1f} ms  "
            f"{100 * m['fraction_of_matmul']:.1f}% of matmul  "
            f"{m['minor_page_faults']:>9,} page faults  ({m['malloc']})", flush=True)
  result = {"commit": git_commit(), "cpu_count": os.cpu_count(), "rounds": args.rounds,
            "settings": {}}
  for name, ms in runs.items():
    result["settings"][name] = {
        "malloc": ms[0]["malloc"], "runs": ms,
        "median_seconds": statistics.median(m["seconds"] for m in ms),
        "median_fraction_of_matmul": statistics.median(m["fraction_of_matmul"] for m in ms),
        "median_minor_page_faults": statistics.median(m["minor_page_faults"] for m in ms)}
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  for name, s in result["settings"].items():
    print(f"{name:<9} median {s['median_seconds'] * 1e3:.1f} ms, "
          f"{s['median_minor_page_faults']:,.0f} page faults")
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
