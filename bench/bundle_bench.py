#!/usr/bin/env python3
"""Side-by-side benchmark: offline bundles (``airgap bundle``) against ``skopeo sync`` with a dir.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md,
section "Bundles".

Starts real Distribution instances on loopback (``/usr/bin/docker-registry``, helpers shared
with ``bench/sync_bench.py``): the relay's registry, seeded with :mod:`airgap_lab.sample` at
scale (it is also the upstream the lock is resolved against: destinations are the upstream
paths), and one empty site registry per tool. Writes a ``mirror.yaml`` listing every sample
tag (apps, base, vulnerable image, chart, Trivy DB), locks it, writes the equivalent
``skopeo sync --src yaml`` file, then measures, in one run on one machine:

1. full export: ``airgap bundle export`` (full) against ``skopeo sync --src yaml --dest dir
   --all`` of the same tags;
2. import into an empty registry: ``airgap bundle import`` (no signing) against ``skopeo sync
   --src dir --dest docker --all``;
3. after the base-layer change (``base_generation=1``, re-pushed and re-locked): our
   inventory of the seeded site registry, delta export, delta import; beside it what skopeo
   can do without a delta: a full dir again, and its import (which skips blobs present).

Counted for each step:

- wall time, and the 1-minute load average when it started;
- CPU seconds (user + system) of the tool process and everything it ran, from
  ``getrusage(RUSAGE_CHILDREN)``, and of the registry it talks to, from ``/proc/<pid>/stat``;
- requests at that registry (lines of its access log), by method; bytes the registry sent
  (response sizes in the access log: what an export downloads);
- bytes uploaded to a site registry: the sizes of the blobs whose upload it completed
  (``PUT .../blobs/uploads/...?digest=`` answered 201), the same way for both tools;
  cross-repository mounts (``POST ...?mount=`` answered 201) are counted apart, they send
  nothing;
- what an export writes: files and bytes (apparent sizes) of the bundle or the dir.

Sizes are compared with the unique content the lock needs: the distinct manifests (top,
copied children, copied signatures) and distinct blobs of its entries, each digest once;
for the delta, with the digests of the new lock that the seeded site registry does not hold
(found in its storage directory, not through our inventory).

    .venv/bin/python bench/bundle_bench.py                       # full scale (200 repositories)
    .venv/bin/python bench/bundle_bench.py --repositories 10 --unique-layer-bytes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sync_bench import SKOPEO, Registry, children_cpu, load1, megabytes, run

import airgapped_registry
from airgap_lab.sample import (
    APP_REPOSITORY_PREFIX,
    BASE_REPOSITORY,
    BASE_TAGS,
    CHART_REPOSITORY,
    CHART_TAGS,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Sample,
    SampleSpec,
    build,
    db_day,
    push,
    semver_series,
)
from airgapped_registry.mirror.lock import Lock
from airgapped_registry.transport.registry import RegistryClient

# The access log line ends with the response status and size (combined log format).
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\d+|-)',
    re.MULTILINE,
)
UPLOAD_DIGEST = re.compile(r"[?&]digest=(sha256(?::|%3[aA])[0-9a-f]{64})")

# Targets of issue 11 ("Performance").
FULL_SIZE_TARGET = 1.01  # bundle bytes / unique content, at most
DELTA_SIZE_TARGET = 1.05  # delta bundle bytes / new unique content, at most
WALL_TARGET = 0.5  # our wall / skopeo's, at most (export and import)


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Figures:
    step: str
    tool: str
    registry: str = ""
    wall: float = 0.0
    load: float = 0.0
    tool_cpu: float = 0.0
    registry_cpu: float = 0.0
    requests: int = 0
    methods: Counter[str] = field(default_factory=Counter)
    bytes_served: int = 0
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    bytes_uploaded: int = 0
    files: int | None = None
    output_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


class Measure:
    """Counts around one step: wall, CPU of the tool and of the registry, its access log."""

    def __init__(self, figures: Figures, registry: Registry) -> None:
        self.figures = figures
        self.registry = registry
        figures.registry = registry.name

    def __enter__(self) -> Measure:
        # What an earlier step left in the page cache is written out first: our export
        # syncs before it renames its bundle, and must not pay for skopeo's dir.
        os.sync()
        self.figures.load = load1()
        self.registry.mark()
        self._cpu = (children_cpu(), self.registry.cpu())
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._start
        # The access log line is written as each response completes; let the last ones land.
        time.sleep(0.3)
        f = self.figures
        f.wall = wall
        f.tool_cpu = children_cpu() - self._cpu[0]
        f.registry_cpu = self.registry.cpu() - self._cpu[1]
        uploaded: Counter[str] = Counter()
        with self.registry.log_path.open("rb") as log:
            log.seek(self.registry._offset)
            text = log.read().decode(errors="replace")
        for line in ACCESS_LINE.finditer(text):
            f.requests += 1
            f.methods[line["method"]] += 1
            status, uri = line["status"], line["uri"]
            if line["size"] != "-" and line["method"] == "GET":
                f.bytes_served += int(line["size"])
            if line["method"] == "PUT" and status == "201" and "/blobs/uploads/" in uri:
                found = UPLOAD_DIGEST.search(uri)
                if found:
                    uploaded[found[1].replace("%3A", ":").replace("%3a", ":")] += 1
            elif line["method"] == "POST" and status == "201" and "mount=" in uri:
                f.blobs_mounted += 1
        f.blobs_uploaded = sum(uploaded.values())
        f.bytes_uploaded = sum(self.registry.blob_size(d) * n for d, n in uploaded.items())


def tree_size(path: Path) -> tuple[int, int]:
    """Regular files under ``path`` and their apparent bytes (symbolic links not followed)."""
    files = total = 0
    for directory, _, names in os.walk(path):
        for name in names:
            status = os.lstat(os.path.join(directory, name))
            files += 1
            total += status.st_size
    return files, total


def warm(path: Path) -> None:
    """Read every file under ``path`` once, so that no run pays for the other's cold cache."""
    for directory, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(directory, name), "rb") as stream:
                while stream.read(1 << 20):
                    pass


