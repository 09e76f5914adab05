"""Every launch recipe in BUILD.md and README.md passes the project's own validation for the
topology it is written for (a doc recipe must never fail its own checks).

The recipes are the commands in the ```bash blocks that run experiments/{train,eval,infer,
score,benchmark,sweep}.py, followed through `\\` continuations, `&&`/`;`/`&` lists, `for ... do`
loops, environment assignments and the wrappers that start them elsewhere (`srun`,
`gcloud ... ssh --command="..."`). Each one's config is built as the script builds it
(configs/*.py + its --config.* overrides, through the scripts' own flag code; eval/infer/score
start from the config of the train recipe that wrote their --workdir), then checked with
`validation.validate_topology` for its job, without creating a device:

- a `# topology: <D> devices, <P> processes[, <S> slices]` comment in the block applies to the
  commands after it (BUILD.md documents the convention);
- otherwise XLA_FLAGS' fake host device count x --num_processes, or benchmark.py's
  --dryrun_devices, or one device and one process.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex

import pytest

from t5x_like.errors import ConfigError
from t5x_like.experiment import validation
from t5x_like.tools import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("BUILD.md", "README.md")
SCRIPTS = ("train", "eval", "infer", "score", "benchmark", "sweep")
# Scripts whose config is the --workdir's config.json unless --config is given.
WORKDIR_SCRIPTS = ("eval", "infer", "score")
DEFAULT_CONFIGS = {
    "train": "configs/decoder_only.py",
    "benchmark": "configs/benchmark.py:cpu",
    "sweep": "configs/decoder_only.py",
}
_FENCE = re.compile(r"^```(\w*)\s*$")
_TOPOLOGY = re.compile(r"#\s*topology:\s*(.*)$", re.IGNORECASE)
_TOPOLOGY_PART = re.compile(r"^(\d+)\s+(device|process|slice)(s|es)?$")
_SCRIPT = re.compile(r"(?:^|/)experiments/(\w+)\.py$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {";", "&", "&&", "||", "|", ";;", "(", ")"}
_SHELL_WORDS = {"do", "then", "else", "time", "exec", "nohup"}
# Launchers whose own options come before the command they run.
_WRAPPERS = {"srun", "mpirun", "mpiexec", "torchrun", "env", "sudo"}


@dataclasses.dataclass(frozen=True)
class Topology:
    devices: int = 1
    processes: int = 1
    slices: int = 1


@dataclasses.dataclass
class Recipe:
    where: str  # file:line of the command's first line.
    script: str  # train | eval | ...
    args: list[str]  # The script's arguments.
    env: dict[str, str]
    # From a `# topology:` comment (one job, or several for a command that serves several),
    # else () and inferred from the flags.
    topologies: tuple[Topology, ...] = ()
    wrapper: str = ""  # srun / gcloud / ... when the command is started by one.

    def flag(self, name: str) -> str | None:
        """The last `--name=value` (or `--name value`) of the arguments."""
        found = None
        for i, arg in enumerate(self.args):
            if arg.startswith(f"--{name}="):
                found = arg.split("=", 1)[1]
            elif arg == f"--{name}" and i + 1 < len(self.args):
                found = self.args[i + 1]
        return found

    def flags(self, name: str) -> list[str]:
        return [a.split("=", 1)[1] for a in self.args if a.startswith(f"--{name}=")]

    def config_overrides(self) -> list[tuple[str, str]]:
        out = []
        for arg in self.args:
            match = re.match(r"^--config\.([^=]+)=(.*)$", arg, re.DOTALL)
            if match:
                out.append((match.group(1), match.group(2)))
        return out


# --------------------------------------------------------------------------- parsing


def parse_topology(text: str) -> tuple[Topology, ...]:
    """`'64 devices, 16 processes[, 2 slices]'` -> (Topology(64, 16, 2),); alternatives
    joined by ` or ` give one Topology each."""
    return tuple(_one_topology(t) for t in re.split(r"\s+or\s+", text.strip()))


def _one_topology(text: str) -> Topology:
    counts = {}
    for part in text.split(","):
        match = _TOPOLOGY_PART.match(part.strip())
        if not match:
            raise ValueError(
                f"bad topology part {part.strip()!r} in {text!r}: write "
                "'# topology: <D> devices, <P> processes[, <S> slices]'"
            )
        counts[match.group(2)] = int(match.group(1))
    if "device" not in counts:
        raise ValueError(f"topology {text!r} does not say how many devices")
    return Topology(counts["device"], counts.get("process", 1), counts.get("slice", 1))


def logical_lines(block: str) -> list[tuple[int, str]]:
    """(first line index, text) of each shell line of `block`: `\\`-newlines joined, newlines
    inside quotes kept, comments kept as their own lines (for `# topology:`)."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start, line, quote, i = 0, 0, None, 0
    word_start = True
    while i < len(block):
        char = block[i]
        if quote:
            if char == "\\" and quote == '"' and i + 1 < len(block):
                current.append(block[i : i + 2])
                line += block[i + 1] == "\n"
                i += 2
                continue
            if char == quote:
                quote = None
            line += char == "\n"
            current.append(char)
        elif char == "\\" and block[i + 1 : i + 2] == "\n":
            current.append(" ")
            line += 1
            i += 2
            continue
        elif char == "\\" and i + 1 < len(block):
            current.append(block[i : i + 2])
            i += 2
            continue
        elif char in "'\"":
            quote = char
            current.append(char)
        elif char == "#" and word_start:
            end = block.find("\n", i)
            end = len(block) if end < 0 else end
            text = "".join(current).strip()
            if text:
                out.append((start, text))
            out.append((line, block[i:end]))
            current, i = [], end
            continue
        elif char == "\n":
            text = "".join(current).strip()
            if text:
                out.append((start, text))
            current = []
            line += 1
            start = line
        else:
            if not current or not "".join(current).strip():
                start = line
            current.append(char)
        word_start = char in " \t\n;&|()" if not quote else False
        i += 1
    if quote:
        raise ValueError(f"unbalanced {quote} in a code block: {block[:200]!r}")
    text = "".join(current).strip()
    if text:
        out.append((start, text))
    return out


