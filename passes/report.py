"""The rewrite report: JSON is the source; Markdown and HTML (with inline SVG plots) are rendered from it."""

from __future__ import annotations

import html
import json

REPORT_FORMAT = 1


def empty_report(mode: str) -> dict:
    return {"format": REPORT_FORMAT, "mode": mode, "rewrites": [], "declined": [], "knobs": {},
            "calibration": None, "totals": {}}


def add_totals(report: dict, baseline_bytes: float = 0.0, baseline_rounds: float = 0.0) -> dict:
    """Totals over rewritten nodes; ``baseline_*`` is the estimated cost of everything not rewritten."""
    rewrites = report["rewrites"]
    report["totals"] = {
        "rewritten": len(rewrites),
        "declined": len(report["declined"]),
        "est_bytes_before": sum(r["est_bytes_before"] for r in rewrites),
        "est_bytes_after": sum(r["est_bytes_after"] for r in rewrites),
        "est_rounds_before": sum(r["est_rounds_before"] for r in rewrites),
        "est_rounds_after": sum(r["est_rounds_after"] for r in rewrites),
        "error_max": max((r["error_max"] for r in rewrites), default=0.0),
    }
    return report


def charge_estimates(rewrites: list[dict], model, estimate: dict) -> None:
    """Set every rewrite entry's estimated bytes and rounds from the whole-model estimate of the final graph
    (passes/cost.py: estimate_model): its protocol node's, plus those of the nodes later passes added for it
    (marked with passes.graph_view.COST_OF). So each entry is priced by the same rules as the whole model, whose
    estimate is checked against SPU's profile, and no pass counts its additions by hand."""
    from passes.graph_view import COST_OF
    owner = {n.name: m.value for n in model.graph.node for m in n.metadata_props if m.key == COST_OF}
    sums: dict[str, list[float]] = {}
    for node in estimate["nodes"]:
        total = sums.setdefault(owner.get(node["name"], node["name"]), [0.0, 0.0])
        total[0] += node["bytes"]
        total[1] += node["rounds"]
    for entry in rewrites:
        if entry["node"] in sums:
            entry["est_bytes_after"], entry["est_rounds_after"] = (float(v) for v in sums[entry["node"]])


def _mib(value: float) -> str:
    return f"{value / 2**20:.2f}"