def stored_digests(registry: Registry) -> set[str]:
    """Every blob and manifest a Distribution holds, from its storage directory."""
    blobs = registry.root / "storage/docker/registry/v2/blobs/sha256"
    if not blobs.is_dir():
        return set()
    return {f"sha256:{entry.name}" for prefix in blobs.iterdir() for entry in prefix.iterdir()}


def lock_needs(lock: Lock) -> dict[str, int]:
    """Digest → size of every manifest and blob the lock's entries need, each digest once."""
    needs: dict[str, int] = {}
    for entry in lock.entries:
        manifests = [entry.manifest]
        manifests += [child for child in entry.children if child.copy]
        manifests += [signature for signature in entry.signatures if signature.copy]
        for manifest in manifests:
            needs[manifest.digest] = manifest.size
        for blob in entry.blobs():
            needs[blob.digest] = blob.size
    return needs


def read_lock(path: Path) -> Lock:
    return Lock.from_json(path.read_text(), name=str(path))


# -- the lists -----------------------------------------------------------------------------


def app_repositories(sample: Sample) -> list[str]:
    return [r for r in sample.repositories if r.startswith(APP_REPOSITORY_PREFIX)]


def tag_lists(sample: Sample, tags: list[str]) -> dict[str, list[str]]:
    """Repository → tags: every tag of the sample (the showcase's and the apps')."""
    lists = {
        BASE_REPOSITORY: list(BASE_TAGS),
        VULNERABLE_REPOSITORY: [VULNERABLE_TAG],
        TRIVY_DB_REPOSITORY: [TRIVY_DB_TAG],
        CHART_REPOSITORY: list(CHART_TAGS),
    }
    lists.update({repository: tags for repository in app_repositories(sample)})
    return lists


def write_mirror_yaml(path: Path, relay: Registry, lists: dict[str, list[str]]) -> None:
    source = {"registry": relay.address, "insecure": True, "signatures": "none"}
    images = [
        {"source": "upstream", "repository": repository, "tags": tags}
        for repository, tags in lists.items()
        if repository != CHART_REPOSITORY
    ]
    charts = [
        {"source": "upstream", "repository": CHART_REPOSITORY, "versions": lists[CHART_REPOSITORY]}
    ]
    document = {"version": 1, "sources": {"upstream": source}, "images": images, "charts": charts}
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def write_skopeo_yaml(path: Path, relay: Registry, lists: dict[str, list[str]]) -> None:
    # Copies: the apps share one tag list, which would otherwise be written as YAML anchors.
    images = {repository: list(tags) for repository, tags in lists.items()}
    registry = {"images": images, "tls-verify": False}
    path.write_text(yaml.safe_dump({relay.address: registry}, sort_keys=False))


