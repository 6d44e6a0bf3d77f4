"""A `Trace` for people (rich text that reads well at 80 columns) and for programs (JSON).

What belongs here: `render_trace(trace, console)` — per direction, per place (pod, node,
host), each hop on one line with the kernel objects below it and, at a netfilter hook, each
base chain and every rule the packet matched with the kernel trace's verdict — and
`trace_to_dict(trace)`, the `podnet.trace/v1` JSON document described in docs/trace.md
(field names and meanings are stable; new fields may be added). `plain_text(trace)` is the
same text without colour, for golden tests and docs.

Invariants: pure (a console is written to, nothing else); nothing a planner decided is
re-derived here.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from podnet.agent.proxy.trace_iptables import TARGET_VERDICTS
from podnet.trace.netfilter import Candidate, ChainRun
from podnet.trace.plan import Header, Hop, Trace
from podnet.trace.verify import LABELS, Verification

SCHEMA = "podnet.trace/v1"
WIDTH = 80
KIND_LABELS = {
    "send": "send",
    "route": "route",
    "netfilter": "",
    "veth": "veth",
    "bridge": "bridge",
    "neighbour": "neigh",
    "encap": "encap",
    "decap": "decap",
    "underlay": "underlay",
    "tun": "tun",
    "nat": "nat",
    "proxy": "proxy",
    "ipvs": "ipvs",
    "deliver": "deliver",
}
OUTCOME_STYLES = {
    "delivered": ("✓", "bold green"),
    "refused": ("✗", "bold yellow"),
    "rejected": ("✗", "bold red"),
    "dropped": ("✗", "bold red"),
    "left": ("→", "bold cyan"),
    "unknown": ("?", "bold yellow"),
}


def percent(probability: float) -> str:
    value = probability * 100
    return f"{value:.0f}%" if abs(value - round(value)) < 0.05 else f"{value:.1f}%"


def candidates_line(candidates: tuple[Candidate, ...], chosen: str | None) -> str:
    parts = []
    for c in candidates:
        mark = " (followed)" if c.target == chosen else ""
        parts.append(f"{c.target} {percent(c.probability)}{mark}")
    return "candidates: " + " · ".join(parts)


def _implied(rule: str, verdict: str) -> bool:
    """Whether the rule's own last words already say the verdict."""
    if rule.endswith(verdict):
        return True
    words = rule.split()
    if len(words) < 2 or words[-2] not in ("-j", "-g"):
        return False
    target = words[-1]
    return verdict in (f"jump {target}", f"goto {target}") or TARGET_VERDICTS.get(target) == verdict


def _step_text(rule: str, verdict: str) -> str:
    """A matched rule and the kernel's verdict (not repeated when the rule says it)."""
    return rule if _implied(rule, verdict) else f"{rule}  ⇒ {verdict}"


def _line(
    console: Console, indent: int, label: str, text: str, style: str = "", label_style: str = ""
) -> None:
    """One line with a hanging indent: long text wraps under itself, not under the label."""
    grid = Table.grid(padding=(0, 1))
    if indent:
        grid.add_column(width=indent, no_wrap=True)
    grid.add_column(no_wrap=True, style=label_style)
    grid.add_column(ratio=1, overflow="fold", style=style)
    grid.add_row(*([""] if indent else []), label, text)
    console.print(grid)


def _run(console: Console, run: ChainRun) -> None:
    _line(
        console,
        4,
        f"{run.table} {run.chain}",
        f"({run.kind}, priority {run.priority})",
        "dim",
        "cyan",
    )
    for step in run.steps:
        if step.index < 0:
            _line(console, 5, "", step.verdict, "dim")
            continue
        style = "red" if step.verdict == "drop" else ("green" if step.verdict == "accept" else "")
        _line(
            console,
            6,
            f"{step.chain} #{step.index + 1}",
            _step_text(step.rule, step.verdict),
            style,
        )


def _hop(console: Console, hop: Hop, chosen: str | None) -> None:
    if hop.kind == "netfilter":
        hook, _, effect = hop.what.partition(": ")
        _line(console, 2, hook, effect, "bold", "bold magenta")
        for run in hop.runs:
            _run(console, run)
        if hop.candidates:
            _line(console, 4, "", candidates_line(hop.candidates, chosen), "yellow")
        return
    label = KIND_LABELS.get(hop.kind, hop.kind)
    _line(console, 2, f"{label:<8}", hop.what)
    for obj in hop.objects:
        _line(console, 2, " " * 8, obj, "dim")
    if hop.kind in ("proxy", "ipvs") and hop.candidates:
        _line(console, 2, " " * 8, candidates_line(hop.candidates, chosen), "yellow")


def _direction(console: Console, title: str, hops: tuple[Hop, ...], chosen: str | None) -> None:
    console.print(Text(title, style="bold underline"))
    place = None
    for hop in hops:
        if hop.place != place:
            place = hop.place
            console.print(Text(f" {place}", style="bold blue"))
        _hop(console, hop, chosen)


