"""Human-readable summaries of evaluation reports: markdown tables, model first.

A row per model or baseline, so the reader sees at once whether the model
beats the simple things. Used by `seqcast train`, `seqcast evaluate` and the
benchmarks, so every place prints the same table.
"""
from __future__ import annotations

RANK_COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50")
FORECAST_COLUMNS = ("MSE", "MAE", "RMSE")


def _table(title: str, rows: dict[str, dict], columns: tuple[str, ...]) -> list[str]:
    lines = [f"**{title}**", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        cells = [f"{values[c]:.4f}" if c in values else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _rows(block: dict) -> dict[str, dict]:
    return {k: v for k, v in block.items() if isinstance(v, dict)}


def format_report(report: dict) -> str:
    """Markdown for one `training.evaluate.evaluate` report."""
    lines: list[str] = []
    for key, label in (("items", "Recommendations, window items excluded (as served)"),
                       ("items_incl_history", "Recommendations, window items kept")):
        if key in report:
            block = report[key]
            lines += _table(f"{label}: {block['windows']} {report.get('split', 'test')} users",
                            _rows(block), RANK_COLUMNS)
    if "forecast" in report:
        block = report["forecast"]
        for unit in ("scaled", "original_units"):
            lines += _table(f"Forecast H={block['horizon']}, {unit.replace('_', ' ')}: {block['windows']} windows",
                            block[unit], FORECAST_COLUMNS)
    return "\n".join(lines)


def verdict(report: dict) -> list[str]:
    """One line per head: does the model beat every baseline on the headline metric?"""
    out = []
    if "items" in report:
        rows = _rows(report["items"])
        best = max((n for n in rows if n != "model"), key=lambda n: rows[n]["NDCG@10"])
        beats = rows["model"]["NDCG@10"] > rows[best]["NDCG@10"]
        out.append(f"items: model NDCG@10 {rows['model']['NDCG@10']:.4f} vs best baseline {best} "
                   f"{rows[best]['NDCG@10']:.4f}: {'model wins' if beats else 'baseline wins'}")
    if "forecast" in report:
        rows = report["forecast"]["scaled"]
        best = min((n for n in rows if n != "model"), key=lambda n: rows[n]["MSE"])
        beats = rows["model"]["MSE"] < rows[best]["MSE"]
        out.append(f"forecast: model MSE {rows['model']['MSE']:.4f} vs best baseline {best} "
                   f"{rows[best]['MSE']:.4f}: {'model wins' if beats else 'baseline wins'}")
    if "selection" in report:  # training.selection: what the forecast head serves, chosen on validation
        chosen = report["selection"]
        out.append(f"forecast head serves {chosen['served']}: {chosen['reason']}")
    return out