def render_markdown(report: dict) -> str:
    t = report.get("totals", {})
    out = [f"# cipherdm rewrite report ({report['mode']})", ""]
    calib = report.get("calibration") or {}
    if calib:
        out += [f"Calibration: {calib.get('note', '')}", ""]
    if report.get("budget") is not None:
        budgets = report.get("budgets") or {}
        tightened = {op: b for op, b in budgets.items() if b.get("tightened")}
        out += [f"Error budget per node: {report['budget']:g}"
                + "".join(f"; {b['tightened']} of {b['nodes']} {op} nodes tightened (down to {b['min']:.3g})"
                          for op, b in tightened.items()), ""]
    if (report.get("fixed_point") or {}).get("note"):
        out += [f"Fixed point: {report['fixed_point']['note']}", ""]
    check = report.get("model_check") or {}
    if check:
        out += [f"Whole-model check: {check.get('note', '')}", ""]
        held = check.get("validation")
        if held:
            verdict = "" if "met" not in held else (" (within the target)" if held["met"] else
                                                   " (ABOVE the target: the choice was tuned on other inputs)")
            out += [f"Held-out validation ({held.get('source') or 'validation inputs'}, {held['cases']} case(s), not "
                    f"used by the choice): {held['error']:.3g} x output std at worst (case {held['worst_case']})"
                    f"{verdict}; per case " + ", ".join(f"{e:.3g}" for e in held["per_case"]) + ".", ""]
        if check.get("attempts"):
            out += ["| attempt | nodes tightened | model error / std | nodes with the largest error of their own |",
                    "|---|---|---|---|"]
            for i, a in enumerate(check["attempts"], 1):
                worst = ", ".join(f"{w['node']} ({w['op']}) {w['error']:.3g}" for w in a["worst_nodes"][:4]) or "-"
                out.append(f"| {i} | {a['tightened_nodes']} | {a['error']:.3g} | {worst} |")
            out.append("")
        steps = (check.get("relax") or {}).get("steps") or []
        if steps:
            out += ["Relax (loosen tightened budgets while the error stays within the target):", "",
                    "| step | nodes loosened | est. MiB saved | model error / std | kept |", "|---|---|---|---|---|"]
            out += [f"| {i} | {len(s['nodes'])} | {_mib(s['est_bytes_saved'])} | {s['error']:.3g} | "
                    f"{'yes' if s['kept'] else 'no'} |" for i, s in enumerate(steps, 1)]
            out.append("")
    for h in report.get("scales_hoisted") or []:
        what = "Scales of both operands merged" if len(h["nodes"]) == 3 else "Scale moved before the product"
        out += [f"{what}: {h['nodes'][0]} ({h['op']} by a constant) now scales "
                f"{h['operand']} ({h['elements_after']} elements instead of {h['elements_before']}).", ""]
    if t:
        saved = t["est_bytes_before"] / t["est_bytes_after"] if t.get("est_bytes_after") else float("inf")
        out += [f"{t['rewritten']} nodes rewritten, {t['declined']} declined. Estimated nonlinear-op traffic "
                f"{_mib(t['est_bytes_before'])} MiB -> {_mib(t['est_bytes_after'])} MiB ({saved:.1f}x), rounds "
                f"{t['est_rounds_before']:g} -> {t['est_rounds_after']:g}; largest node error {t['error_max']:.3g}.",
                ""]
    if report.get("model_estimate"):
        d, r = report["model_estimate"]["direct"], report["model_estimate"]["rewritten"]
        out += [f"Whole-model estimate (ABY3/FM64): direct {_mib(d['bytes'])} MiB, {d['rounds']:.0f} rounds -> "
                f"rewritten {_mib(r['bytes'])} MiB, {r['rounds']:.0f} rounds.", ""]
        if report.get("network"):
            out += [f"Protocols ranked by their estimated time on {report['network']['description']} (a round costs "
                    f"as much as {_mib(report['network']['round_in_bytes'])} MiB): direct {d['seconds']:.3g} s -> "
                    f"rewritten {r['seconds']:.3g} s of communication.", ""]
    if report.get("knobs"):
        out += ["SPU knobs: " + ", ".join(f"`{k}={v}`" for k, v in report["knobs"].items()), ""]
    out += ["## Rewrites", "",
            "| pattern | nodes | protocol | interval | max err | mean err | MiB before | MiB after | rounds before | rounds after |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rewrites"]:
        nodes = ", ".join(r["nodes"][:3]) + (f" (+{len(r['nodes']) - 3})" if len(r["nodes"]) > 3 else "")
        lo, hi = r["interval"]
        out.append(f"| {r['pattern']} | {nodes} | {r['protocol']} | [{lo:.3g}, {hi:.3g}] | {r['error_max']:.2e} | "
                   f"{r['error_mean']:.2e} | {_mib(r['est_bytes_before'])} | {_mib(r['est_bytes_after'])} | "
                   f"{r['est_rounds_before']:g} | {r['est_rounds_after']:g} |")
    fused = [r for r in report["rewrites"] if r.get("fusion", "").startswith("normalised")]
    if fused:
        out += ["", f"Attention normalised after the value MatMul ((e @ V) / rowsum(e)): {len(fused)} softmax "
                    "node(s): " + ", ".join(r["node"] for r in fused)]
    prescaled_nodes = [r for r in report["rewrites"] if r.get("prescale", "").startswith("input scale")]
    if prescaled_nodes:
        out += ["", f"Softmax input scale folded into the score product (exp in monic form, no coefficient "
                    f"truncations): {len(prescaled_nodes)} node(s): " + "; ".join(r["prescale"] for r in prescaled_nodes)]
    bounded = [r for r in report["rewrites"] if r.get("query_bounds", "").startswith("rows bounded")]
    if bounded:
        out += ["", f"Softmax rows bounded on the queries (S = q (Kc Kc^T) q^T, no product per score): "
                    f"{len(bounded)} node(s): " + ", ".join(r["node"] for r in bounded)]
    boxed = [r for r in report["rewrites"] if r.get("box_bound")]
    if boxed:
        out += ["", f"Softmax rows shifted by a bound on their maximum from the keys' bounding box (no max tree, no "
                    f"comparison per score): {len(boxed)} node(s): " + "; ".join(f"{r['node']} ({r['box_bound']})"
                                                                         for r in boxed)]
    missed = [r for r in report["rewrites"] if r.get("note")]
    if missed:
        out += ["", "Budget missed (the closest protocol, more accurate and cheaper than SPU's own expression):", ""]
        out += [f"- {r['pattern']} {r['node']}: {r['note']}" for r in missed]
    out += ["", "## Declined", "", "| pattern | nodes | reason |", "|---|---|---|"]
    for d in report["declined"]:
        out.append(f"| {d['pattern']} | {', '.join(d['nodes'][:4])} | {d['reason']} |")
    if report.get("measured"):
        out += ["", "## Measured (SPU profile)", "", "```json", json.dumps(report["measured"], indent=2), "```"]
    return "\n".join(out) + "\n"


