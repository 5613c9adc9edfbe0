"""Time a secure aggregation round (Bonawitz et al. 2017) against a plain sum.

Run by hand (never from the tests):

    .venv/bin/python bench/secagg.py [--reps 3] [--cases 10x7850,10x100000,50x100000,100x100000]
        [--neighbors 100x100000x16] [--dropped 1]

For each case (clients x parameters[ x neighbours]) it times, serially on one
thread, on float32 updates drawn once:

- ``plain``: ``fedr.aggregators.sum().aggregate(...)`` of the updates (the C++ kernel);
- ``secure``: a whole secure round of ``fedr.privacy.secure_sum()``:
  ``start_round`` (key advertisement, Shamir sharing and AES-GCM encryption of
  every client's secrets), every client's ``client_step`` (quantization and
  masking: one ChaCha20 stream per neighbour plus the self mask) and
  ``aggregate`` (unmasking: decryption of the shares, Lagrange interpolation,
  the self masks of the survivors and the dropped clients' pairwise masks),
  with ``--dropped`` clients leaving after key sharing;

and prints the medians in ms (total and per phase), the ratio secure / plain
and the per-client masking time (what one client pays in its own task; in a
round the clients mask in parallel, on their own machines).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from types import SimpleNamespace

import numpy as np

from fedr import aggregators
from fedr.privacy._secagg import secure_sum

DEFAULT_CASES = "10x7850,10x100000,50x100000,100x100000"
DEFAULT_NEIGHBORS = "100x100000x16"


def _parse(text: str) -> list[tuple[int, int, int | None]]:
    out = []
    for item in filter(None, text.split(",")):
        parts = [int(p) for p in item.split("x")]
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else None))
    return out


def _outputs(ids, deltas, values):
    return [SimpleNamespace(client_id=c, delta=v, num_examples=1) for c, v in zip(ids, values, strict=True)]


def run_case(n: int, size: int, neighbors: int | None, reps: int, dropped: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    deltas = rng.normal(0, 0.05, (n, size)).astype(np.float32)
    ids = [f"c{i}" for i in range(n)]
    plain_agg = aggregators.sum()
    plain_outputs = _outputs(ids, deltas, list(deltas))
    plain_times = []
    for _ in range(max(reps, 5)):
        t = time.perf_counter()
        plain = plain_agg.aggregate((), plain_outputs).update
        plain_times.append(time.perf_counter() - t)
    agg = secure_sum(clip_range=1.0, neighbors=neighbors)
    keep = list(range(dropped, n))
    phases: dict[str, list[float]] = {"setup": [], "mask": [], "unmask": [], "total": []}
    error = 0.0
    for rep in range(reps):
        t0 = time.perf_counter()
        ctx = agg.start_round((), ids, seed=np.random.SeedSequence(rep))
        t1 = time.perf_counter()
        masked = [agg.client_step((), deltas[i], client_id=ids[i], num_examples=1, context=ctx) for i in keep]
        t2 = time.perf_counter()
        result = agg.aggregate((), _outputs([ids[i] for i in keep], None, masked), context=ctx)
        t3 = time.perf_counter()
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
            phases[key].append(value)
        expected = deltas[keep].astype(np.float64).sum(axis=0)
        error = max(error, float(np.abs(result.update - expected).max()))
    med = {k: statistics.median(v) * 1e3 for k, v in phases.items()}
    med["plain"] = statistics.median(plain_times) * 1e3
    med["mask_per_client"] = med["mask"] / len(keep)
    med["error"] = error
    med["threshold"] = ctx.config.threshold
    assert plain.shape == (size,)
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--neighbors", default=DEFAULT_NEIGHBORS, help="cases with a neighbour graph, NxPxK")
    parser.add_argument("--dropped", type=int, default=1, help="clients that drop after sharing keys")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, numpy {np.__version__}, reps {args.reps}, "
          f"dropped {args.dropped}")
    header = (
        "| clients | params | neighbours | t | plain ms | secure ms | setup ms | mask ms (per client) "
        "| unmask ms | secure / plain | max error |"
    )
    print(header)
    print("|" + "---:|" * 10 + "---:|")
    for n, size, k in _parse(args.cases) + _parse(args.neighbors):
        r = run_case(n, size, k, args.reps, args.dropped)
        print(
            f"| {n} | {size:,} | {k if k else 'all'} | {r['threshold']} | {r['plain']:.2f} | {r['total']:.0f} | "
            f"{r['setup']:.0f} | {r['mask']:.0f} ({r['mask_per_client']:.1f}) | {r['unmask']:.0f} | "
            f"{r['total'] / r['plain']:.0f} | {r['error']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
