"""Deploy, roll back and back up one host's release, with the health gate in between.

Order of a deploy: upload the new release beside the old one, stop the old units, switch
``current`` (one rename), start the new units, wait on the gate. If the gate fails, the new
release is marked failed, ``current`` goes back, and the old units start and pass the gate again.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from fleetgate.deploy.gate import GateResult, GateTarget, wait_healthy
from fleetgate.deploy.hostops import RELEASE_META, HostError, HostOps, HostState
from fleetgate.deploy.transport import TransportError
from fleetgate.kvcache import Drift, reported_kv_tokens
from fleetgate.render.manifest import Manifest, ManifestError, Unit, VllmUnit

LOG_LINES = 20
LOG_SCAN_LINES = 400
# how much of a healthy server's log is read for its start-up lines (a gate that waited long
# adds a few lines a minute; the start-up lines must still be in it)
STARTUP_SCAN_LINES = 5000
_EXCEPTION = re.compile(r"\b[A-Z]\w*(Error|Exception): ")
Step = Callable[[str], None]
PAUSE_AT = "FLEETGATE_TEST_PAUSE_AT"


@dataclass
class HostReport:
    """What happened on one host; ``ok`` is False when anything went wrong."""

    host: str
    ok: bool = True
    action: str = ""
    release: str | None = None
    previous: str | None = None
    diff: str = ""
    backup: Path | None = None
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    log_tail: str = ""


def release_name(now: datetime | None = None) -> str:
    """A sortable UTC timestamp, unique to the millisecond."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"


def _manifest(files: dict[str, bytes]) -> Manifest | None:
    try:
        return Manifest.of_release(files)
    except ManifestError as exc:
        raise HostError(str(exc)) from None


def _units(files: dict[str, bytes]) -> list[Unit]:
    """A release's units in manifest order; none for a release without a manifest."""
    manifest = _manifest(files)
    return manifest.units if manifest else []


def diff_releases(old: dict[str, bytes], new: dict[str, bytes]) -> str:
    """A unified diff of two releases' files (release.json, which only names them, left out)."""
    chunks: list[str] = []
    for path in sorted(set(old) | set(new)):
        if path == RELEASE_META:
            continue
        a = old.get(path, b"").decode(errors="replace").splitlines(keepends=True)
        b = new.get(path, b"").decode(errors="replace").splitlines(keepends=True)
        if a != b:
            chunks.extend(
                difflib.unified_diff(
                    a,
                    b,
                    fromfile=f"host/{path}" if path in old else "/dev/null",
                    tofile=f"new/{path}" if path in new else "/dev/null",
                )
            )
    return "".join(chunks)


def release_summary(files: dict[str, bytes]) -> list[str]:
    """What a release would install: its units, then its files with their sizes."""
    lines = [f"would run {u.name} ({u.kind}, {u.runtime}) at {u.url}" for u in _units(files)]
    lines.append(f"would install {len(files)} files:")
    lines += [f"  {path} ({len(data)} bytes)" for path, data in sorted(files.items())]
    return lines


def error_lines(text: str) -> list[str]:
    """The exception lines of a server log, once each, the last eight (the cause often sits
    above a long traceback); a warning that merely names an exception is not one."""
    lines = (line for line in text.splitlines() if " WARNING " not in line)
    return list(dict.fromkeys(line for line in lines if _EXCEPTION.search(line)))[-8:]


def log_excerpt(unit: str, text: str) -> str:
    """The exception lines of a server log and its last lines."""
    lines = text.splitlines()
    errors = error_lines(text)
    out = ""
    if errors:
        out += f"--- errors in {unit}'s log ---\n" + "\n".join(errors) + "\n"
    return out + f"--- last lines of {unit}'s log ---\n" + "\n".join(lines[-LOG_LINES:]) + "\n"