def render_trace(trace: Trace, console: Console, lab: str = "") -> None:
    probe = trace.probe
    _line(console, 0, "trace", probe.source, "", "bold")
    _line(console, 0, "   to", probe.target, "", "bold")
    _line(console, 0, "probe", f"{probe.header}" + (f"   ({lab})" if lab else ""), "", "bold")
    _line(console, 0, " path", " → ".join(trace.path), "", "bold")
    for note in trace.notes:
        _line(console, 0, " note", note, "dim", "dim")
    _direction(
        console, "forward: the first packet of a new connection", trace.forward, trace.endpoint
    )
    symbol, style = OUTCOME_STYLES.get(trace.outcome, ("?", "bold"))
    _line(console, 0, symbol, f"{trace.outcome}: {trace.reason}", style, style)
    if trace.reply:
        _direction(console, "reply", trace.reply, trace.endpoint)
        if trace.reply[-1].kind == "deliver":
            _line(console, 0, "✓", "the reply comes back to the client", "bold green", "bold green")


def plain_text(trace: Trace, lab: str = "", width: int = WIDTH) -> str:
    """The rendering without colour (golden tests, docs)."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, soft_wrap=False)
    render_trace(trace, console, lab)
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


def header_dict(head: Header | None) -> dict[str, Any] | None:
    if head is None:
        return None
    return {
        "proto": head.proto,
        "src": head.src,
        "dst": head.dst,
        "sport": head.sport,
        "dport": head.dport,
    }


def _run_dict(run: ChainRun) -> dict[str, Any]:
    return {
        "table": run.table,
        "chain": run.chain,
        "type": run.kind,
        "priority": run.priority,
        "verdict": run.verdict,
        "rules": [
            {"chain": s.chain, "index": s.index, "rule": s.rule, "verdict": s.verdict}
            for s in run.steps
        ],
    }


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    return {
        "target": c.target,
        "probability": round(c.probability, 6),
        "table": c.table,
        "chain": c.chain,
        "index": c.index,
        "slot": c.slot,
    }


def hop_dict(hop: Hop) -> dict[str, Any]:
    return {
        "place": hop.place,
        "netns": hop.netns,
        "kind": hop.kind,
        "summary": hop.what,
        "device": hop.device,
        "objects": list(hop.objects),
        "packet": header_dict(hop.packet),
        "outer": header_dict(hop.outer),
        "hook": hop.hook,
        "chains": [_run_dict(r) for r in hop.runs],
        "candidates": [_candidate_dict(c) for c in hop.candidates],
    }


def trace_to_dict(trace: Trace, lab: dict[str, str] | None = None) -> dict[str, Any]:
    probe = trace.probe
    return {
        "schema": SCHEMA,
        "lab": lab or {},
        "source": probe.source,
        "target": probe.target,
        "probe": header_dict(probe.header),
        "outcome": trace.outcome,
        "reason": trace.reason,
        "endpoint": trace.endpoint,
        "path": list(trace.path),
        "candidates": [_candidate_dict(c) for c in trace.candidates],
        "forward": [hop_dict(h) for h in trace.forward],
        "reply": [hop_dict(h) for h in trace.reply],
        "notes": list(trace.notes),
    }


def markup_safe(text: str) -> str:
    return escape(text)


def render_verification(verification: Verification, console: Console) -> None:
    """Predicted and observed, side by side, each base chain call of each namespace."""
    v = verification
    _line(console, 0, "verify", f"probe {v.probe}: {v.outcome}", "", "bold")
    if v.chosen:
        _line(console, 0, "", f"the kernel sent it to {v.chosen}", "", "")
    for note in v.notes:
        _line(console, 0, " note", note, "dim", "dim")
    place = None
    for row in v.rows:
        if (row.place, row.tag) != place:
            place = (row.place, row.tag)
            console.print(Text(f" {row.place}: {LABELS.get(row.tag, row.tag)}", style="bold blue"))
        mark, style = ("=", "green") if row.agree else ("≠", "bold red")
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=2, no_wrap=True)
        grid.add_column(ratio=1, overflow="fold")
        grid.add_column(width=1, no_wrap=True)
        grid.add_column(ratio=1, overflow="fold")
        grid.add_row(
            Text(mark, style=style),
            "\n".join(row.predicted) or "(nothing predicted)",
            Text("|", style="dim"),
            "\n".join(row.observed) or "(the kernel reported nothing)",
        )
        console.print(grid)
    agreed = sum(r.agree for r in v.rows)
    style = "bold green" if v.agree else "bold red"
    summary = f"{agreed}/{len(v.rows)} base chain calls agree"
    if v.noise:
        summary += f"; {v.noise} other traced packets ignored"
    _line(console, 0, "✓" if v.agree else "✗", summary, style, style)


def verification_to_dict(verification: Verification) -> dict[str, Any]:
    v = verification
    return {
        "probe": header_dict(
            Header(v.probe.proto, v.probe.src, v.probe.dst, v.probe.sport, v.probe.dport)
        ),
        "socket": v.outcome,
        "endpoint": v.chosen,
        "agree": v.agree,
        "ignored": v.noise,
        "calls": [
            {
                "place": r.place,
                "netns": r.netns,
                "packet": r.tag,
                "hook": r.hook,
                "predicted": list(r.predicted),
                "observed": list(r.observed),
                "agree": r.agree,
            }
            for r in v.rows
        ],
    }