def simple_commands(text: str) -> list[list[str]]:
    """The simple commands of one shell line: split at ; & && || | and parentheses."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _recipes_in_command(
    words: list[str],
    where: str,
    topologies: tuple[Topology, ...],
    env: dict[str, str] | None = None,
    wrapper: str = "",
) -> list[Recipe]:
    """The recipes a simple command runs: itself, or the commands a wrapper hands on."""
    env = dict(env or {})
    words = list(words)
    while words and (_ENV.match(words[0]) or words[0] in _SHELL_WORDS):
        if _ENV.match(words[0]):
            name, _, value = words[0].partition("=")
            env[name] = value
        words.pop(0)
    if not words:
        return []
    if os.path.basename(words[0]) == "gcloud":
        inner = [w.split("=", 1)[1] for w in words if w.startswith("--command=")]
        out = []
        for command_text in inner:
            for _, line in logical_lines(command_text):
                if line.startswith("#"):
                    continue
                for command in simple_commands(line):
                    out += _recipes_in_command(command, where, topologies, env, "gcloud")
        return out
    for i, word in enumerate(words):
        match = _SCRIPT.search(word)
        if match:
            launcher = [os.path.basename(w) for w in words[:i]]
            if not launcher or not any(re.match(r"python[\d.]*$", w) for w in launcher):
                return []  # Not run by Python (e.g. `cat experiments/train.py`).
            if match.group(1) not in (*SCRIPTS, "convert_checkpoint"):
                return []
            started_by = wrapper or next((w for w in launcher if w in _WRAPPERS), "")
            return [Recipe(where, match.group(1), words[i + 1 :], env, topologies, started_by)]
    return []


def parse_markdown(path: str) -> list[Recipe]:
    """Every recipe in the shell code blocks of the Markdown file `path`."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    recipes: list[Recipe] = []
    name = os.path.basename(path)
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("bash", "sh", "shell"):
            topologies: tuple[Topology, ...] = ()
            for offset, text in logical_lines("\n".join(lines[i + 1 : end])):
                where = f"{name}:{i + 2 + offset}"
                annotated = _TOPOLOGY.match(text)
                if annotated:
                    topologies = parse_topology(annotated.group(1))
                    continue
                if text.startswith("#"):
                    continue
                for command in simple_commands(text):
                    recipes += _recipes_in_command(command, where, topologies)
        i = end + 1
    return recipes


