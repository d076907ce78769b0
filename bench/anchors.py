"""Published numbers (issue 4) and the markdown table that puts seqcast next to them.

Anchors are test MSE/MAE on z-scored data (ETT, multivariate channel-independent
setting of PatchTST and DLinear) and full-ranking HR@10/NDCG@10 (Beauty). The
table marks where each one comes from; rows measured in the run carry the
command that produced them.
"""
from __future__ import annotations

ETT = {
    "etth1": {"PatchTST/64 (L=512), the issue-13 bar": {96: (.370, .400), 192: (.413, .429), 336: (.422, .440), 720: (.447, .468)},
              "DLinear (L=336), the issue-4 bar": {96: (.375, .399), 192: (.405, .416), 336: (.439, .443),
                                           720: (.472, .490)},
              "repeat last value": {96: (1.295, .713), 192: (1.325, .733), 336: (1.323, .744),
                                    720: (1.339, .756)}},
    "ettm1": {"PatchTST/42 (L=336), the issue-13 bar": {96: (.290, .342), 192: (.332, .369), 336: (.366, .392), 720: (.420, .424)},
              "DLinear (L=336), the issue-4 bar": {96: (.299, .343), 192: (.335, .365), 336: (.369, .386),
                                           720: (.425, .421)}},
}
DLINEAR_MSE = {name: {h: v[0] for h, v in rows["DLinear (L=336), the issue-4 bar"].items()} for name, rows in ETT.items()}
PATCHTST_MSE = {name: next({h: v[0] for h, v in values.items()} for label, values in rows.items()
                           if label.startswith("PatchTST")) for name, rows in ETT.items()}
RANKING = {"beauty": {"SASRec (as reported)": (.0605, .0318), "HSTU (as reported), the bar": (.0704, .0389),
                      "SASRec+SS (re-run, same split)": (.0921, .0531),
                      "eSASRec (re-run, same split)": (.0928, .0523)}}
SOURCES = {"etth1": "published (PatchTST and DLinear papers, via issue 4)",
           "ettm1": "published (PatchTST and DLinear papers, via issue 4)",
           "beauty": "published (blondered/transformer_benchmark README, via issue 4)"}


def _cell(values: dict | None) -> str:
    return f"{values['MSE']:.3f} / {values['MAE']:.3f}" if values else ""


def _served(metrics: dict) -> str:
    """What the forecast head serves (training/selection.py): model, a baseline, or a blend."""
    served = metrics.get("selection", {}).get("served", "model")
    if served.startswith("blend:"):
        _, base, weight = served.split(":")
        return f"blend, {float(weight):.0%} {base}"
    return served.replace("_", " ")


