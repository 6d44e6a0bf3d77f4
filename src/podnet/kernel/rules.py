"""Packet-filter rules, loaded whole and atomically: iptables-restore and nft -f.

DESIGN.md contract 2: a component renders its complete ruleset as text and hands it to one
call here: `IptablesRunner.restore(text)` (one `iptables-restore --noflush` of our own chains)
or `NftRunner.apply(text)` (one `nft -f -` transaction on our own table). Nothing here builds
rules; callers' renderers do, and are tested against golden text with `FakeIptables` /
`FakeNft`, which record payloads instead of touching the kernel.

Invariants:
- The payload goes on stdin, never on a command line or through a shell. An iptables
  payload may come as an iterable of chunks, written as they are produced: the renderer and
  the tool's own parsing overlap (a full sync of 10k Services is 12 MB of text).
- A restore's timeout grows with its payload (`restore_timeout`: 30 s plus 10 s per MB, ten
  times what this project's 2-core machine needs into a table already holding the rules), so
  a large cluster's sync is never cut off by a timeout it could not meet, to be retried
  forever; a restore that is cut off is killed before it commits, and the rules in the kernel
  stay as they were.
- A large dump is read line by line as the tool writes it (`IptablesRunner.scan`), never
  held whole, and still within `SAVE_TIMEOUT` for the whole run, as `save` is.
- A streamed run (`scan`, a restore fed in chunks) is bounded by a `_Watchdog` thread that
  kills the tool when its deadline passes: a tool that hangs with its pipe open would
  otherwise block the reading or writing thread forever. The caller gets
  `subprocess.TimeoutExpired`, as from a tool run whole (`netns.run`), only when the kill
  ended the tool: one that exited on its own as the deadline passed gives its own result.
- A runner bound to a namespace runs its tool inside it (`netns.run`: a thread in the
  namespace forks the tool), so the caller's namespace never changes.
- A rejected payload raises `RuleLoadError` carrying the tool's message and the offending
  line with three lines of context on each side (kube-proxy's `ExtractLines`), numbered as in
  the payload, so the log shows what was wrong without re-rendering anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from podnet.kernel import netns as netns_ops

CONTEXT_LINES = 3
RESTORE_TIMEOUT = 30.0  # seconds, for any payload
RESTORE_SECONDS_PER_MB = 10.0  # and this much more per MB of it
SAVE_TIMEOUT = 30.0  # seconds, for a whole dump: its reading and the tool's exit
T = TypeVar("T")
# "Error occurred at line: 6" (nf_tables backend), "line 5 failed" (legacy), "at line 4"
_IPTABLES_LINE = re.compile(r"\bline:? (\d+)")
# "/dev/stdin:4:18-23: Error: ..." (nft -f -)
_NFT_LINE = re.compile(r"^(?:/dev/stdin|-|<cmdline>):(\d+):", re.MULTILINE)


def extract_lines(text: str, line: int, count: int = CONTEXT_LINES) -> str:
    """Lines `line-count .. line+count` of `text` (1-based), numbered, the culprit marked."""
    lines = text.splitlines()
    first = max(1, line - count)
    last = min(len(lines), line + count)
    width = len(str(last))
    out = []
    for number in range(first, last + 1):
        marker = ">" if number == line else " "
        out.append(f"{marker}{number:>{width}}: {lines[number - 1]}")
    return "\n".join(out)


class RuleLoadError(Exception):
    """The kernel (through iptables-restore or nft) rejected a ruleset."""

    def __init__(
        self, tool: str, returncode: int, stderr: str, line: int | None, context: str
    ) -> None:
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr.strip()
        self.line = line
        self.context = context
        where = f" at line {line}" if line is not None else ""
        message = f"{tool} rejected the ruleset{where} (exit {returncode}): {self.stderr}"
        if context:
            message += f"\n{context}"
        super().__init__(message)


def _load_error(
    tool: str, returncode: int, stderr: str, payload: str, pattern: re.Pattern[str]
) -> RuleLoadError:
    match = pattern.search(stderr)
    line = int(match.group(1)) if match else None
    context = extract_lines(payload, line) if line is not None else ""
    return RuleLoadError(tool, returncode, stderr, line, context)


def restore_timeout(payload_bytes: int) -> float:
    return RESTORE_TIMEOUT + RESTORE_SECONDS_PER_MB * payload_bytes / 1e6


Payload = str | Iterable[str]  # the text, or its chunks in order


def _chunks(payload: Payload) -> Iterable[str]:
    return (payload,) if isinstance(payload, str) else payload


class Iptables(Protocol):
    """What rule renderers need from iptables; `IptablesRunner` and `FakeIptables` provide it."""

    def restore(
        self, text: Payload, table: str | None = None, noflush: bool = True, counters: bool = True
    ) -> None: ...

    def save(self, table: str | None = None) -> str: ...

    def scan(self, read: Callable[[Iterable[str]], T], table: str | None = None) -> T:
        """`read`'s answer over the dump's lines (each without its newline), read as the tool
        writes them: a dump of 30,000 endpoints' chains is ~10 MB, held whole several times
        over (its bytes, its text, its list of lines) by `save` and a split."""
        ...


class Nft(Protocol):
    """What rule renderers need from nftables; `NftRunner` and `FakeNft` provide it."""

    def apply(self, text: str) -> None: ...

    def list_table(self, family: str, name: str) -> str | None: ...

    def delete_table(self, family: str, name: str) -> None: ...

    def counters(self, family: str, name: str) -> dict[str, int]:
        """Packets counted by each named counter of the table ({} when it does not exist)."""
        ...


class IptablesRunner:
    """iptables-restore / iptables-save, optionally inside a network namespace."""

    def __init__(
        self, netns: str | None = None, ip_version: Literal[4, 6] = 4, wait_seconds: int = 5
    ) -> None:
        self.netns = netns
        self.wait_seconds = wait_seconds
        prefix = "iptables" if ip_version == 4 else "ip6tables"
        self.restore_tool = f"{prefix}-restore"
        self.save_tool = f"{prefix}-save"

    def restore(
        self, text: Payload, table: str | None = None, noflush: bool = True, counters: bool = True
    ) -> None:
        """Load `text` (or its chunks, written as they come) in one transaction; with
        `noflush` only the chains it names change."""
        argv = [self.restore_tool, "-w", str(self.wait_seconds)]
        if noflush:
            argv.append("--noflush")
        if counters:
            argv.append("--counters")
        if table is not None:
            argv += ["-T", table]
        sent: list[str] = []
        code, stderr = netns_ops.call_in(self.netns, lambda: _feed(argv, _chunks(text), sent))
        if code != 0:
            payload = "".join(sent)
            raise _load_error(self.restore_tool, code, stderr, payload, _IPTABLES_LINE)

    def save(self, table: str | None = None) -> str:
        argv = [self.save_tool]
        if table is not None:
            argv += ["-t", table]
        done = netns_ops.run(argv, self.netns)
        if done.returncode != 0:
            raise RuleLoadError(self.save_tool, done.returncode, done.stderr, None, "")
        return done.stdout

    def scan(self, read: Callable[[Iterable[str]], T], table: str | None = None) -> T:
        argv = [self.save_tool] + (["-t", table] if table is not None else [])

        def run() -> T:
            with tempfile.TemporaryFile() as errors:
                proc = _start(
                    argv, stdout=subprocess.PIPE, stderr=errors, text=True, bufsize=1 << 16
                )
                assert proc.stdout is not None
                with _Watchdog(proc, time.monotonic() + SAVE_TIMEOUT) as watchdog:
                    try:
                        with proc.stdout:
                            answer = read(line.rstrip("\n") for line in proc.stdout)
                            for _ in proc.stdout:  # what `read` left: the tool must not block
                                pass
                        proc.wait()
                    except BaseException as exc:
                        proc.kill()
                        proc.wait()
                        watchdog.check(argv, SAVE_TIMEOUT, exc)  # `read` saw a cut-off dump
                        raise
                watchdog.check(argv, SAVE_TIMEOUT)
                if proc.returncode != 0:
                    errors.seek(0)
                    stderr = errors.read().decode(errors="replace")
                    raise RuleLoadError(self.save_tool, proc.returncode, stderr, None, "")
                return answer

        return netns_ops.call_in(self.netns, run)


def _start(argv: list[str], **popen: Any) -> subprocess.Popen[Any]:
    try:
        return subprocess.Popen(argv, **popen)
    except FileNotFoundError as exc:
        raise netns_ops.NetnsError(f"{argv[0]} is not installed (needed to run {argv!r})") from exc


class _Watchdog:
    """Kills `proc` once `deadline` (`time.monotonic()`) passes, unless the `with` block ended
    first; `extend` moves the deadline later. `check`, once the tool is reaped, turns the
    watchdog's kill into `subprocess.TimeoutExpired`: a killed tool's output ends early, and
    must not be taken for its whole answer.

    The outcome is exact at the boundary: a tool that exits on its own just as the deadline
    passes (before the `with` block ends) is a zombie or already reaped when the kill is sent,
    so the kill changes nothing; its exit status is its own, and `check` lets its real result
    through (a restore that committed is not reported as cut off). Only a tool that died of
    the watchdog's SIGKILL timed out. The kill goes through a pidfd opened while the tool was
    still our unreaped child, so it can never reach another process that reused the pid.

    A thread, not a timeout on each read or write: the pipe's file object blocks, and a
    reader pulling lines through a caller's function has no single call to bound."""

    def __init__(self, proc: subprocess.Popen[Any], deadline: float) -> None:
        self.proc = proc
        self.deadline = deadline
        self.fired = False  # the watchdog sent its kill (to the tool, alive or a zombie)
        self._pidfd = os.pidfd_open(proc.pid)  # unreaped until we wait: the pid is the tool's
        self._ended = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._watch, name="rules-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._wake:
            self._ended = True
            self._wake.notify()
        self._thread.join()
        os.close(self._pidfd)

    def extend(self, deadline: float) -> None:
        with self._wake:
            self.deadline = max(self.deadline, deadline)

    def timed_out(self) -> bool:
        """Whether the watchdog's kill ended the tool; only once the tool is reaped."""
        with self._wake:  # `fired` is set before the kill is sent, under this lock
            return self.fired and self.proc.returncode == -signal.SIGKILL

    def check(self, argv: list[str], seconds: float, cause: BaseException | None = None) -> None:
        if self.timed_out():
            raise subprocess.TimeoutExpired(argv, seconds) from cause

    def _watch(self) -> None:
        with self._wake:
            while not self._ended:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.fired = True
                    with contextlib.suppress(ProcessLookupError):  # reaped: its result stands
                        signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                    return
                self._wake.wait(left)


