"""How the demo prints: colour on a terminal, plain text elsewhere, and the bill as a table."""

from __future__ import annotations

from typing import Any


class Printer:
    """Readable output: colour on a terminal, plain text elsewhere."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self._c("1", text)

    def dim(self, text: str) -> str:
        return self._c("2", text)

    def green(self, text: str) -> str:
        return self._c("32", text)

    def red(self, text: str) -> str:
        return self._c("31", text)

    def cyan(self, text: str) -> str:
        return self._c("36", text)

    def yellow(self, text: str) -> str:
        return self._c("33", text)

    def step(self, number: int, title: str, what: str) -> None:
        print()
        print(self.bold(f"{number}. {title}"))
        print(self.dim(f"   {what}"))

    def said(self, who: str, text: str) -> None:
        print(f"   {self.cyan(who)} {text}")

    def facts(self, **facts: Any) -> None:
        print("   " + self.dim("  ".join(f"{k.replace('_', ' ')}={v}" for k, v in facts.items())))



def _print_table(p: Printer, report: dict[str, Any]) -> None:
    head = (f"by {report['by']}", "requests", "tokens in", "tokens out", "cost USD")
    rows = [(str(g["group"]) if g["group"] not in ("-", None) else "(no upstream)",
             str(g["requests"]), str(g["prompt_tokens"]), str(g["completion_tokens"]),
             f"{g['cost_usd']:.6f}") for g in report["groups"]]
    t = report["total"]
    total = ("total", str(t["requests"]), str(t["prompt_tokens"]), str(t["completion_tokens"]), f"{t['cost_usd']:.6f}")
    widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        return "   " + "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))])

    print()
    print(p.bold(fmt(head)))
    for row in rows:
        print(fmt(row))
    print(p.bold(fmt(total)))