def all_recipes() -> list[Recipe]:
    return [r for doc in DOCS for r in parse_markdown(os.path.join(REPO, doc))]


# --------------------------------------------------------------------------- configs


def topologies_of(recipe: Recipe) -> tuple[Topology, ...]:
    """The recipe's jobs: its `# topology:` comment, else the one its flags say."""
    if recipe.topologies:
        return recipe.topologies
    if recipe.script == "benchmark" and recipe.flag("mode") == "dryrun":
        return (Topology(int(recipe.flag("dryrun_devices") or 1)),)
    match = re.search(
        r"--xla_force_host_platform_device_count=(\d+)", recipe.env.get("XLA_FLAGS", "")
    )
    per_process = int(match.group(1)) if match else 1
    processes = int(recipe.flag("num_processes") or 1)
    return (Topology(per_process * processes, processes),)


def _config_path(spec: str) -> str:
    path, colon, arg = spec.partition(":")
    return os.path.join(REPO, path) + colon + arg


def _workdir(value: str | None) -> str:
    return os.path.normpath(value or "")


def build_configs(recipe: Recipe, recipes: list[Recipe], tmp_root: str) -> list[tuple[str, object]]:
    """(label, ConfigDict) of every config the recipe runs, built as its script builds it.

    Raises:
      ConfigError: an override or config file that does not load (the script would refuse).
      LookupError: an eval/infer/score recipe whose workdir no recipe in the docs trains.
    """
    overrides = recipe.config_overrides()
    if recipe.script == "sweep":
        spec = sweep.SweepSpec(
            config=_config_path(recipe.flag("config") or DEFAULT_CONFIGS["sweep"]),
            overrides=[*recipe.flags("override"), *(f"{k}={v}" for k, v in overrides)],
            sweep=recipe.flags("sweep"),
            sweep_zip=recipe.flags("sweep_zip"),
        )
        devices = topologies_of(recipe)[0].devices
        _, runs = sweep.plan(spec, os.path.join(tmp_root, "sweep"), device_count=devices)
        base = [sweep.parse_override(o) for o in spec.overrides]
        return [
            (run.name, sweep.load_config(spec.config, [*base, *run.raw_overrides.items()])[0])
            for run in runs
        ]
    config = recipe.flag("config")
    if config is None and recipe.script in WORKDIR_SCRIPTS:
        workdir = _workdir(recipe.flag("workdir"))
        writers = [
            r for r in recipes if r.script == "train" and _workdir(r.flag("workdir")) == workdir
        ]
        if not writers:
            raise LookupError(f"no train recipe in the docs writes --workdir={workdir}")
        source = writers[-1]
        config = source.flag("config") or DEFAULT_CONFIGS["train"]
        overrides = [*source.config_overrides(), *overrides]
    config = config or DEFAULT_CONFIGS[recipe.script]
    cfg, _ = sweep.load_config(_config_path(config), overrides)
    return [("", cfg)]


def converted_workdirs(recipes: list[Recipe]) -> set[str]:
    """Workdirs made by convert_checkpoint.py --from_hf: their config comes from a Hugging Face
    model's config.json, which the docs cannot hold."""
    return {
        _workdir(r.flag("workdir"))
        for r in recipes
        if r.script == "convert_checkpoint" and r.flag("from_hf")
    }


