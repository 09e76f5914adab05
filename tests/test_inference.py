"""Inference from a workdir: prompts from flags and files, text out for both families, the CLI
writing JSONL, and reproducible sampling."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from testutil import REPO, load_config, tiny_config, tiny_t5_config

from t5x_like import checkpointing, decoding
from t5x_like import config as config_lib
from t5x_like.data.preprocessors import BOS_ID
from t5x_like.experiment import assembly as experiment
from t5x_like.experiment import restore
from t5x_like.experiment.inference import generate_text, read_prompts

SMALL = {"model.vocab_size": None, "data.vocab_size": 256, "model.num_layers": 1}
PROMPTS = ["The list type", "Return the value", "A module for <extra_id_0> files."]


def _workdir(cfg, workdir):
    """A workdir as the trainer writes it (config.json, a checkpoint at step 1), made cheaply
    from the initial state: decoding needs no trained weights."""
    exp = experiment.build_experiment(cfg, jax.devices()[:1])
    config_lib.save_config(exp.cfg, workdir)
    state = experiment.init_state(exp, experiment.state_shardings(exp)[1])
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    checkpointer.save(1, state)
    checkpointer.close()
    return workdir


@pytest.fixture(scope="module")
def gpt_run(corpus_dir, tmp_path_factory):
    cfg = tiny_config(**SMALL)
    cfg.data.data_dir = corpus_dir
    return _workdir(cfg, str(tmp_path_factory.mktemp("gpt_run")))


@pytest.fixture(scope="module")
def t5_run(corpus_dir, tmp_path_factory):
    cfg = tiny_t5_config(
        **SMALL, **{"data.task": "span_corruption", "data.inputs_len": 32, "data.targets_len": 12}
    )
    cfg.data.data_dir = corpus_dir
    return _workdir(cfg, str(tmp_path_factory.mktemp("t5_run")))


def test_read_prompts_from_flags_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("first line\n\n second \n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"prompt": "a"}\n{"inputs": "b", "id": 3}\n')
    assert read_prompts(["x"], str(text)) == ["x", "first line", "second"]
    assert read_prompts([], str(jsonl)) == ["a", "b"]
    jsonl.write_text('{"question": "a"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: no prompt text"):
        read_prompts([], str(jsonl))
    with pytest.raises(ValueError, match="No prompts"):
        read_prompts([], None)


@pytest.mark.parametrize("family", ["gpt", "t5"])
def test_generate_text_matches_generate_on_the_encoded_prompts(family, request):
    workdir = request.getfixturevalue(f"{family}_run")
    run = restore.restore_run(load_config("saved_run", workdir), workdir)
    config = decoding.DecodeConfig(max_new_tokens=6)
    results = generate_text(run, PROMPTS, config, batch_size=2)  # Two batches, one padded.
    assert [r["prompt"] for r in results] == PROMPTS
    vocab = run.exp.vocab
    for prompt, result in zip(PROMPTS, results, strict=True):
        if family == "gpt":
            prompts = decoding.left_pad([[BOS_ID, *vocab.encode_with_sentinels(prompt)]])
        else:
            ids = np.asarray([[*vocab.encode_with_sentinels(prompt), vocab.eos_id]], np.int32)
            prompts = {"encoder_inputs": ids, "encoder_segment_ids": np.ones_like(ids)}
        out = decoding.generate(run.exp.model, run.params, prompts, config, eos_id=vocab.eos_id)
        tokens = out.tokens[0, : out.lengths[0]].tolist()
        assert result["tokens"] == tokens
        assert result["output"] == vocab.decode(tokens)
        assert result["score"] == pytest.approx(float(out.scores[0]), rel=1e-4, abs=1e-4)


def _infer(workdir, *args):
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "infer.py"), f"--workdir={workdir}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        check=False,
    )


def test_infer_script_writes_jsonl_and_sampling_is_reproducible(t5_run, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The list <extra_id_0> type."}\n')
    outputs = []
    for name in ("a", "b"):
        output = tmp_path / f"{name}.jsonl"
        proc = _infer(
            t5_run,
            f"--prompts_file={prompts}",
            "--prompt=Return the value.",
            "--strategy=sample",
            "--top_k=10",
            "--seed=5",
            "--max_new_tokens=5",
            f"--output={output}",
            "--config.mesh.data=2",  # Both fake devices, batch rows split over them.
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Wrote 2 results" in proc.stdout
        outputs.append([json.loads(line) for line in output.read_text().splitlines()])
    assert outputs[0] == outputs[1]
    # --prompt flags first, then the file.
    assert [r["prompt"] for r in outputs[0]] == ["Return the value.", "The list <extra_id_0> type."]
    assert all(set(r) == {"prompt", "output", "score", "tokens"} for r in outputs[0])
    assert all(1 <= len(r["tokens"]) <= 5 for r in outputs[0])


def test_infer_script_errors_are_clear(t5_run, tmp_path):
    proc = _infer(t5_run, "--strategy=sample", "--top_p=0")
    assert proc.returncode != 0 and "top_p=0" in proc.stderr
    proc = _infer(t5_run)
    assert proc.returncode != 0 and "No prompts" in proc.stderr
    proc = _infer(str(tmp_path / "missing"), "--prompt=x")
    assert proc.returncode != 0 and "does not exist" in proc.stderr


# -- The script's prompt sources and limits, each run once (concurrently) on the fixtures.

LONG_PROMPT = " ".join(["The list type holds values in order."] * 12)  # Far over 32 tokens.


@pytest.fixture(scope="module")
def script_runs(gpt_run, t5_run, tmp_path_factory):
    """case -> (the finished infer.py process, its JSONL output path)."""
    out = tmp_path_factory.mktemp("infer_out")
    cases = {
        # Two prompts on stdin, greedy at temperature 0.
        "stdin": (
            gpt_run,
            ["--prompts_file=-", "--temperature=0", "--max_new_tokens=4"],
            b"The list type\n\nReturn the value\n",
        ),
        "interactive": (
            gpt_run,
            ["--interactive", "--max_new_tokens=4"],
            b"The list type\nReturn the value\n\xff bad line\nA module\n",
        ),
        "too_long": (t5_run, [f"--prompt={LONG_PROMPT}", "--max_new_tokens=4"], b""),
        "truncated_beam": (
            t5_run,
            [
                f"--prompt={LONG_PROMPT}",
                "--prompt=Return the value.",
                "--truncate_prompts=right",
                "--strategy=beam",
                "--num_beams=2",
                "--max_new_tokens=4",
            ],
            b"",
        ),
    }
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = {}
    try:
        for name, (workdir, args, stdin) in cases.items():
            command = [sys.executable, str(REPO / "experiments" / "infer.py")]
            command += [f"--workdir={workdir}", f"--output={out / name}.jsonl", *args]
            procs[name] = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            procs[name].stdin.write(stdin)  # A few bytes: the pipe holds them all.
            procs[name].stdin.close()
            procs[name].stdin = None
        results = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=600)
            results[name] = (
                subprocess.CompletedProcess(
                    proc.args, proc.returncode, stdout.decode(), stderr.decode()
                ),
                out / f"{name}.jsonl",
            )
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _strict_jsonl(path) -> list[dict]:
    """The records of a JSONL file, refusing NaN and Infinity (not JSON)."""

    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def _reference(workdir, prompts, **decode):
    """generate_text in this process: what the script must have written."""
    run = restore.restore_run(load_config("saved_run", workdir), workdir, devices=jax.devices()[:1])
    return generate_text(run, prompts, decoding.DecodeConfig(**decode))


def test_prompts_from_stdin(script_runs, gpt_run):
    proc, output = script_runs["stdin"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _strict_jsonl(output)
    assert [r["prompt"] for r in records] == ["The list type", "Return the value"]
    expected = _reference(gpt_run, ["The list type", "Return the value"], max_new_tokens=4)
    assert [r["tokens"] for r in records] == [r["tokens"] for r in expected]


def test_temperature_zero_with_greedy_is_accepted(script_runs):
    proc, output = script_runs["stdin"]  # Ran with --temperature=0 and the greedy default.
    assert proc.returncode == 0 and "temperature" not in proc.stderr, proc.stderr[-3000:]
    assert "Wrote 2 results" in proc.stdout
    with pytest.raises(ValueError, match=r"temperature=0.0 must be a finite number > 0 for"):
        decoding.DecodeConfig(strategy="sample", temperature=0.0)


def test_interactive_mode_prints_each_completion_until_eof(script_runs, gpt_run):
    proc, output = script_runs["interactive"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    prompts = ["The list type", "Return the value", "A module"]
    expected = _reference(gpt_run, prompts, max_new_tokens=4)
    # One completion per line, in order; the undecodable line is reported and skipped.
    assert proc.stdout.splitlines() == [r["output"] for r in expected]
    assert "Error: <stdin>:3: not UTF-8 text (byte 0xff at column 1)" in proc.stderr
    assert [r["tokens"] for r in _strict_jsonl(output)] == [r["tokens"] for r in expected]


def test_prompt_longer_than_the_context_is_an_error(script_runs):
    proc, _ = script_runs["too_long"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.search(
        r"Prompt 1 has \d+ tokens, more than the 32 tokens the model takes \(data.inputs_len\)"
        r": shorten it, or pass --truncate_prompts=left .* or --truncate_prompts=right",
        errors[0],
    ), errors[0]


def test_prompt_longer_than_the_context_truncated_with_a_warning(script_runs, t5_run):
    proc, output = script_runs["truncated_beam"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(
        r"Prompt 1 has \d+ tokens, more than the 32 tokens the model takes "
        r"\(data.inputs_len\): kept its first 31 tokens \(--truncate_prompts=right\)",
        proc.stderr,
    ), proc.stderr[-3000:]
    records = _strict_jsonl(output)  # Beam scores: finite numbers or null, never NaN.
    assert [r["prompt"] for r in records] == [LONG_PROMPT, "Return the value."]
    run = restore.restore_run(load_config("saved_run", t5_run), t5_run, devices=jax.devices()[:1])
    vocab = run.exp.vocab
    kept = vocab.decode(vocab.encode_with_sentinels(LONG_PROMPT)[:31])
    expected = generate_text(
        run,
        [kept, "Return the value."],
        decoding.DecodeConfig(strategy="beam", num_beams=2, max_new_tokens=4),
    )
    assert [r["tokens"] for r in records] == [r["tokens"] for r in expected]


def test_beam_length_penalty_nan_is_rejected():
    with pytest.raises(ValueError, match=r"length_penalty=nan must be a finite number >= 0"):
        decoding.DecodeConfig(strategy="beam", length_penalty=float("nan"))