def _feed(argv: list[str], chunks: Iterable[str], sent: list[str]) -> tuple[int, str]:
    """Run the tool with `chunks` on its stdin, each written as it comes (and kept in `sent`);
    its exit code and stderr. Its stdout (`-S` prints a table) is not wanted.
    `subprocess.TimeoutExpired` past `restore_timeout` of what was sent (the tool killed)."""
    started = time.monotonic()
    size = 0
    with tempfile.TemporaryFile() as errors:
        proc = _start(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
        assert proc.stdin is not None
        with _Watchdog(proc, started + restore_timeout(0)) as watchdog:
            try:
                try:
                    with proc.stdin:  # closing it ends the input
                        for chunk in chunks:
                            sent.append(chunk)
                            data = chunk.encode()
                            size += len(data)
                            watchdog.extend(started + restore_timeout(size))
                            proc.stdin.write(data)
                            if watchdog.fired:  # killed or exited: its exit says which
                                break
                except BrokenPipeError:
                    pass  # it stopped reading: it failed (or was cut off), its exit says which
                proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        watchdog.check(argv, restore_timeout(size))
        errors.seek(0)
        return proc.returncode, errors.read().decode(errors="replace")


class NftRunner:
    """`nft -f -` transactions and table listing, optionally inside a network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def apply(self, text: str) -> None:
        """Run `text` as one atomic nft transaction (all of it or nothing)."""
        done = netns_ops.run(["nft", "-f", "-"], self.netns, stdin_text=text)
        if done.returncode != 0:
            raise _load_error("nft", done.returncode, done.stderr, text, _NFT_LINE)

    def list_table(self, family: str, name: str) -> str | None:
        """`nft list table FAMILY NAME`, or None when the table does not exist."""
        done = netns_ops.run(["nft", "list", "table", family, name], self.netns)
        if done.returncode != 0:
            if "No such file or directory" in done.stderr:
                return None
            raise RuleLoadError("nft", done.returncode, done.stderr, None, "")
        return done.stdout

    def list_ruleset(self) -> str:
        """`nft -a list ruleset`: every table of the namespace, each rule with its handle
        (what the kernel's trace events name)."""
        done = netns_ops.run(["nft", "-a", "list", "ruleset"], self.netns)
        if done.returncode != 0:
            raise RuleLoadError("nft", done.returncode, done.stderr, None, "")
        return done.stdout

    def delete_table(self, family: str, name: str) -> None:
        """Delete the table if it exists (idempotent).

        nft 1.0.6 has no `destroy`, so the transaction first adds the table (a no-op when it
        exists) and then deletes it, atomically.
        """
        self.apply(f"add table {family} {name}\ndelete table {family} {name}\n")

    def counters(self, family: str, name: str) -> dict[str, int]:
        done = netns_ops.run(["nft", "-j", "list", "counters", "table", family, name], self.netns)
        if done.returncode != 0:
            if "No such file or directory" in done.stderr:
                return {}
            raise RuleLoadError("nft", done.returncode, done.stderr, None, "")
        found: dict[str, int] = {}
        for item in json.loads(done.stdout).get("nftables", []):
            counter = item.get("counter") if isinstance(item, dict) else None
            if isinstance(counter, dict) and isinstance(counter.get("name"), str):
                found[counter["name"]] = int(counter.get("packets") or 0)
        return found


@dataclass
class FakeIptables:
    """Records restores; `save` returns the last payload restored for the table."""

    payloads: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)
    fail_with: RuleLoadError | None = None  # set to make the next restore fail

    @property
    def last_payload(self) -> str | None:
        return self.payloads[-1] if self.payloads else None

    def restore(
        self, text: Payload, table: str | None = None, noflush: bool = True, counters: bool = True
    ) -> None:
        text = "".join(_chunks(text))
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.payloads.append(text)
        for name in re.findall(r"^\*(\S+)", text, re.MULTILINE):
            self.tables[name] = text

    def save(self, table: str | None = None) -> str:
        if table is not None:
            return self.tables.get(table, "")
        return "".join(self.tables[name] for name in sorted(self.tables))

    def scan(self, read: Callable[[Iterable[str]], T], table: str | None = None) -> T:
        return read(iter(self.save(table).splitlines()))


@dataclass
class FakeNft:
    """Records every transaction; tables are tracked by `add/delete table` lines."""

    transactions: list[str] = field(default_factory=list)
    tables: dict[tuple[str, str], str] = field(default_factory=dict)
    fail_with: RuleLoadError | None = None
    counter_values: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def apply(self, text: str) -> None:
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.transactions.append(text)
        for verb, family, name in re.findall(
            r"^\s*(add|create|delete|flush)?\s*table\s+(\S+)\s+(\S+)", text, re.MULTILINE
        ):
            key = (family, name.rstrip("{").strip())
            if verb == "delete":
                self.tables.pop(key, None)
            else:
                self.tables[key] = text

    def list_table(self, family: str, name: str) -> str | None:
        return self.tables.get((family, name))

    def delete_table(self, family: str, name: str) -> None:
        self.apply(f"add table {family} {name}\ndelete table {family} {name}\n")

    def counters(self, family: str, name: str) -> dict[str, int]:
        return dict(self.counter_values.get((family, name), {}))