def checked(recipes: list[Recipe]) -> list[Recipe]:
    """The recipes validated here: every script recipe but those working on a converted
    Hugging Face checkpoint (in its workdir, or taking its config from it)."""
    converted = converted_workdirs(recipes)

    def on_converted(r: Recipe) -> bool:
        if r.script in WORKDIR_SCRIPTS and _workdir(r.flag("workdir")) in converted:
            return True
        config_args = (r.flag("config") or "").partition(":")[2].split(",")
        return any(_workdir(arg) in converted for arg in config_args if arg)

    return [r for r in recipes if r.script in SCRIPTS and not on_converted(r)]


# Modules whose flags a script may take besides its own: the distributed start-up, a run's
# workdir, the --config flag and its actions.
_SHARED_FLAG_MODULES = ("t5x_like/distributed.py", "t5x_like/workdir_flags.py")
_SHARED_FLAGS = {"config", "help_config", "print_config", "help", "helpfull", "helpshort"}
_DEFINE = re.compile(r"DEFINE_\w+\(\s*\"(\w+)\"")


def defined_flags(script: str) -> set[str]:
    """The flags `experiments/<script>.py` defines, with those every script may take."""
    names = set(_SHARED_FLAGS)
    for path in (f"experiments/{script}.py", *_SHARED_FLAG_MODULES):
        with open(os.path.join(REPO, path), encoding="utf-8") as f:
            names |= set(_DEFINE.findall(f.read()))
    return names


def unknown_flags(recipe: Recipe) -> list[str]:
    """The recipe's --flags its script does not define (`--config.*` overrides are checked
    when the config is built)."""
    known = defined_flags(recipe.script)
    out = []
    for arg in recipe.args:
        match = re.match(r"^--?(no)?([A-Za-z_]\w*)(=|$)", arg)
        if (
            match
            and match.group(2) not in known
            and not (match.group(1) and f"no{match.group(2)}" in known)
        ):
            out.append(arg)
    return out


RECIPES = all_recipes()
CHECKED = checked(RECIPES)


# --------------------------------------------------------------------------- tests


def test_the_docs_have_recipes_for_every_topology():
    """The parser finds the recipes (the test below cannot pass on none), among them the pod
    and cluster recipes this test exists for."""
    assert len(CHECKED) >= 25, [r.where for r in CHECKED]
    assert {r.script for r in CHECKED} == set(SCRIPTS)
    jobs = {t for r in CHECKED for t in topologies_of(r)}
    for expected in (
        Topology(32, 32),  # SLURM, 4 nodes x 8 GPUs, one process per GPU.
        Topology(8, 2),  # Two CPU processes of 4 fake devices.
        Topology(16, 4),  # TPU pod slices of 16, 32, 64 and 256 chips, 4 chips per host.
        Topology(32, 8),
        Topology(64, 16),
        Topology(256, 64),
        Topology(512, 128, 2),  # Two slices of 256 chips.
    ):
        assert expected in jobs, sorted(jobs, key=dataclasses.astuple)
    # A command started on many hosts says so; none is checked as a 1-device job by mistake.
    for recipe in CHECKED:
        if recipe.wrapper in ("srun", "gcloud") or recipe.flag("num_processes"):
            assert any(t.processes > 1 for t in topologies_of(recipe)), recipe.where


JOBS = [(r, t) for r in CHECKED for t in topologies_of(r)]


