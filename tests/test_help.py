"""Every script in experiments/ explains itself: --help lists each of its flags with a description.

A script's own flags are read from `--helpxml`: those absl marks as key flags of the script
(defined in it, or adopted like --config and --workdir) and those defined in t5x_like modules.
"""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from testutil import REPO, load_config

SCRIPTS = sorted((REPO / "experiments").glob("*.py"))
# Scripts that still parse their flags with absl's default parser (`app.run(main)`), whose
# help exits 1: passing `flags_parser=t5x_like.cli.parse_flags` makes it 0.
ABSL_DEFAULT_PARSER: set[str] = set()
TIMEOUT_S = 120


def _run_all(flag: str) -> dict[str, subprocess.CompletedProcess]:
    """Runs every script with `flag`, concurrently (each spends its time importing JAX)."""
    procs = {
        script.name: subprocess.Popen(
            [sys.executable, str(script), flag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for script in SCRIPTS
    }
    results = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.fixture(scope="module")
def helps() -> dict[str, tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]]:
    """script name -> (its --help run, its --helpxml run)."""
    short, xml = _run_all("--help"), _run_all("--helpxml")
    return {name: (short[name], xml[name]) for name in short}


def _own_flags(xml_text: str) -> dict[str, str]:
    """name -> description of the flags the script itself offers."""
    root = ET.fromstring(xml_text[xml_text.index("<?xml") :])
    own = {}
    for flag in root.iter("flag"):
        module = flag.findtext("file") or ""
        if flag.findtext("key") == "yes" or module.startswith("t5x_like"):
            own[flag.findtext("name")] = (flag.findtext("meaning") or "").strip()
    return own


def test_scripts_are_discovered():
    assert {"train.py", "eval.py", "infer.py", "report.py"} <= {s.name for s in SCRIPTS}


def test_help_exits_0_for_every_script_but_the_absl_parsed_ones(helps):
    """issue 21: `--help` is a request, not an error."""
    codes = {name: short.returncode for name, (short, _) in helps.items()}
    assert {name for name, code in codes.items() if code != 0} <= ABSL_DEFAULT_PARSER, codes
    assert {n for n, code in codes.items() if code == 0} >= {"train.py", "eval.py", "infer.py"}


@pytest.mark.parametrize("script", [s.name for s in SCRIPTS])
def test_help_explains_every_flag_of_the_script(script, helps):
    short, xml = helps[script]
    for result in (short, xml):
        # Asking for help is no failure (absl's own help flags exit 1; t5x_like.cli makes
        # them exit 0 in every script that parses its flags through it).
        expected = (0, 1) if script in ABSL_DEFAULT_PARSER else (0,)
        assert result.returncode in expected, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
    docstring_start = (REPO / "experiments" / script).read_text().split('"""')[1].strip()
    assert docstring_start.splitlines()[0] in short.stdout  # The usage text comes first.

    own = _own_flags(xml.stdout)
    assert own, f"{script} --helpxml lists no flags of its own"
    undocumented = sorted(name for name, meaning in own.items() if not meaning)
    assert not undocumented, f"{script}: flags without a description: {undocumented}"
    # Each is listed in --help as `--name: description` (`--[no]name` for booleans).
    missing = sorted(
        name for name in own if not re.search(rf"--(\[no\])?{re.escape(name)}: \S", short.stdout)
    )
    assert not missing, f"{script} --help does not list {missing}:\n{short.stdout}"


def _fields(cfg, prefix=""):
    """Dotted names of a ConfigDict's leaf fields."""
    for key in cfg.keys():
        value = cfg[key]
        if hasattr(value, "keys"):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_configs_readme_documents_every_config_file_and_field():
    readme = (REPO / "configs" / "README.md").read_text()
    configs = sorted(p.name for p in (REPO / "configs").glob("*.py"))
    assert {"decoder_only.py", "t5.py", "t5_finetune.py", "saved_run.py"} <= set(configs)
    assert [c for c in configs if f"configs/{c}" not in readme] == []
    # Each field of the two full configs has a row: its section heading, then `field`.
    sections = re.split(r"\n### ", readme)
    undocumented = []
    for name in ("decoder_only", "t5"):
        for field in _fields(load_config(name)):
            section, _, leaf = field.rpartition(".")
            heading = f"`{section}`" if section else "Top level"
            text = next((s for s in sections if s.startswith(heading)), "")
            if f"`{leaf}`" not in text:
                undocumented.append(f"{name}: {field}")
    assert undocumented == [], "add these fields to configs/README.md"