def _pause_point(name: str) -> None:
    """Test hook: with ``FLEETGATE_TEST_PAUSE_AT=<name>`` a deploy stops here for good (after a
    line on stderr), so a test can kill it at a known step. Names: ``uploaded`` (the new
    release directory exists, nothing switched yet) and ``switched`` (``current`` points at the
    new release, its units not started)."""
    if os.environ.get(PAUSE_AT) != name:
        return
    print(f"fleetgate: paused at {name} ({PAUSE_AT})", file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def save_backup(backups: Path, host: str, release: str, files: dict[str, bytes]) -> Path:
    """Copy a release under ``backups/<host>/<timestamp>/``; an existing backup is never touched."""
    base = backups / host / release_name()
    target, n = base, 1
    while True:
        try:
            target.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
            target = base.with_name(f"{base.name}-{n}")
    for path, data in files.items():
        out = target / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    info = {"host": host, "release": release, "taken_at": datetime.now(UTC).isoformat()}
    (target / "BACKUP.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


class HostDeployer:
    """Releases of one host: deploy, rollback, backup, stop."""

    def __init__(
        self,
        host: str,
        ops: HostOps,
        *,
        backups: Path,
        gate_timeout_s: float = 900,
        step: Step | None = None,
        planned_kv_tokens: Mapping[str, int] | None = None,
    ) -> None:
        """``planned_kv_tokens``: the plan's KV tokens per deployment, as plain data; a deploy
        keeps them in the release beside what each server reported at start-up."""
        self.host = host
        self.ops = ops
        self.backups = backups
        self.gate_timeout_s = gate_timeout_s
        self.step = step or (lambda _text: None)
        self.planned_kv_tokens = dict(planned_kv_tokens or {})

    # -- the public verbs -------------------------------------------------------------------

    def deploy(
        self, files: dict[str, str], *, fleet_file: str, dry_run: bool = False
    ) -> HostReport:
        report = HostReport(self.host)
        try:
            self._deploy(files, fleet_file, dry_run, report)
        except (HostError, TransportError) as exc:
            report.ok = False
            report.action = report.action or "failed"
            report.messages.append(str(exc))
        return report

    def rollback(self, to: str | None = None) -> HostReport:
        report = HostReport(self.host, action="rollback")
        try:
            self.step("reading releases")
            state = self.ops.state()
            target = state.release(to) if to else state.previous()
            if target is None:
                raise HostError(f"no release {to!r} on the host" if to else "no earlier release")
            report.previous, report.release = state.current, target.name
            old_units = self._units_of(state.current)
            self._switch(state.current, old_units, target.name)
            new_units = self._units_of(target.name)
            result = self._start_and_gate(target.name, new_units, report)
            report.ok = result
            report.messages.append(
                f"now on release {target.name}" + ("" if result else " (health gate failed)")
            )
        except (HostError, TransportError) as exc:
            report.ok = False
            report.messages.append(str(exc))
        return report

    def backup(self) -> HostReport:
        report = HostReport(self.host, action="backup")
        try:
            self.step("reading releases")
            state = self.ops.state()
            if state.current is None:
                report.messages.append("no release in service: nothing to back up")
                return report
            self.step(f"copying release {state.current}")
            files = self.ops.fetch(state.current)
            report.release = state.current
            report.backup = save_backup(self.backups, self.host, state.current, files)
            report.messages.append(f"release {state.current} saved to {report.backup}")
        except (HostError, TransportError) as exc:
            report.ok = False
            report.messages.append(str(exc))
        return report

    def stop(self) -> HostReport:
        """Stop every unit of the release in service; it stays current (a deploy of the same
        settings, or a rollback, starts it again)."""
        report = HostReport(self.host, action="stop")
        try:
            state = self.ops.state()
            report.release = state.current
            for unit in self._units_of(state.current):
                assert state.current is not None
                self.step(f"stopping {unit.name}")
                result = self.ops.unit(state.current, unit.script, "stop")
                if result.rc != 0:
                    report.ok = False
                    report.messages.append(f"stopping {unit.name} failed: {result.error}")
        except (HostError, TransportError) as exc:
            report.ok = False
            report.messages.append(str(exc))
        return report

    def releases(self) -> HostState:
        return self.ops.state()

    # -- the steps ----------------------------------------------------------------------------

    def _deploy(
        self, rendered: dict[str, str], fleet_file: str, dry_run: bool, report: HostReport
    ) -> None:
        new = {path: text.encode() for path, text in rendered.items()}
        self.step("reading releases")
        try:
            state = self.ops.state()
            old = self.ops.fetch(state.current) if state.current else {}
        except (HostError, TransportError) as exc:
            if not dry_run:
                raise
            # still show what would go there; only the comparison needs the host
            report.ok = False
            report.action = "dry run, no diff"
            report.messages.append(f"could not read the host's release for the diff: {exc}")
            report.messages.extend(release_summary(new))
            return
        report.previous = state.current
        report.diff = diff_releases(old, new)
        if dry_run:
            report.action = "dry run"
            report.messages.append(
                "no changes" if not report.diff else f"would replace release {state.current}"
            )
            return
        if state.current and not report.diff:
            report.action = "unchanged"
            report.release = state.current
            self.step("unchanged: making sure it runs")
            report.ok = self._start_and_gate(state.current, _units(old), report)
            return
        if state.current:
            self.step(f"backing up release {state.current}")
            report.backup = save_backup(self.backups, self.host, state.current, old)
        name = release_name()
        while state.release(name):
            time.sleep(0.002)
            name = release_name()
        meta = {
            "release": name,
            "host": self.host,
            "fleet_file": fleet_file,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "previous": state.current,
        }
        manifest = _manifest(new)
        meta["fleet"] = manifest.fleet if manifest else None
        meta["settings_sha256"] = manifest.settings_sha256 if manifest else None
        new[RELEASE_META] = (json.dumps(meta, sort_keys=True) + "\n").encode()
        self.step(f"uploading release {name}")
        self.ops.upload(name, new)
        report.release = name
        _pause_point("uploaded")
        self._switch(state.current, _units(old), name)
        _pause_point("switched")
        if self._start_and_gate(name, _units(new), report):
            report.action = "deployed"
            self._record_kv_cache(name, _units(new), meta, report)
            return
        report.ok = False
        report.action = "rolled back" if state.current else "failed"
        self.ops.mark_failed(name, "; ".join(report.messages))
        for unit in _units(new):
            self.ops.unit(name, unit.script, "stop")
        if state.current is None:
            report.messages.append("no earlier release to roll back to")
            return
        self.step(f"rolling back to {state.current}")
        self.ops.activate(state.current)
        rollback = HostReport(self.host)
        back = self._start_and_gate(state.current, _units(old), rollback)
        report.messages.append(
            f"rolled back to release {state.current}: "
            + ("healthy again" if back else "its health gate failed too")
        )
        report.messages.extend(rollback.messages)

    def _record_kv_cache(
        self, release: str, units: list[Unit], meta: Mapping[str, object], report: HostReport
    ) -> None:
        """Keep "planned N tokens, vLLM reported M" of each server in the release's
        release.json, from the server's own start-up lines; more than 10% off is a warning.
        The release is healthy whatever this finds: nothing here fails a deploy."""
        recorded: dict[str, object] = {}
        for unit in units:
            if not isinstance(unit, VllmUnit):
                continue
            self.step(f"reading {unit.name}'s start-up lines")
            logs = self.ops.unit(release, unit.script, "logs", str(STARTUP_SCAN_LINES))
            reported = reported_kv_tokens(logs.text) if logs.rc == 0 else None
            drift = Drift(self.planned_kv_tokens.get(unit.name), reported)
            recorded[unit.name] = drift.to_json()
            if drift.warning:
                report.warnings.append(f"{unit.name}: {drift.warning}")
            else:
                report.messages.append(f"{unit.name}: {drift.describe()}")
        if not recorded:
            return
        try:
            self.ops.write_meta(release, {**meta, "kv_cache": recorded})
        except (HostError, TransportError) as exc:
            report.warnings.append(f"the KV cache sizes were not recorded: {exc}")

    def _units_of(self, release: str | None) -> list[Unit]:
        if release is None:
            return []
        return _units(self.ops.fetch(release))

    def _switch(self, old: str | None, old_units: list[Unit], new: str) -> None:
        for unit in old_units:
            self.step(f"stopping {unit.name} ({old})")
            assert old is not None
            result = self.ops.unit(old, unit.script, "stop")
            if result.rc != 0:
                raise HostError(f"stopping {unit.name} failed: {result.error}")
        self.step(f"switching to release {new}")
        self.ops.activate(new)

    def _start_and_gate(self, release: str, units: list[Unit], report: HostReport) -> bool:
        """Start every unit, then gate them in manifest order (servers before the gateway).
        On-demand units are left to the control layer (a switch stops them with the rest).

        The first failure ends the gating: the release is going to be rolled back anyway, and
        the units after it (a gateway waiting on that very server) would only spend their whole
        timeout before the rollback could start.
        """
        failed: str | None = None
        on_demand = [u for u in units if getattr(u, "on_demand", False)]
        for unit in on_demand:
            report.messages.append(
                f"{unit.name}: on demand, started by the gateway's control layer when needed"
            )
        units = [u for u in units if u not in on_demand]
        for unit in units:
            self.step(f"starting {unit.name}")
            started = self.ops.unit(release, unit.script, "start")
            if started.rc != 0:
                report.messages.append(f"{unit.name}: start failed: {started.error}")
                failed = failed or unit.name
                self._add_logs(release, unit, report)
        for unit in units:
            if failed is not None:
                if unit.name != failed:
                    report.messages.append(f"{unit.name}: health gate skipped ({failed} failed)")
                continue
            self.step(f"health gate: {unit.name}")
            result = self._gate(release, unit)
            report.messages.append(f"{unit.name} ({release}): {result.detail}")
            if not result.ok:
                failed = unit.name
                self._add_logs(release, unit, report)
        return failed is None

    def _add_logs(self, release: str, unit: Unit, report: HostReport) -> None:
        logs = self.ops.unit(release, unit.script, "logs", str(LOG_SCAN_LINES))
        report.log_tail += log_excerpt(unit.name, logs.text)

    def _gate(self, release: str, unit: Unit) -> GateResult:
        def alive() -> bool:
            return self.ops.unit(release, unit.script, "status", timeout=60).rc == 0

        return wait_healthy(
            GateTarget.from_unit(unit), timeout_s=self.gate_timeout_s, alive=alive, poll_s=3
        )