def forecast_table(result: dict) -> str:
    runs = result["runs"]
    horizons = sorted({r["horizon"] for r in runs})
    head = "| model | " + " | ".join(f"H={h} MSE / MAE" for h in horizons) + " | wall (s) | command |"
    lines = [f"**{result['dataset']}**: test MSE / MAE on z-scored data, every test window, all 7 channels",
             "", head, "|---" * (len(horizons) + 3) + "|"]
    by = {(r["arch"], r["horizon"]): r for r in runs}
    archs = list(dict.fromkeys(r["arch"] for r in runs))
    cmd = f"`{result['command']}`"
    for arch in archs:
        cells = [_cell(by[(arch, h)]["metrics"]["model"]) if (arch, h) in by else "" for h in horizons]
        wall = sum(by[(arch, h)]["seconds"] for h in horizons if (arch, h) in by)
        own = next(f"`{r['command']}`" for r in runs if r["arch"] == arch) if "command" in runs[0] else cmd
        lines.append(f"| seqcast {arch} (patch + RevIN + linear head) | " + " | ".join(cells)
                     + f" | {wall:.0f} | {own} |")
        served = [_served(by[(arch, h)]["metrics"]) if (arch, h) in by else "" for h in horizons]
        lines.append("| ... what it serves (chosen on validation) | " + " | ".join(served) + f" | | {own} |")
    first = runs[0]["metrics"]
    for name in [k for k in first if k not in ("model", "windows", "selection")]:
        cells = [_cell(by[(archs[0], h)]["metrics"].get(name)) for h in horizons]
        label = "linear start (the ridge both encoders start from)" if name == "ridge_warm_start" \
            else f"{name} (this run)"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | | {cmd} |")
    for name, values in ETT.get(result["dataset"], {}).items():
        cells = [f"{values[h][0]:.3f} / {values[h][1]:.3f}" if h in values else "" for h in horizons]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | | {SOURCES[result['dataset']]} |")
    for arch in archs:
        done = [h for h in horizons if (arch, h) in by]
        mse = {h: by[(arch, h)]["metrics"]["model"]["MSE"] for h in done}
        # below = by more than float32 round-off (a served ridge start equals its float64 twin to ~1e-6)
        linear = sum(mse[h] < by[(arch, h)]["metrics"]["ridge_warm_start"]["MSE"] * (1 - 1e-4) for h in done)
        naive = sum(all(mse[h] < v["MSE"] for k, v in by[(arch, h)]["metrics"].items()
                        if k.startswith(("repeat_last", "seasonal_naive"))) for h in done)
        tuned = sum(by[(arch, h)].get("best_epoch", 0) > 0 for h in done)  # the encoder's fine-tuning was kept
        notes = [f"below its linear start on {linear}/{len(done)} (encoder fine-tuning kept on {tuned}/{len(done)})",
                 f"below both naive baselines on {naive}/{len(done)}"]
        for label, bar in (("DLinear", DLINEAR_MSE.get(result["dataset"])),
                           ("PatchTST", PATCHTST_MSE.get(result["dataset"]))):
            if bar:
                notes.append(f"at or below {label} on {sum(mse[h] <= bar[h] for h in done)}/{len(done)}")
        lines.append(f"\n{arch}: test MSE " + ", ".join(notes) + " horizons.")
    return "\n".join(lines)


def ranking_table(result: dict) -> str:
    cols = ("HR@10", "NDCG@10", "HR@50", "NDCG@50")
    lines = []
    for key, label in (("items", "history items excluded (S3Rec full ranking, as served)"),
                       ("items_incl_history", "history items kept")):
        lines += [f"**{result['dataset']}**: {result['users']} test users, {result['items']} items, "
                  f"full ranking, {label}", "", "| model | " + " | ".join(cols) + " | wall (s) | command |",
                  "|---" * (len(cols) + 3) + "|"]
        cmd = f"`{result['command']}`"
        for run in result["runs"]:
            block = run["metrics"][key]
            own = f"`{run['command']}`" if "command" in run else cmd
            lines.append(f"| seqcast {run['arch']} | " + " | ".join(f"{block['model'][c]:.4f}" for c in cols)
                         + f" | {run['seconds']:.0f} | {own} |")
        block = result["runs"][0]["metrics"][key]
        for name in [k for k, v in block.items() if isinstance(v, dict) and k != "model"]:
            lines.append(f"| {name} (this run) | " + " | ".join(f"{block[name][c]:.4f}" for c in cols)
                         + f" | | {cmd} |")
        if key == "items":
            for name, (hr, ndcg) in RANKING.get(result["dataset"], {}).items():
                lines.append(f"| {name} | {hr:.4f} | {ndcg:.4f} | | | | {SOURCES[result['dataset']]} |")
        lines.append("")
    forecast = result["runs"][0]["metrics"].get("forecast")
    if forecast:
        lines += [f"**{result['dataset']}**: next-rating forecast (H=1), z-scored MSE / MAE", "",
                  "| model | MSE | MAE |", "|---|---|---|"]
        for run in result["runs"]:
            m = run["metrics"]["forecast"]["scaled"]["model"]
            lines.append(f"| seqcast {run['arch']} | {m['MSE']:.4f} | {m['MAE']:.4f} |")
        for name, m in forecast["scaled"].items():
            if name != "model":
                lines.append(f"| {name} (this run) | {m['MSE']:.4f} | {m['MAE']:.4f} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    body = forecast_table(result) if result["kind"] == "forecast" else ranking_table(result)
    return body + f"\n\nWall time for the dataset: {result['wall_seconds']:.0f} s (seed {result['seed']})."
