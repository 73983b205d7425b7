#!/usr/bin/env python3
"""Check META.json (PGXN Meta Spec 1.0.0) and that every version number agrees.

    python3 scripts/check_meta.py [--zip FILE]

* META.json has the fields PGXN requires, with semantic versions;
* its version and the version it provides are default_version of the control file as
  a semantic version (1.1 -> 1.1.0); the Makefile's EXTVERSION and meson.build's project
  version are default_version itself;
* the provided file and docfile exist; there is an upgrade path from every install script
  to default_version, and sql/upgrade.sql tests upgrades once there is more than one version;
* with --zip (what `make dist` builds): the archive holds only pg_background_queue-<version>/,
  with META.json (equal to this one), the control file, the SQL scripts, Makefile, README.md.

Exit status 1 with one line per problem. Only the standard library (any python3).
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = "pg_background_queue"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")
REQUIRED = ("name", "abstract", "version", "maintainer", "license", "provides", "meta-spec")
LICENSES = {"postgresql", "bsd", "mit", "apache_2_0", "gpl_2", "gpl_3", "lgpl_2_1", "lgpl_3_0"}


def semver_of(version: str) -> str:
    """An extension version as PGXN wants it: 1.1 -> 1.1.0."""
    parts = version.split(".")
    while len(parts) < 3:
        parts.append("0")
    return ".".join(parts)


def control_value(key: str) -> str | None:
    text = (ROOT / f"{EXTENSION}.control").read_text()
    match = re.search(rf"^\s*{key}\s*=\s*'([^']*)'", text, re.MULTILINE)
    return match.group(1) if match else None


def check_meta(meta: dict, problems: list[str]) -> None:
    for key in REQUIRED:
        if key not in meta:
            problems.append(f"META.json: missing required key {key!r}")
    if meta.get("name") != EXTENSION:
        problems.append(f"META.json: name is {meta.get('name')!r}, expected {EXTENSION!r}")
    if meta.get("meta-spec", {}).get("version") != "1.0.0":
        problems.append("META.json: meta-spec version must be 1.0.0")
    if meta.get("license") not in LICENSES:
        problems.append(f"META.json: unknown license {meta.get('license')!r}")
    if not meta.get("maintainer"):
        problems.append("META.json: no maintainer")
    if not SEMVER.match(str(meta.get("version", ""))):
        problems.append(f"META.json: version {meta.get('version')!r} is not a semantic version")
    provides = meta.get("provides", {})
    if EXTENSION not in provides:
        problems.append(f"META.json: provides has no {EXTENSION!r}")
    for name, ext in provides.items():
        for key in ("file", "version"):
            if key not in ext:
                problems.append(f"META.json: provides.{name} has no {key!r}")
        if "version" in ext and not SEMVER.match(ext["version"]):
            problems.append(f"META.json: provides.{name}.version is not a semantic version")
        for key in ("file", "docfile"):
            if key in ext and not (ROOT / ext[key]).is_file():
                problems.append(f"META.json: provides.{name}.{key} {ext[key]} does not exist")
    for phase in meta.get("prereqs", {}).values():
        for relation in phase.values():
            for name, version in relation.items():
                # a version, or a range: comma-separated ">= 15.0.0", "< 19.0.0", ...
                parts = [part.strip().lstrip("<>=! ") for part in str(version).split(",")]
                if version != "0" and not all(SEMVER.match(part) for part in parts):
                    problems.append(
                        f"META.json: prereq {name} {version!r} is not a version or a range"
                    )


def check_versions(meta: dict, problems: list[str]) -> str:
    default = control_value("default_version")
    if default is None:
        problems.append(f"{EXTENSION}.control: no default_version")
        return ""
    dist = semver_of(default)
    if meta.get("version") != dist:
        problems.append(
            f"META.json: version {meta.get('version')!r} does not match the control file's "
            f"default_version {default!r} (expected {dist!r})"
        )
    provided = meta.get("provides", {}).get(EXTENSION, {}).get("version")
    if provided != dist:
        problems.append(f"META.json: provides.{EXTENSION}.version {provided!r} is not {dist!r}")

    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^EXTVERSION\s*[:?]?=\s*(\S+)", makefile, re.MULTILINE)
    if match and match.group(1) != default:
        problems.append(f"Makefile: EXTVERSION {match.group(1)} is not {default}")
    meson = ROOT / "meson.build"
    if meson.is_file():
        match = re.search(r"version\s*:\s*'([^']+)'", meson.read_text())
        if match and match.group(1) != default:
            problems.append(f"meson.build: project version {match.group(1)} is not {default}")

    # every installable version reaches default_version through upgrade scripts
    edges: dict[str, set[str]] = {}
    bases: set[str] = set()
    for script in ROOT.glob(f"{EXTENSION}--*.sql"):
        versions = script.name[len(EXTENSION) + 2 : -4].split("--")
        if len(versions) == 1:
            bases.add(versions[0])
        elif len(versions) == 2:
            edges.setdefault(versions[0], set()).add(versions[1])
    if default not in bases and not any(default in targets for targets in edges.values()):
        problems.append(f"no install or upgrade script produces default_version {default}")
    for start in sorted(bases | set(edges)):
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        if default not in seen:
            problems.append(f"no upgrade path from version {start} to {default}")
    if edges and not (ROOT / "sql" / "upgrade.sql").is_file():
        problems.append("upgrade scripts exist but sql/upgrade.sql does not test them")
    return dist


def check_zip(path: Path, meta: dict, dist: str, problems: list[str]) -> None:
    prefix = f"{EXTENSION}-{dist}/"
    if path.name != f"{EXTENSION}-{dist}.zip":
        problems.append(f"{path.name}: expected the name {EXTENSION}-{dist}.zip")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        outside = [n for n in names if not n.startswith(prefix)]
        if outside:
            problems.append(f"{path.name}: entries outside {prefix}: {outside[:5]}")
        wanted = ["META.json", f"{EXTENSION}.control", "Makefile", "README.md"]
        wanted += [p.name for p in ROOT.glob(f"{EXTENSION}--*.sql")]
        for name in wanted:
            if prefix + name not in names:
                problems.append(f"{path.name}: {prefix}{name} is missing (not committed?)")
        if prefix + "META.json" in names:
            packed = json.loads(archive.read(prefix + "META.json"))
            if packed != meta:
                problems.append(f"{path.name}: META.json differs from the working tree's")


def main(argv: list[str]) -> int:
    zip_path = None
    if argv[:1] == ["--zip"] and len(argv) == 2:
        zip_path = Path(argv[1])
    elif argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    problems: list[str] = []
    try:
        meta = json.loads((ROOT / "META.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"META.json: {exc}", file=sys.stderr)
        return 1
    check_meta(meta, problems)
    dist = check_versions(meta, problems)
    if zip_path is not None and dist:
        check_zip(zip_path, meta, dist, problems)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"META.json and versions agree: {EXTENSION} {dist}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
