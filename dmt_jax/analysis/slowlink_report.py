"""Summary of a slow-link benchmark record (``experiments/slow_link_benchmark.py``): rows, table, plot.

No flags, no JAX: ``summarize`` turns the record's raw probe and step times into one row per link
setting (bandwidths, fast/slow ratio, step medians, every DMT case's speedup over the best flat case, the
share of the best flat step that the caps add), ``markdown`` renders them, ``plot`` draws them (matplotlib), and
``remote_all_to_all_bytes`` counts the all-to-all bytes of a compiled step that leave the host.
"""

from __future__ import annotations

import statistics


def remote_all_to_all_bytes(collectives, group_size: int) -> int:
  """Per-device all-to-all bytes that leave the host: operand bytes x (remote members / members)."""
  total = 0.0
  for c in collectives:
    if c["op"] != "all-to-all" or c["scope"] != "cross_tower":
      continue
    g = next(g for g in c["groups"] if g)
    me = g[0] // group_size
    total += c["bytes"] * sum(1 for p in g if p // group_size != me) / len(g)
  return int(total)


def summarize(record, devices_per_process: int = 4) -> list[dict]:
  """One row per link setting: bandwidths, ratios, step times, speedup, cross-host share.

  Bandwidths are aggregate bytes/s of the 4 devices of one host: ``link`` per direction across the
  veth (each device sends S/2 to its remote peer), ``fast`` inside the host over the ``device`` axis
  (each device sends 3S/4 to its neighbours) as the run's own processes do it, ``inproc`` the same in a
  separate single process (in-process collectives, no gloo). Medians over the probe repetitions.
  """
  settings_ = record["settings"]
  ref = settings_.get("unthrottled", settings_.get("local"))
  inproc = record.get("inproc_probe")
  rows = []
  for x in sorted(settings_.values(), key=lambda x: (x["mbit"] is None, -1 if x["mbit"] is None else
                                                      (x["mbit"] if x["mbit"] > 0 else float("inf")))):
    b = x["probe_bytes"]
    link = devices_per_process * b / 2 / statistics.median(x["link_a2a_s"])
    fast = devices_per_process * b * 3 / 4 / statistics.median(x["fast_a2a_s"])
    row = {"label": x["label"], "mbit": x["mbit"], "fast_cap_mbit": x.get("fast_cap_mbit"),
           "link_MBps": link / 1e6, "fast_MBps": fast / 1e6, "fast_slow_ratio": fast / link}
    if inproc:
      ip = devices_per_process * b * 3 / 4 / statistics.median(inproc["inproc_a2a_s"])
      row.update(inproc_MBps=ip / 1e6, inproc_slow_ratio=ip / link)
    med = {}
    for n, t in x["times"].items():
      med[n] = statistics.median(t)
      row[n] = {"median_ms": 1e3 * med[n], "min_ms": 1e3 * min(t), "max_ms": 1e3 * max(t), "n": len(t)}
    flats = {n: v for n, v in med.items() if n.startswith("flat")}
    if flats:
      best = min(flats, key=flats.get)
      row["best_flat"] = best
      best_min = min(row[n]["min_ms"] for n in flats)
      for n in med:
        if n.startswith("dmt"):        # "<case>_speedup": best flat median / this case's median
          row[f"{n}_speedup"] = flats[best] / med[n]
          row[f"{n}_speedup_min"] = best_min / row[n]["min_ms"]
      if ref is not None and x is not ref and x["label"] != "local":
        lt = statistics.median(ref["times"][best])
        row["cross_host_share_best_flat"] = (flats[best] - lt) / flats[best]
    row["loadavg_1m"] = statistics.mean(x["loadavg_1m"])
    rows.append(row)
  return rows


def speedup_cases(cases) -> list[str]:
  """The DMT cases whose speedup over the best flat case gets a column: those with c=4."""
  return [c for c in cases if c == "dmt_c4" or c.startswith("dmt_c4_")]


def markdown(rows, cases) -> str:
  two_tier = any(r.get("fast_cap_mbit") for r in rows)
  sp_cases = speedup_cases(cases)
  head = ["link Mbit/s (cap)"] + (["intra-host Mbit/s (cap)"] if two_tier else []) + [
      "link MB/s (measured)", "fast/slow (gloo intra-host)", "fast/slow (in-memory)"] + [
      f"{c} ms" for c in cases] + [f"{c} vs best flat" for c in sp_cases] + [
      "network share of best flat step" if two_tier else "cross-host share of best flat step", "load (1 min)"]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    is_local = r["label"] == "local"
    cells = [r["label"] + (" (1 namespace)" if is_local else "")]
    if two_tier:
      cells.append(f"{r['fast_cap_mbit']:g}" if r.get("fast_cap_mbit") else "uncapped")
    cells += [f"{r['link_MBps']:.0f} (loopback)" if is_local else f"{r['link_MBps']:.1f}",
             "-" if is_local else f"{r['fast_slow_ratio']:.1f}",
             "-" if is_local or "inproc_slow_ratio" not in r else f"{r['inproc_slow_ratio']:.1f}"]
    for c in cases:
      v = r.get(c)
      cells.append(f"{v['median_ms']:.0f} [{v['min_ms']:.0f}–{v['max_ms']:.0f}]" if v else "")
    for c in sp_cases:
      sp = r.get(f"{c}_speedup")
      cells.append(f"{sp:.2f}x (vs {r['best_flat']}; on min {r[f'{c}_speedup_min']:.2f}x)" if sp else "")
    sh = r.get("cross_host_share_best_flat")
    cells.append(f"{100 * sh:.0f}%" if sh is not None else "")
    cells.append(f"{r['loadavg_1m']:.1f}")
    out.append("| " + " | ".join(cells) + " |")
  return "\n".join(out)


def plot(rows, cases, path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  link = [r for r in rows if r["mbit"]]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  for c in cases:
    xs = [r["mbit"] for r in link if c in r]
    ys = [r[c]["median_ms"] for r in link if c in r]
    lo = [r[c]["median_ms"] - r[c]["min_ms"] for r in link if c in r]
    hi = [r[c]["max_ms"] - r[c]["median_ms"] for r in link if c in r]
    line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=c)[0]
    for r in rows:   # the same case on the uncapped veth (dashed) / in one namespace (dotted)
      if r["label"] in ("unthrottled", "local") and c in r:
        ax.axhline(r[c]["median_ms"], ls="--" if r["label"] == "unthrottled" else ":", color=line.get_color(),
                   lw=0.8)
  if not link:      # only uncapped / one-namespace settings: nothing to draw against a cap
    plt.close(fig)
    return
  ax.set(xscale="log", yscale="log", xlabel="link cap, Mbit/s per direction", ylabel="step time, ms (median, min-max)",
         title="train step vs link cap (dashed: uncapped veth)")
  ax.legend(fontsize=8)
  two_tier = any(r.get("fast_cap_mbit") for r in rows)
  for c in speedup_cases(cases):
    sp = [r for r in link if f"{c}_speedup" in r]
    # One tier: the ratio varies with the cap, so it is the x axis. Two tiers: the ratio is held
    # (about) fixed, so the x axis is the cap and each point is labelled with its measured ratio.
    xs = [r["mbit"] if two_tier else r["fast_slow_ratio"] for r in sp]
    ax2.plot(xs, [r[f"{c}_speedup"] for r in sp], marker="o", label=c)
    for x, r in zip(xs, sp):
      ax2.annotate(f"{r['fast_slow_ratio']:.0f}x" if two_tier else f"{r['mbit']:g}", (x, r[f"{c}_speedup"]),
                   fontsize=7)
  ax2.axhline(1.9, ls="--", color="red", lw=0.8, label="1.9x (paper)")
  ax2.axhline(1.0, color="gray", lw=0.8)
  if two_tier:
    ax2.set(xscale="log", xlabel="link cap, Mbit/s (intra-host tier capped at fast_ratio x)",
            ylabel="DMT c=4 speedup over best flat", title="speedup vs link cap (labels: measured fast/slow)")
  else:
    ax2.set(xscale="log", xlabel="measured fast/slow bandwidth ratio", ylabel="DMT c=4 speedup over best flat",
            title="speedup vs bandwidth ratio (labels: Mbit/s)")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
