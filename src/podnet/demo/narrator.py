"""How the demo talks: chapters, the real command it runs, and that command's real output.

Nothing here knows the story; `story.py` tells it through a `Narrator`. Every command the
reader sees is the exact argv that ran (kubectl with the lab's kubeconfig, `ip netns exec`, …),
so any step can be copied and re-run by hand while the lab is up (`podnet demo --keep`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.text import Text

T = TypeVar("T")


class StepFailed(RuntimeError):
    """A command or a wait in the story did not do what the story needs."""


@dataclass
class Narrator:
    console: Console
    env: Mapping[str, str] = field(default_factory=dict)
    step_mode: bool = False  # wait for Enter between chapters
    shown_aliases: Mapping[str, str] = field(default_factory=dict)  # argv[0] -> short display

    def chapter(self, number: int, title: str, explanation: str) -> None:
        if self.step_mode and number > 1:
            self.console.input("[dim]Press Enter for the next step…[/dim]")
        self.console.rule(f"[bold cyan]{number}. {title}")
        self.console.print(Markdown(explanation))

    def say(self, text: str) -> None:
        self.console.print(Markdown(text))

    def note(self, text: str) -> None:
        self.console.print(Text(text, style="dim"))

    def display(self, argv: Sequence[str]) -> str:
        first = self.shown_aliases.get(argv[0], argv[0])
        return shlex.join([first, *argv[1:]])

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        stdin: str | None = None,
        show_output: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run one real command, print it and what it printed."""
        self.console.print(Text("$ " + self.display(argv), style="bold green"))
        env = {**os.environ, **self.env}
        try:
            proc = subprocess.run(
                list(argv),
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StepFailed(f"`{self.display(argv)}` did not finish in {timeout:.0f} s") from exc
        out = (proc.stdout + proc.stderr).rstrip()
        if show_output and out:
            self.console.print(Panel(Text(out), border_style="dim", expand=False))
        if check and proc.returncode != 0:
            tail = out[-500:] or "(no output)"
            raise StepFailed(f"`{self.display(argv)}` exited with {proc.returncode}: {tail}")
        return proc

    def wait_for(
        self,
        description: str,
        probe: Callable[[], T | None],
        timeout: float = 60.0,
        interval: float = 0.25,
    ) -> T:
        """Poll `probe` until it returns something, showing a spinner with elapsed time."""
        start = time.monotonic()
        with self.console.status(description) as status:
            while True:
                value = probe()
                if value is not None:
                    elapsed = time.monotonic() - start
                    self.console.print(f"[green]✓[/green] {description} ({elapsed:.1f} s)")
                    return value
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    raise StepFailed(f"gave up after {timeout:.0f} s: {description}")
                status.update(f"{description} [dim]({elapsed:.0f} s)[/dim]")
                time.sleep(interval)