def _svg_bars(title: str, groups: dict[str, tuple[float, float]], labels=("before", "after")) -> str:
    width, row = 560, 22
    height = 40 + row * len(groups)
    top = max((max(v) for v in groups.values()), default=1.0) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="4" y="16" font-size="13">{html.escape(title)} (grey: {labels[0]}, blue: {labels[1]})</text>']
    for i, (name, (before, after)) in enumerate(groups.items()):
        y = 28 + i * row
        parts.append(f'<text x="4" y="{y + 13}" font-size="11">{html.escape(name)}</text>')
        parts.append(f'<rect x="110" y="{y}" width="{400 * before / top:.1f}" height="8" fill="#bbb"/>')
        parts.append(f'<rect x="110" y="{y + 9}" width="{400 * after / top:.1f}" height="8" fill="#3b7dd8"/>')
        parts.append(f'<text x="{515}" y="{y + 13}" font-size="10">{_mib(before)}/{_mib(after)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_curve(title: str, curve: list[list[float]]) -> str:
    width, height, pad = 360, 160, 30
    xs = [p[0] for p in curve]
    ys = [p[1] for p in curve]
    x0, x1 = min(xs), max(xs)
    y1 = max(max(ys), 1e-12)
    points = " ".join(f"{pad + (x - x0) / ((x1 - x0) or 1) * (width - 2 * pad):.1f},"
                      f"{height - pad - y / y1 * (height - 2 * pad):.1f}" for x, y in curve)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<text x="4" y="14" font-size="11">{html.escape(title)}: |error| (max {y1:.2e}) over [{x0:.3g}, {x1:.3g}]</text>'
            f'<polyline fill="none" stroke="#d83b3b" stroke-width="1.2" points="{points}"/>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/></svg>')


def render_html(report: dict) -> str:
    by_class: dict[str, list[float]] = {}
    for r in report["rewrites"]:
        entry = by_class.setdefault(r["pattern"], [0.0, 0.0])
        entry[0] += r["est_bytes_before"]
        entry[1] += r["est_bytes_after"]
    curves, seen = [], set()
    for r in report["rewrites"]:
        if r.get("curve") and r["protocol"] not in seen:
            seen.add(r["protocol"])
            curves.append(_svg_curve(f"{r['pattern']} / {r['protocol']}", r["curve"]))
    body = _markdown_to_html(render_markdown(report))
    plots = _svg_bars("Estimated MiB per op class", {k: tuple(v) for k, v in by_class.items()}) if by_class else ""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>cipherdm report</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}</style></head><body>"
            f"{body}<h2>Plots</h2>{plots}<div>{''.join(curves)}</div></body></html>")


def _markdown_to_html(markdown: str) -> str:
    out, in_table, in_code = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
            else:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    return "\n".join(out)
