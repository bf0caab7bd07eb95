"""Run a benchmark's implementations in fresh processes, interleaved round by round.

This shared 2-core machine drifts by tens of percent over minutes: the same wav2vec2-base step
measured 3.2 s and 4.8 s half an hour apart. Running ours and the alternative one after the
other, round by round with the order reversed every other round, exposes both to the same drift,
so the ratio of their medians holds where a single pair of runs did not. Each run is a fresh
process so its peak memory is its own.
"""

import json
import statistics
import subprocess


def run_interleaved(command, impls, rounds, label):
    """command(impl) -> argv of a process whose last stdout line is a JSON object with "step_s".
    Returns {impl: (median step seconds, the run nearest the median, peak GB over runs, all steps)},
    leaving out an implementation whose every run failed (the failures are printed)."""
    runs = {impl: [] for impl in impls}
    for round_ in range(rounds):
        for impl in (impls if round_ % 2 == 0 else impls[::-1]):
            out = subprocess.run(command(impl), capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{label} {impl}: failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")
                continue
            runs[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for impl, results in runs.items():
        if results:
            median = statistics.median(r["step_s"] for r in results)
            nearest = min(results, key=lambda r: abs(r["step_s"] - median))
            summary[impl] = (median, nearest, max(r["peak_gb"] for r in results), [r["step_s"] for r in results])
    return summary