# -- the tools -----------------------------------------------------------------------------


class Ours:
    tool = "airgap bundle"

    def __init__(self, work: Path, options: argparse.Namespace) -> None:
        self.work = work
        self.log = work / "airgap.log"
        self.airgap = str(Path(sys.executable).with_name("airgap"))
        if not os.path.exists(self.airgap):
            self.airgap = shutil.which("airgap") or "airgap"
        self.export_options: list[str] = options.export_option or []
        self.import_options: list[str] = options.import_option or []
        self.profile = work / "profiles" if options.profile else None
        # The relay signs locks and bundles, the site signs inventories: two keys, each
        # trusted by the other side only.
        self.relay_key = work / "relay" / "transfer.key"
        self.site_key = work / "site" / "transfer.key"
        self.relay_trusts = work / "relay" / "trusted"
        self.site_trusts = work / "site" / "trusted"
        self.site_state = work / "site" / "state.db"

    def command(self, name: str, *argv: str) -> list[str]:
        if self.profile is None:
            return [self.airgap, *argv]
        self.profile.mkdir(exist_ok=True)
        # cProfile sees the main thread only: threads show as the time it waits for them.
        output = self.profile / f"{name}.prof"
        profiler = [sys.executable, "-m", "cProfile", "-o", str(output)]
        return [*profiler, "-m", "airgapped_registry.cli", *argv]

    def keys(self) -> None:
        for key, trusted_by in (
            (self.relay_key, self.site_trusts),
            (self.site_key, self.relay_trusts),
        ):
            key.parent.mkdir(parents=True, exist_ok=True)
            run([self.airgap, "transfer-key", "init", "--key", str(key)], self.log)
            trusted_by.mkdir(parents=True, exist_ok=True)
            shutil.copy(key.with_name("transfer.pub"), trusted_by / f"{key.parent.name}.pub")

    def report(self, figures: Figures, completed: subprocess.CompletedProcess[str]) -> None:
        try:
            report = json.loads(completed.stdout)
        except json.JSONDecodeError:
            figures.notes.append(f"stdout: {completed.stdout[-300:]!r}")
            return
        summary = {k: v for k, v in report.items() if not isinstance(v, list | dict)}
        figures.notes.append(f"report: {json.dumps(summary)}")

    def export(
        self,
        step: str,
        relay: Registry,
        lock: Path,
        output: Path,
        inventory: Path | None = None,
    ) -> Figures:
        figures = Figures(step, self.tool)
        argv = ["bundle", "export", "--lock", str(lock), "--registry", relay.url]
        argv += ["--output", str(output), "--transfer-key", str(self.relay_key)]
        if inventory is not None:
            argv += ["--inventory", str(inventory), "--trusted-keys", str(self.relay_trusts)]
        argv += self.export_options
        with Measure(figures, relay):
            completed = run(self.command(step.replace(" ", "-"), *argv), self.log)
        self.report(figures, completed)
        figures.files, figures.output_bytes = tree_size(output)
        metadata = {
            str(path.relative_to(output)): path.stat().st_size
            for path in sorted(output.rglob("*"))
            if path.is_file() and "blobs" not in path.relative_to(output).parts
        }
        figures.notes.append(
            f"outside blobs/: {sum(metadata.values()):,} bytes: "
            + ", ".join(f"{name} {size:,}" for name, size in metadata.items())
        )
        return figures

    def import_(self, step: str, site: Registry, bundle: Path) -> Figures:
        figures = Figures(step, self.tool)
        self.site_state.parent.mkdir(parents=True, exist_ok=True)
        argv = ["bundle", "import", str(bundle), "--registry", site.url]
        argv += ["--trusted-keys", str(self.site_trusts), "--state", str(self.site_state)]
        argv += self.import_options
        with Measure(figures, site):
            completed = run(self.command(step.replace(" ", "-"), *argv), self.log)
        self.report(figures, completed)
        return figures

    def inventory(self, step: str, site: Registry, output: Path) -> Figures:
        figures = Figures(step, self.tool)
        argv = ["bundle", "inventory", "--registry", site.url, "--output", str(output)]
        argv += ["--transfer-key", str(self.site_key)]
        with Measure(figures, site):
            completed = run(self.command(step.replace(" ", "-"), *argv), self.log)
        self.report(figures, completed)
        figures.files, figures.output_bytes = 1, output.stat().st_size
        return figures

    def verify(self, site: Registry, lock: Path) -> str:
        """``airgap verify`` of the site against the lock (not timed): the import is complete."""
        argv = [self.airgap, "verify", "--registry", site.url, "--lock", str(lock), "--deep"]
        completed = run(argv, self.log, check=False)
        try:
            report = json.loads(completed.stdout)
            return (
                f"exit {completed.returncode}: {report['ok']} of {report['entries']} entries "
                f"ok, {report['manifests_checked']} manifests and {report['blobs_checked']} "
                f"blobs checked, {len(report['problems'])} problems"
            )
        except (json.JSONDecodeError, KeyError, TypeError):
            return f"exit {completed.returncode}: {completed.stderr.strip()[-300:]}"