@pytest.mark.parametrize(
    "recipe, topology",
    JOBS,
    ids=[f"{r.where}-{r.script}-{t.devices}x{t.processes}x{t.slices}" for r, t in JOBS],
)
def test_recipe_passes_validation_for_its_topology(recipe, topology, tmp_path):
    assert not unknown_flags(recipe), f"{recipe.where}: {recipe.script}.py has no such flags"
    try:
        built = build_configs(recipe, RECIPES, str(tmp_path))
    except (ConfigError, LookupError) as e:
        pytest.fail(f"{recipe.where}: {recipe.script}.py {shlex.join(recipe.args)}: {e}")
    assert built
    for label, cfg in built:
        try:
            validation.validate_topology(cfg, topology.devices, topology.processes, topology.slices)
        except ConfigError as e:
            pytest.fail(
                f"{recipe.where} {label} ({topology}): {recipe.script}.py "
                f"{shlex.join(recipe.args)} fails validation: {e}"
            )


# --------------------------------------------------------------------------- the parser itself


def test_parser_follows_continuations_wrappers_and_loops(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "# topology: 64 devices, 16 processes\n"
        'gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="\n'
        "  cd t5x_like && python experiments/train.py --config=configs/t5.py:large \\\n"
        "    --workdir=/mnt/w --config.mesh.fsdp=-1  # it's a comment\n"
        '  "\n'
        "```\n"
        "text\n"
        "```bash\n"
        "for i in 0 1; do\n"
        "  XLA_FLAGS=--xla_force_host_platform_device_count=4 .venv/bin/python "
        "experiments/train.py \\\n"
        "    --workdir=/tmp/mp --num_processes=2 --process_id=$i &\n"
        "done; wait\n"
        "srun --ntasks=8 .venv/bin/python experiments/eval.py --workdir=/tmp/mp\n"
        "cat experiments/train.py\n"
        "```\n"
    )
    recipes = parse_markdown(str(doc))
    assert [(r.where, r.script) for r in recipes] == [
        ("doc.md:3", "train"),
        ("doc.md:11", "train"),
        ("doc.md:14", "eval"),
    ]
    pod, loop, srun = recipes
    assert pod.args == ["--config=configs/t5.py:large", "--workdir=/mnt/w", "--config.mesh.fsdp=-1"]
    assert topologies_of(pod) == (Topology(64, 16),)
    assert pod.wrapper == "gcloud" and srun_wrapper(recipes) == "srun"
    assert topologies_of(loop) == (Topology(8, 2),)
    assert loop.flag("process_id") == "$i"
    assert topologies_of(srun) == (Topology(1, 1),)
    assert [label for label, _ in build_configs(srun, recipes, str(tmp_path))] == [""]


def srun_wrapper(recipes: list[Recipe]) -> str:
    return recipes[-1].wrapper


def test_a_recipe_that_does_not_fit_its_topology_fails(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\n"
        "# topology: 32 devices, 32 processes\n"
        "srun python experiments/train.py --config=configs/decoder_only.py "
        "--config.mesh.data=4 --config.mesh.fsdp=8 --config.train.batch_size=256\n"
        "```\n"
    )
    (recipe,) = parse_markdown(str(doc))
    ((_, cfg),) = build_configs(recipe, [recipe], str(tmp_path))
    with pytest.raises(ConfigError, match="data.num_shards=8 is not divisible by the 32"):
        validation.validate_topology(cfg, 32, 32)
    cfg.data.num_shards = 32
    assert validation.validate_topology(cfg, 32, 32) == {"data": 4, "fsdp": 8, "tensor": 1}
    with pytest.raises(ConfigError, match="mesh.num_slices=1.*2 slices"):
        validation.validate_topology(cfg, 32, 32, num_slices=2)
    with pytest.raises(ConfigError, match="between 3 processes"):
        validation.validate_topology(cfg, 32, 3)
    assert unknown_flags(recipe) == []
    recipe.args += ["--dryrun_devices=8", "--nodistributed_typo", "--workdir=/w"]
    assert unknown_flags(recipe) == ["--dryrun_devices=8", "--nodistributed_typo"]
    with pytest.raises(ValueError, match="bad topology part"):
        parse_topology("64 chips")
    assert parse_topology("16 devices, 4 processes or 512 devices, 128 processes, 2 slices") == (
        Topology(16, 4),
        Topology(512, 128, 2),
    )
