"""Mutation testing (mutmut) of the modules everything rests on; `make mutate` runs it.

    python bench/mutation.py run [--jobs N] [--resume [--retest-survivors]] [MODULE ...]
                                                 # MODULE: runtime/sampling.py, export/fused/*.py
    python bench/mutation.py report                                    # re-read results, rewrite the JSON

mutmut needs the package laid out as installed, but this repo maps runtime/, export/ and devices/
onto edgelm.* through setuptools package-dir, and .venv's editable finder sends `import edgelm`
back to those folders whatever sys.path says. So each group of modules gets a throwaway workspace
build/mutate/<group>/: src/edgelm/ (the wheel's layout), copies of tests/ and models/, a
pyproject.toml with the group's [tool.mutmut] (modules to mutate, the fast tests they need), and
site/ on PYTHONPATH: a sitecustomize that removes the editable finder (so the mutated copy is
imported, in subprocesses too) and a pytest plugin that refuses to run if edgelm came from
anywhere else. Runtime groups use bundles pre-exported from the unmutated copy
(EDGELM_TEST_BUNDLES, as tests/runtime_fixtures.py offers); the export group exports its own.
Results: bench/results/mutation.json (score = (killed + timeout + segfault) / mutants tested). One-line notes
on survivors (equivalent, or the test that would kill it) live in bench/mutation_notes.json, keyed
by each survivor's note_key (module::function::mutation), so they survive reruns.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"
OUT = ROOT / "bench" / "results" / "mutation.json"
NOTES = ROOT / "bench" / "mutation_notes.json"
LAYOUT = {"edgelm": "edgelm", "export": "edgelm/export", "runtime": "edgelm/runtime", "devices": "edgelm/devices"}
ARCHS = ["lstm", "gru", "mingru", "mamba", "rglru"]

# group -> modules it mutates, the tests those modules need (nothing slow or environment-heavy:
# no wheel/venv builds, no memory soak, no mypy), whether runtime tests may use pre-exported bundles.
GROUPS = {
    "sampling": (["runtime/sampling.py"],
                 ["test_sampling_reference.py", "test_runtime_decode.py", "test_runtime_misuse.py",
                  "test_runtime_stream.py", "test_runtime_batch.py"], True),
    "state": (["runtime/snapshot.py", "runtime/session.py", "runtime/scheduler.py", "runtime/stream.py"],
              ["test_runtime_contracts.py", "test_runtime_stream.py", "test_runtime_misuse.py",
               "test_runtime_batch.py", "test_runtime_stateful.py", "test_parity.py", "test_bundle_trust.py"], True),
    "manifest": (["runtime/manifest.py"], ["test_manifest.py", "test_bundle_trust.py"], True),
    "bundle": (["runtime/bundle.py"],
               ["test_bundle_trust.py", "test_signing.py", "test_runtime_contracts.py", "test_runtime_misuse.py"],
               True),
    # the fused forms against their models in PyTorch, validation against its recomputation (on
    # bundles from the unmutated copy), and one real export of lstm and mamba (the ONNX symbolics)
    "export": (["export/validate.py", "export/fused/*.py"],
               ["test_fused_forms.py", "test_validate.py",
                "test_export.py::test_prefill_leaves_the_state_stepping_leaves"], True),
    # the quantizer: methods and Q/DQ ops alone, the injected-outlier targets, the CLI end to end
    "quant": (["export/quant/*.py", "export/trt_qdq.py"],
              ["test_quant_methods.py", "test_quant_outliers.py", "test_quant_cli.py", "test_trt_qdq.py"], False),
    # every model format: transformers / mamba_ssm directories against transformers itself,
    # safetensors round trips, char-RNN state dicts, torch files
    "import": (["edgelm/importers/*.py", "edgelm/checkpoint.py"],
               ["test_import_mamba.py", "test_safetensors.py", "test_charrnn.py", "test_checkpoint.py"], False),
}

SITECUSTOMIZE = '''\
# mutation workspace: drop the editable install's finder so `import edgelm` follows sys.path
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
'''
GUARD = '''\
"""pytest plugin of the mutation workspace: edgelm must come from mutants/src; per-process tmp dir."""
import os, shutil
from pathlib import Path
import pytest

WS = Path(os.environ["EDGELM_MUTATE_WS"]).resolve()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    import edgelm, edgelm.runtime, edgelm.export
    for mod in (edgelm, edgelm.runtime, edgelm.export):
        if not Path(mod.__file__).resolve().is_relative_to(WS / "mutants" / "src"):
            raise pytest.UsageError(f"{mod.__name__} imported from {mod.__file__}, not the mutated copy")
    if config.option.basetemp is None:  # forked workers each get their own, removed at the end
        (WS / "tmp").mkdir(exist_ok=True)
        config.option.basetemp = str(WS / "tmp" / f"p{os.getpid()}")
        config._mutate_tmp = config.option.basetemp


def pytest_internalerror(excrepr, excinfo):  # mutmut hides a worker's output: keep this one
    with open(WS / "internalerror.log", "a") as f:
        f.write(f"pid {os.getpid()} mutant {os.environ.get('MUTANT_UNDER_TEST')}\\n{excrepr}\\n")


def pytest_unconfigure(config):
    if getattr(config, "_mutate_tmp", None):
        shutil.rmtree(config._mutate_tmp, ignore_errors=True)
'''


def _matches(module: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(module, p) or fnmatch.fnmatch(p, module) for p in patterns)


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(x)) for x in items) + "]"


def copy_wheel_layout(ws: Path) -> None:
    """ws/src/edgelm (the wheel's layout: edgelm/ first, the mapped packages inside it), ws/tests,
    ws/models, and ws/site/sitecustomize.py: with PYTHONPATH=ws/site:ws/src, `import edgelm` is
    this copy, in subprocesses too."""
    ws.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for top, dst in LAYOUT.items():
        shutil.copytree(ROOT / top, ws / "src" / dst, ignore=ignore, dirs_exist_ok=True)
    for d in ("tests", "models"):
        shutil.copytree(ROOT / d, ws / d, ignore=ignore, dirs_exist_ok=True)
    (ws / "site").mkdir(exist_ok=True)
    (ws / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)


def prepare(group: str, resume: bool) -> Path:
    """The workspace build/mutate/<group>/ (wiped first unless resume)."""
    modules, tests, prebuilt = GROUPS[group]
    ws = WORK / group
    if ws.exists() and not resume:
        shutil.rmtree(ws)
    copy_wheel_layout(ws)
    (ws / "site" / "edgelm_mutate_guard.py").write_text(GUARD)
    # exists before mutmut starts: a PYTHONPATH entry missing at startup is cached as absent
    (ws / "mutants" / "src").mkdir(parents=True, exist_ok=True)
    mutate = [f"src/edgelm/{m}" for m in modules]  # the whole group: its other modules' results stay readable
    (ws / "pyproject.toml").write_text(f"""\
[tool.mutmut]
source_paths = ["src"]
only_mutate = {_toml_list(mutate)}
also_copy = ["models"]
pytest_add_cli_args = ["-p", "edgelm_mutate_guard", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = {_toml_list(f"tests/{t}" for t in tests)}
# torch is imported by the tests: fork workers from a server that never ran a test
process_isolation = "forkserver"
# a test's recorded time leaves out its fixtures (bundle loads, one export in the export group);
# a mutant that loops is stopped after 2 x (its tests' time + 30 s) (mutmut's default, 15x, let
# one spin for 20 minutes)
timeout_constant = 30.0
timeout_multiplier = 2.0
use_git_change_detection = false

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["slow: longer end-to-end tests"]
""")
    return ws


def _env(ws: Path, prebuilt: bool) -> dict:
    env = dict(os.environ, EDGELM_MUTATE_WS=str(ws), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(ws / "site"), str(ws / "mutants" / "src")]))
    env.pop("EDGELM_TEST_BUNDLES", None)
    if prebuilt:
        env["EDGELM_TEST_BUNDLES"] = str(WORK / "bundles")
    return env


def export_bundles(ws: Path) -> None:
    """Bundles for the runtime tests, exported once from the unmutated copy in ws/src."""
    out = WORK / "bundles"
    shutil.rmtree(out, ignore_errors=True)
    code = ("import sys; from pathlib import Path; from edgelm.export import export_bundle\n"
            "for a in sys.argv[2:]:\n"
            "    export_bundle(Path(sys.argv[1]) / 'models' / f'{a}-tiny.pt', 'cpu', None, "
            f"Path({str(out)!r}) / a, with_reference=True)\n"
            "    export_bundle(Path(sys.argv[1]) / 'models' / f'{a}-tiny.pt', 'cpu', 'fp16', "
            f"Path({str(out)!r}) / f'{{a}}-fp16', chunk=8)  # as tests/test_parity.py's fp16_bundles")
    env = dict(_env(ws, False), PYTHONPATH=os.pathsep.join([str(ws / "site"), str(ws / "src")]))
    subprocess.run([sys.executable, "-c", code, str(ws), *ARCHS], env=env, cwd=ws, check=True)


def run(args) -> None:
    groups = [g for g, (mods, _, _) in GROUPS.items() if not args.modules or _matches_any(mods, args.modules)]
    if not groups:
        sys.exit(f"no group mutates {args.modules}; groups: {GROUPS}")
    mutmut = Path(sys.executable).parent / "mutmut"
    flags = ["--resume"] * args.resume + ["--retest-survivors"] * args.retest_survivors
    command = "make mutate" + (f" MUTATE_MODULES='{' '.join(args.modules)}'" if args.modules else "") + (
        f" MUTATE_ARGS='{' '.join(flags)}'" if flags else "")
    meta = {"groups_run": {}, "wall_time_s": 0.0, "jobs": args.jobs, "command": command,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "modules_requested": args.modules,
            "git_head": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()}
    if args.resume and (WORK / "run.json").exists():  # one report over resumed runs: times add up
        prev = json.loads((WORK / "run.json").read_text())
        meta.update(groups_run=prev.get("groups_run", {}), wall_time_s=prev.get("wall_time_s", 0.0),
                    date=prev.get("date", meta["date"]),
                    command=f"{prev.get('command')}; {command}",
                    modules_requested=sorted(set(prev.get("modules_requested") or []) | set(args.modules)))
    exported = args.resume and (WORK / "bundles").is_dir()
    for group in groups:
        t0 = time.time()
        ws = prepare(group, args.resume)
        if GROUPS[group][2] and not exported:
            export_bundles(ws)
            exported = True
        if args.retest_survivors:
            print(f"== {group}: {retest_survivors(ws)} survivors to test again", flush=True)
        cmd = [str(mutmut), "run", "--max-children", str(args.jobs)]
        print(f"== {group}: {' '.join(cmd)} (in {ws})", flush=True)
        rc = None
        try:
            rc = subprocess.run(cmd, cwd=ws, env=_env(ws, GROUPS[group][2])).returncode
        finally:  # recorded even when stopped (Ctrl-C): --resume goes on and adds up the time
            took = round(time.time() - t0, 1)
            before = meta["groups_run"].get(group, {}).get("wall_time_s", 0.0) if args.resume else 0.0
            meta["groups_run"][group] = {"wall_time_s": round(before + took, 1), "command": "mutmut " + " ".join(cmd[1:]),
                                         "tests": [f"tests/{t}" for t in GROUPS[group][1]], "finished": rc == 0}
            meta["wall_time_s"] = round(meta["wall_time_s"] + took, 1)
            (WORK / "run.json").write_text(json.dumps(meta, indent=2))
        if rc != 0:
            sys.exit(f"mutmut stopped with exit code {rc} in {ws}; MUTATE_ARGS=--resume continues")
    report()


def retest_survivors(ws: Path) -> int:
    """Forget the verdict of every surviving mutant in ws not explained as EQUIVALENT in the notes,
    so the next run tests it again (mutmut keeps a verdict until the mutated function's source
    changes; new tests do not reset it). Exit codes: 0 survived, 5/33 no tests."""
    from mutmut.configuration import reset_config

    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    count, here = 0, os.getcwd()
    os.chdir(ws)  # _survivor reads mutmut's files relative to the workspace
    reset_config()
    try:
        for meta in Path("mutants").rglob("*.py.meta"):
            data = json.loads(meta.read_text())
            codes, src_rel = data["exit_code_by_key"], str(meta.relative_to("mutants"))[: -len(".meta")]
            stale = [k for k, code in codes.items() if code in (0, 5, 33)
                     and not _survivor(ws, src_rel, k, "", notes)["explanation"].startswith("EQUIVALENT")]
            for key in stale:
                codes[key] = None
            if stale:
                meta.write_text(json.dumps(data, indent=4))
            count += len(stale)
    finally:
        os.chdir(here)
    return count


def _matches_any(mods, patterns) -> bool:
    return any(_matches(m, patterns) for m in mods)


# -- report ----------------------------------------------------------------------------------
def _first_line(src_path: Path, func: str, cls: str | None) -> int:
    """1-based line of the function's first line (decorators included) in the unmutated copy."""
    tree = ast.parse(src_path.read_text())
    scope = tree.body
    if cls:
        scope = next(n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next(n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func)
    return min([node.lineno] + [d.lineno for d in node.decorator_list])


def _survivor(ws: Path, src_rel: str, key: str, status: str, notes: dict) -> dict:
    import libcst as cst
    from mutmut.mutation.diff_apply import get_diff_for_mutant, read_functions_from_index
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    diff = get_diff_for_mutant(key, path=src_rel)
    func, cls = orig_function_and_class_names_from_key(key)
    module = _repo_path(src_rel)
    # the diff numbers the lines of the function's code, which may start with comments above it
    orig = cst.Module([read_functions_from_index(key, src_rel)[0]]).code.strip().split("\n")
    lead = next(i for i, ln in enumerate(orig) if re.match(r"\s*(@|def |async def )", ln))
    first = _first_line(ws / src_rel, func, cls) - lead
    body, line, pos = diff.splitlines()[2:], None, 0  # [2:]: no ---/+++ header
    for ln in body:
        if ln.startswith("@@"):
            pos = int(re.match(r"@@ -(\d+)", ln).group(1)) - 1
        elif ln.startswith("-"):
            line = first + pos
            break
        elif ln.startswith("+"):
            line = line or first + pos  # an insertion only: the line it goes before
        else:
            pos += 1
    changed = [ln for ln in body if ln[:1] in "+-"]
    where = f"{cls}.{func}" if cls else func
    note_key = f"{module}::{where}::" + " | ".join(ln.strip() for ln in changed)
    return {"module": module, "line": line, "function": where, "status": status, "mutant": key,
            "mutation": "\n".join(changed), "diff": diff, "explanation": notes.get(note_key, ""),
            "note_key": note_key}


def _repo_path(src_rel: str) -> str:
    """src/edgelm/runtime/x.py -> runtime/x.py (the repo's package-dir layout)."""
    rel = src_rel.removeprefix("src/")
    for top, dst in sorted(LAYOUT.items(), key=lambda kv: -len(kv[1])):
        if rel.startswith(dst + "/"):
            return top + rel[len(dst):]
    return rel


def _count_not_run(wanted: list[str], done: dict) -> dict:
    """Mutants mutmut would make in each wanted module without results (for the projection)."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.file_mutation import mutate_file_contents

    rest = sorted({str(p.relative_to(ROOT)) for w in wanted for p in ROOT.glob(w)} - set(done))
    ws = next((WORK / g for g in GROUPS if (WORK / g / "pyproject.toml").exists()), None)
    if not rest or ws is None:
        return {}
    here = os.getcwd()
    os.chdir(ws)  # mutmut reads its config from the working directory
    reset_config()
    try:
        return {m: len(mutate_file_contents(m, (ROOT / m).read_text(), None, None).mutant_names) for m in rest}
    finally:
        os.chdir(here)


DETECTED = ("killed", "timeout", "segfault")  # the tests failed, hung or crashed
UNTESTED = ("not checked", "skipped")


def _module_result(ws: Path, src_rel: str, group: str, notes: dict, survivors: list) -> dict:
    """One mutated module's counts (cwd: its workspace); its survivors are appended to `survivors`."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    data = SourceFileMutationData(path=src_rel)
    data.load()
    counts: dict[str, int] = {}
    for key, code in sorted(data.exit_code_by_key.items()):
        status = status_by_exit_code[code]
        counts[status] = counts.get(status, 0) + 1
        if status not in DETECTED + UNTESTED:
            survivors.append(_survivor(ws, src_rel, key, status, notes))
    checked = sum(counts.values()) - sum(counts.get(s, 0) for s in UNTESTED)
    killed = sum(counts.get(s, 0) for s in DETECTED)
    live = ROOT / _repo_path(src_rel)
    return {"source_changed_since_run": not live.exists() or live.read_bytes() != (ws / src_rel).read_bytes(),
            "score": round(killed / checked, 4) if checked else None, "killed": killed,
            "total": checked, "survived": counts.get("survived", 0), "no_tests": counts.get("no tests", 0),
            "timeout": counts.get("timeout", 0), "segfault": counts.get("segfault", 0),
            "not_checked": counts.get("not checked", 0),
            "other": {k: v for k, v in counts.items() if k not in (
                "killed", "survived", "no tests", "timeout", "segfault", "not checked")}, "group": group}


def _projection(modules: dict, groups: dict, not_run: dict) -> float:
    """Wall seconds for the mutants not tested yet: each module's count x the seconds per mutant of
    its group's run (else of all runs)."""
    per = {g: (info["wall_time_s"], sum(m["total"] for m in modules.values() if m["group"] == g))
           for g, info in groups.items()}
    overall = sum(t for t, _ in per.values()) / max(1, sum(n for _, n in per.values()))
    rate = {g: t / n if n else overall for g, (t, n) in per.items()}
    rest = {**not_run, **{k: m["not_checked"] for k, m in modules.items() if m["not_checked"]}}
    return sum(n * rate.get(next(g for g, (mods, _, _) in GROUPS.items() if _matches(k, mods)), overall)
               for k, n in rest.items())


def report() -> None:
    from mutmut.configuration import reset_config

    run_meta = json.loads((WORK / "run.json").read_text()) if (WORK / "run.json").exists() else {}
    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    modules, survivors, groups = {}, [], {}
    here = os.getcwd()
    for group, (mods, tests, prebuilt) in GROUPS.items():
        ws = WORK / group
        if group not in run_meta.get("groups_run", {}) or not (ws / "mutants").is_dir():
            continue
        groups[group] = dict({"tests": [f"tests/{t}" for t in tests]}, **run_meta["groups_run"][group],
                             prebuilt_runtime_bundles=prebuilt)
        os.chdir(ws)
        reset_config()
        try:
            for meta in sorted(Path("mutants/src").rglob("*.py.meta")):
                src_rel = str(meta.relative_to("mutants"))[: -len(".meta")]
                modules[_repo_path(src_rel)] = _module_result(ws, src_rel, group, notes, survivors)
        finally:
            os.chdir(here)
    for name, m in modules.items():  # survivors explained as equivalent cannot be killed by any test
        m["equivalent"] = sum(1 for s in survivors if s["module"] == name and s["explanation"].startswith("EQUIVALENT"))
        m["score_excluding_equivalent"] = round(m["killed"] / (m["total"] - m["equivalent"]), 4) if m["total"] else None
    killed = sum(m["killed"] for m in modules.values())
    total = sum(m["total"] for m in modules.values())
    equivalent = sum(m["equivalent"] for m in modules.values())
    wanted = [m for mods, _, _ in GROUPS.values() for m in mods]
    not_run = _count_not_run(wanted, modules)
    projected = _projection(modules, groups, not_run)
    result = {
        "score": round(killed / total, 4) if total else None,
        "killed": killed, "total": total,
        "score_definition": "(killed + timeout + segfault: the tests failed, hung or crashed) / mutants tested; "
                            "survived and 'no tests' count against it",
        "equivalent": equivalent,
        "score_excluding_equivalent": round(killed / (total - equivalent), 4) if total else None,
        "complete": all(any(fnmatch.fnmatch(m, p) for m in modules) for p in wanted),
        "modules": dict(sorted(modules.items())),
        "survivors": sorted(survivors, key=lambda s: (s["module"], s["line"] or 0, s["mutant"])),
        "tool": {"name": "mutmut", "version": version("mutmut")},
        "command": run_meta.get("command", "make mutate"),
        "date": run_meta.get("date"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "workers": run_meta.get("jobs")},
        "wall_time_s": run_meta.get("wall_time_s"),
        "git_head": run_meta.get("git_head"),
        "groups": groups,
        "modules_not_run": not_run,
        "projected_wall_time_s_for_the_rest": round(projected),
        "projection": "mutants not yet tested x the wall seconds per mutant of their group's run (else of all runs), "
                      "same machine and workers",
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"score {result['score']} ({killed}/{total}) over {len(modules)} modules, "
          f"{len(survivors)} survivors -> {OUT.relative_to(ROOT)}")
    for name, m in result["modules"].items():
        print(f"  {name:28s} {m['score']}  {m['killed']}/{m['total']}  ({m['equivalent']} equivalent)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("modules", nargs="*", help="only these modules (default: all of GROUPS)")
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    r.add_argument("--resume", action="store_true", help="keep the workspace and mutmut's results so far")
    r.add_argument("--retest-survivors", action="store_true",
                   help="with --resume: test again the surviving mutants not explained as equivalent")
    sub.add_parser("report")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else report()


if __name__ == "__main__":
    main()