class Skopeo:
    tool = "skopeo sync"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.file = work / "skopeo-sync.yaml"
        self.log = work / "skopeo.log"

    def export(self, step: str, relay: Registry, output: Path) -> Figures:
        figures = Figures(step, self.tool)
        argv = [SKOPEO, "--insecure-policy", "sync", "--src", "yaml", "--dest", "dir"]
        argv += ["--all", "--preserve-digests", str(self.file), str(output)]
        with Measure(figures, relay):
            run(argv, self.log)
        # skopeo leaves its dir in the page cache; our export fsyncs every file it writes.
        started = time.monotonic()
        os.sync()
        figures.notes.append(f"a sync(1) after it took {time.monotonic() - started:.2f} s more")
        figures.files, figures.output_bytes = tree_size(output)
        return figures

    def import_(self, step: str, site: Registry, directory: Path) -> Figures:
        figures = Figures(step, self.tool)
        # Without --scoped, the dir holds <last path component>:<tag> (app-001:1.0.0,
        # demo:0.1.0, trivy-db:2), pushed back under DEST/sample/.
        argv = [SKOPEO, "--insecure-policy", "sync", "--src", "dir", "--dest", "docker"]
        argv += ["--all", "--preserve-digests", "--dest-tls-verify=false"]
        argv += [str(directory), f"{site.address}/sample"]
        with Measure(figures, site):
            run(argv, self.log)
        return figures


# -- report --------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    header = (
        "| step | tool | wall | tool CPU | registry CPU | load (1 min) | requests "
        "| bytes served | blobs uploaded (mounted) | bytes uploaded | files written "
        "| bytes written |"
    )
    lines = [header, "|" + "---|" * 12]
    for f in rows:
        written = "" if f.output_bytes is None else f"{f.output_bytes:,}"
        files = "" if f.files is None else str(f.files)
        lines.append(
            f"| {f.step} | {f.tool} | {f.wall:.2f} s | {f.tool_cpu:.1f} s "
            f"| {f.registry_cpu:.1f} s ({f.registry}) | {f.load:.2f} | {f.requests} "
            f"| {f.bytes_served:,} | {f.blobs_uploaded} ({f.blobs_mounted}) "
            f"| {f.bytes_uploaded:,} | {files} | {written} |"
        )
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def verdicts(results: dict[str, Figures], unique: int, new_unique: int) -> list[str]:
    out = []
    full = results["ours export"].output_bytes or 0
    skopeo_dir = results["skopeo export"].output_bytes or 0
    ratio = full / unique
    out.append(
        f"- full bundle size: {full:,} bytes for {unique:,} unique = {ratio:.4f}x (target ≤ "
        f"{FULL_SIZE_TARGET}x): {verdict(ratio <= FULL_SIZE_TARGET)}; skopeo dir "
        f"{skopeo_dir:,} bytes = {skopeo_dir / unique:.2f}x unique"
    )
    delta = results["ours delta export"].output_bytes or 0
    delta_ratio = delta / new_unique if new_unique else float("inf")
    out.append(
        f"- delta bundle size: {delta:,} bytes for {new_unique:,} new unique = "
        f"{delta_ratio:.4f}x (target ≤ {DELTA_SIZE_TARGET}x): "
        f"{verdict(delta_ratio <= DELTA_SIZE_TARGET)}"
    )
    if "skopeo export again" in results:
        again = results["skopeo export again"].output_bytes or 0
        out.append(f"  (skopeo, no delta: a full dir again, {again:,} bytes)")
    for step in ("export", "import"):
        ours, theirs = results[f"ours {step}"], results[f"skopeo {step}"]
        ratio = ours.wall / theirs.wall
        out.append(
            f"- {step} wall: ours {ours.wall:.2f} s / skopeo {theirs.wall:.2f} s = {ratio:.2f}x "
            f"(target ≤ {WALL_TARGET}x): {verdict(ratio <= WALL_TARGET)}; CPU ours "
            f"{ours.tool_cpu:.1f} s + registry {ours.registry_cpu:.1f} s, skopeo "
            f"{theirs.tool_cpu:.1f} s + registry {theirs.registry_cpu:.1f} s"
        )
    return out


def print_profiles(directory: Path, limit: int = 25) -> None:
    import pstats

    for path in sorted(directory.glob("*.prof")):
        print(f"\nprofile {path.stem} (main thread; cumulative):")
        stats = pstats.Stats(str(path))
        stats.sort_stats("cumulative").print_stats(limit)
        stats.sort_stats("tottime").print_stats(limit)


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument(
        "--unique-layer-bytes",
        type=int,
        default=500_000,
        help="content bytes of each image's own layer, per platform (default 500000)",
    )
    parser.add_argument(
        "--base-layer-bytes",
        type=int,
        default=4_000_000,
        help="content bytes of each shared base layer (default 4000000)",
    )
    parser.add_argument(
        "--export-option",
        action="append",
        metavar="ARG",
        help="passed to airgap bundle export (repeatable; e.g. --export-option=--volume-size "
        "--export-option=1G)",
    )
    parser.add_argument("--import-option", action="append", metavar="ARG")
    parser.add_argument(
        "--no-skopeo-delta",
        action="store_true",
        help="skip skopeo's full dir again after the change (and its import)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run our commands under cProfile and print where the main thread's time goes "
        "(the walls then include the profiler's overhead)",
    )
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    parser.add_argument("--workdir", help="where to work (default: a new temporary directory)")
    args = parser.parse_args()

    # Ctrl-C and SIGTERM unwind through the finally below: registries stopped, dirs removed.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bundle-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    registries: list[Registry] = []
    try:
        return bench(args, work, registries)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for registry in registries:
            registry.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path, registries: list[Registry]) -> int:
    def start(name: str) -> Registry:
        registry = Registry(name, work / name)
        registries.append(registry)
        registry.start()
        return registry

    spec0 = SampleSpec(
        repositories=args.repositories,
        tags_per_repository=1,
        unique_layer_bytes=args.unique_layer_bytes,
        base_layer_bytes=args.base_layer_bytes,
    )
    spec1 = SampleSpec(**{**spec0.__dict__, "base_generation": 1})
    # One Trivy DB day for the whole run: a run across midnight must not move that tag.
    day = db_day()
    sample0, sample1 = build(spec0, db_updated_at=day), build(spec1, db_updated_at=day)
    # Measured as installed: pip compiles a package's bytecode.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(airgapped_registry.__file__).parent)],
        check=True,
    )
    print(
        f"machine: nproc={os.cpu_count()}, load average {Path('/proc/loadavg').read_text().strip()}"
    )
    print(f"sample: {spec0}\n  {len(sample0.artifacts)} tags, {len(sample0.blob_digests)} blobs")

    relay = start("relay")
    started = time.monotonic()
    with RegistryClient(relay.url, timeout=120) as client:
        push(sample0, client)
    print(f"seeded the relay's registry in {time.monotonic() - started:.1f} s", flush=True)
    ours_site = start("site-airgap")
    skopeo_site = start("site-skopeo")

    ours = Ours(work, args)
    skopeo = Skopeo(work)
    ours.keys()
    lists = tag_lists(sample0, semver_series(1))
    spec_path, lock_path = work / "mirror.yaml", work / "mirror.lock"
    write_mirror_yaml(spec_path, relay, lists)
    write_skopeo_yaml(skopeo.file, relay, lists)
    run([ours.airgap, "lock", "--spec", str(spec_path), "--lock", str(lock_path)], ours.log)
    lock0 = work / "mirror.lock.0"
    shutil.copy(lock_path, lock0)
    needs0 = lock_needs(read_lock(lock0))
    unique = sum(needs0.values())
    print(
        f"lock: {len(read_lock(lock0).entries)} entries; unique content {len(needs0)} digests, "
        f"{unique:,} bytes ({megabytes(unique)})",
        flush=True,
    )

    results: dict[str, Figures] = {}

    def record(key: str, figures: Figures) -> None:
        results[key] = figures
        written = (
            "" if figures.output_bytes is None else f", {figures.output_bytes:,} bytes written"
        )
        print(
            f"{key}: {figures.wall:.2f} s, tool CPU {figures.tool_cpu:.1f} s, "
            f"{figures.registry} CPU {figures.registry_cpu:.1f} s, load {figures.load:.2f}, "
            f"{figures.requests} requests, {figures.bytes_uploaded:,} bytes uploaded{written}",
            flush=True,
        )

    # 1. full export. Each tool starts from a warm page cache on the relay's storage.
    warm(relay.root / "storage")
    record("skopeo export", skopeo.export("full export", relay, work / "skopeo-dir"))
    warm(relay.root / "storage")
    record("ours export", ours.export("full export", relay, lock0, work / "bundle-full"))

    # 2. import into an empty registry.
    record("skopeo import", skopeo.import_("import", skopeo_site, work / "skopeo-dir"))
    record("ours import", ours.import_("import", ours_site, work / "bundle-full"))
    results["ours import"].notes.append(f"verify (not timed): {ours.verify(ours_site, lock0)}")

    # 3. the base-layer change: re-push, re-lock, then inventory → delta export → import.
    started = time.monotonic()
    with RegistryClient(relay.url, timeout=120) as client:
        push(sample1, client)
    run([ours.airgap, "lock", "--spec", str(spec_path), "--lock", str(lock_path)], ours.log)
    lock1 = work / "mirror.lock.1"
    shutil.copy(lock_path, lock1)
    print(f"re-pushed base_generation=1 and re-locked in {time.monotonic() - started:.1f} s")
    needs1 = lock_needs(read_lock(lock1))
    held = stored_digests(ours_site)
    new = {digest: size for digest, size in needs1.items() if digest not in held}
    new_unique = sum(new.values())
    against_lock = sum(size for digest, size in needs1.items() if digest not in needs0)
    print(
        f"new unique content: {len(new)} digests, {new_unique:,} bytes not in the seeded site "
        f"registry ({against_lock:,} bytes not in the old lock)",
        flush=True,
    )
    inventory = work / "inventory.json"
    record("ours inventory", ours.inventory("delta: inventory", ours_site, inventory))
    record(
        "ours delta export",
        ours.export("delta export", relay, lock1, work / "bundle-delta", inventory),
    )
    record("ours delta import", ours.import_("delta import", ours_site, work / "bundle-delta"))
    results["ours delta import"].notes.append(
        f"verify (not timed): {ours.verify(ours_site, lock1)}"
    )
    if not args.no_skopeo_delta:
        warm(relay.root / "storage")
        record(
            "skopeo export again",
            skopeo.export("after the change: full dir again", relay, work / "skopeo-dir-1"),
        )
        record(
            "skopeo import again",
            skopeo.import_("after the change: import", skopeo_site, work / "skopeo-dir-1"),
        )

    order = [
        "skopeo export",
        "ours export",
        "skopeo import",
        "ours import",
        "ours inventory",
        "ours delta export",
        "ours delta import",
        "skopeo export again",
        "skopeo import again",
    ]
    rows = [results[key] for key in order if key in results]
    print()
    print(table(rows))
    print()
    print(
        f"unique content of the lock: {unique:,} bytes; new unique after the change: "
        f"{new_unique:,} bytes"
    )
    print("\n".join(verdicts(results, unique, new_unique)))
    print("\nnotes:")
    for f in rows:
        for note in f.notes:
            print(f"- {f.tool}, {f.step}: {note}")
    print("\nrequests by method:")
    for f in rows:
        print(f"- {f.tool}, {f.step} ({f.registry}): {dict(sorted(f.methods.items()))}")
    if ours.profile is not None:
        print_profiles(ours.profile)
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
