"""Bad inputs to the converter (`vilamp-convert` and `vilamp convert`): outputs that would lose data, missing paths,
no tokenizer, refused pickles, damaged weights, weights that do not fit, interrupts. Each is one line on stderr with
the documented exit status (usage 2, failed work 1, 128 + the signal when interrupted)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vilamp.cli.main import convert_command as convert_main
from vilamp.cli.main import main as vilamp_main
from vilamp.conversion.atomic_output import PAUSE_AT_VARIABLE
from vilamp.conversion.convert_original_to_hf import ConversionError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ("vilamp-convert", "vilamp convert")
# the reference checkpoint converts in a few seconds; a subprocess is given far longer, so that only a hang fails
SUBPROCESS_TIMEOUT_SECONDS = 300


def convert(entry_point: str, input_dir: Path, output_dir: Path, *flags) -> int:
    """Runs one of the two command lines of the converter in this process and returns its exit status."""
    flags = [str(flag) for flag in flags]
    if entry_point == "vilamp-convert":
        return convert_main(["--input", str(input_dir), "--output", str(output_dir), *flags])
    return vilamp_main(["convert", str(input_dir), str(output_dir), *flags])


def error_line(capsys) -> str:
    """The one line the command printed on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones included) with its content."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def hidden_siblings(output_dir: Path) -> list[str]:
    """The converter's temporary directories beside `output_dir` (`.NAME.xxxx`, `.NAME.replaced.xxxx`)."""
    return [path.name for path in output_dir.parent.iterdir() if path.name.startswith(f".{output_dir.name}.")]


@pytest.fixture
def unreadable_checkpoint(checkpoint_copy) -> Path:
    """The checkpoint copy with weights that cannot be read: an error about anything else proves they were not read."""
    (checkpoint_copy / "model.safetensors").write_bytes(b"not safetensors")
    return checkpoint_copy


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("relation", ["is", "holds", "lies inside"])
def test_output_overlapping_the_input_is_refused_whatever_overwrite_says(
    entry_point, relation, unreadable_checkpoint, tokenizer_dir, capsys
):
    """An output that is the input, holds it or lies inside it is refused with --overwrite, before any weight is read."""
    output_dir = {
        "is": unreadable_checkpoint,
        "holds": unreadable_checkpoint.parent,
        "lies inside": unreadable_checkpoint / "hf",
    }
    before = snapshot(unreadable_checkpoint.parent)
    status = convert(
        entry_point, unreadable_checkpoint, output_dir[relation], "--tokenizer", tokenizer_dir, "--overwrite"
    )
    assert status == 2
    error = error_line(capsys)
    assert f"{output_dir[relation]} {relation} the input directory {unreadable_checkpoint}" in error
    assert "choose an output directory outside the input" in error
    assert snapshot(unreadable_checkpoint.parent) == before


def test_output_linked_to_the_input_is_refused(unreadable_checkpoint, tokenizer_dir, tmp_path, capsys):
    """An output path that is a symbolic link to the input is the input, and is refused with --overwrite."""
    link = tmp_path / "link"
    link.symlink_to(unreadable_checkpoint, target_is_directory=True)
    before = snapshot(unreadable_checkpoint)
    assert convert("vilamp-convert", unreadable_checkpoint, link, "--tokenizer", tokenizer_dir, "--overwrite") == 2
    assert "is the input directory" in error_line(capsys)
    assert snapshot(unreadable_checkpoint) == before


@pytest.mark.parametrize("flags", [[], ["--overwrite"]], ids=["plain", "overwrite"])
def test_directory_of_the_user_is_never_replaced(flags, unreadable_checkpoint, tokenizer_dir, tmp_path, capsys):
    """An existing output that no conversion wrote (a folder of the user's) is refused and kept, with or without --overwrite."""
    output_dir = tmp_path / "mine"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    (output_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert convert("vilamp-convert", unreadable_checkpoint, output_dir, "--tokenizer", tokenizer_dir, *flags) == 2
    error = error_line(capsys)
    assert f"The output directory {output_dir} exists and holds no earlier conversion" in error
    assert "choose another output directory or remove it yourself" in error
    assert snapshot(output_dir) == {"notes.txt": b"mine", "config.json": b'{"model_type": "llama"}'}


def test_overwrite_keeps_an_earlier_conversion_holding_other_files(
    converted_dir, unreadable_checkpoint, tokenizer_dir, tmp_path, capsys
):
    """An earlier conversion that also holds files a conversion never writes (results, a subfolder) is refused with --overwrite."""
    output_dir = tmp_path / "vilamp-tiny"
    shutil.copytree(converted_dir, output_dir)
    (output_dir / "results.txt").write_text("accuracy 0.61")
    (output_dir / "adapter").mkdir()
    before = snapshot(output_dir)
    assert (
        convert("vilamp-convert", unreadable_checkpoint, output_dir, "--tokenizer", tokenizer_dir, "--overwrite") == 2
    )
    error = error_line(capsys)
    assert "files a conversion never writes (adapter, results.txt)" in error and "move those files out" in error
    assert snapshot(output_dir) == before


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_existing_conversion_without_overwrite_is_refused_before_reading(
    entry_point, converted_dir, unreadable_checkpoint, tokenizer_dir, tmp_path, capsys
):
    """An existing output without --overwrite is refused before the (here unreadable) weights are read, exit 2."""
    output_dir = tmp_path / "vilamp-tiny"
    shutil.copytree(converted_dir, output_dir)
    before = snapshot(output_dir)
    assert convert(entry_point, unreadable_checkpoint, output_dir, "--tokenizer", tokenizer_dir) == 2
    assert "holds an earlier conversion; pass --overwrite to replace it" in error_line(capsys)
    assert snapshot(output_dir) == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tokenizer", "{missing}"], "`--tokenizer` {missing} does not exist"),
        (["--tokenizer", "{file}"], "`--tokenizer` {file} is not a directory"),
        (["--vision-tower-config", "{missing}"], "`--vision-tower-config` {missing} does not exist"),
        (["--clip-config", "{missing}"], "`--clip-config` {missing} does not exist"),
        (["--verify-reference", "{missing}"], "`--verify-reference` {missing} does not exist"),
        (["--max-shard-size", "5 apples"], "`--max-shard-size` '5 apples' is not a size"),
        (["--max-shard-size", "0GB"], "`--max-shard-size` '0GB' is not a size"),
    ],
    ids=[
        "tokenizer-missing",
        "tokenizer-file",
        "tower-missing",
        "clip-missing",
        "reference-missing",
        "size-words",
        "size-zero",
    ],
)
def test_argument_problems_exit_2_before_reading(flags, message, unreadable_checkpoint, tmp_path, capsys):
    """A missing --tokenizer, tower config or reference directory, or a --max-shard-size that is no size, exits 2 before the weights are read."""
    names = {"missing": tmp_path / "nothing", "file": unreadable_checkpoint / "config.json"}
    flags = [flag.format(**names) for flag in flags]
    assert convert("vilamp-convert", unreadable_checkpoint, tmp_path / "out", *flags) == 2
    assert message.format(**names) in error_line(capsys)
    assert not (tmp_path / "out").exists() and not hidden_siblings(tmp_path / "out")


@pytest.mark.parametrize("name", ["nothing", "file.txt"])
def test_input_that_is_not_a_directory_exits_2(name, tmp_path, capsys):
    """An input path that does not exist or is a file exits 2."""
    (tmp_path / "file.txt").write_text("not a checkpoint")
    assert convert("vilamp-convert", tmp_path / name, tmp_path / "out") == 2
    assert f"The input directory {tmp_path / name}" in error_line(capsys)


def test_output_inside_a_file_exits_2(unreadable_checkpoint, tokenizer_dir, tmp_path, capsys):
    """An output whose parent is a file cannot be written and exits 2 before the weights are read."""
    (tmp_path / "file.txt").write_text("a file")
    assert (
        convert("vilamp-convert", unreadable_checkpoint, tmp_path / "file.txt" / "out", "--tokenizer", tokenizer_dir)
        == 2
    )
    assert "is not a writable directory" in error_line(capsys)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_checkpoint_without_tokenizer_says_to_pass_one_first(entry_point, unreadable_checkpoint, tmp_path, capsys):
    """A checkpoint with no tokenizer fails before its weights are read, the fix (--tokenizer) first, no sentencepiece advice."""
    assert convert(entry_point, unreadable_checkpoint, tmp_path / "out") == 1
    error = error_line(capsys)
    assert error.startswith(f"{entry_point}: error: Pass --tokenizer with the Qwen2 tokenizer directory: ")
    assert f"{unreadable_checkpoint} holds no tokenizer" in error and "sentencepiece" not in error


class RunsCode:
    """Pickled as a call of `open(path, "w")`: unpickling it would create the file."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.mark.parametrize(
    "make_object", [lambda marker: RunsCode(marker), lambda marker: Namespace(lr=1e-5)], ids=["code", "namespace"]
)
def test_pickle_that_weights_only_refuses_is_refused_safely(
    make_object, checkpoint_copy, tokenizer_dir, tmp_path, capsys
):
    """A `.bin` pickling objects other than tensors is refused, never unpickled, and the message never advises `weights_only=False`."""
    marker = tmp_path / "code-ran"
    state_dict = load_file(checkpoint_copy / "model.safetensors")
    (checkpoint_copy / "model.safetensors").unlink()
    torch.save({**state_dict, "extra": make_object(marker)}, checkpoint_copy / "pytorch_model.bin")
    assert convert("vilamp-convert", checkpoint_copy, tmp_path / "out", "--tokenizer", tokenizer_dir) == 1
    error = error_line(capsys)
    assert f"{checkpoint_copy / 'pytorch_model.bin'} is a pickle holding objects other than tensors" in error
    assert "only with torch's `weights_only=True`" in error and "convert the checkpoint to safetensors" in error
    assert "weights_only=False" not in error
    assert not marker.exists()


def test_damaged_safetensors_checkpoint_exits_1(checkpoint_copy, tokenizer_dir, tmp_path, capsys):
    """A truncated `model.safetensors` in the checkpoint exits 1, naming the file as damaged."""
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    assert convert("vilamp-convert", checkpoint_copy, tmp_path / "out", "--tokenizer", tokenizer_dir) == 1
    assert f"Cannot read {weights}" in error_line(capsys)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_failed_conversion_check_exits_1(entry_point, checkpoint_copy, tokenizer_dir, tmp_path, capsys):
    """Weights that do not fit the model (a projector bias of the wrong size) fail the conversion check: exit 1, nothing written."""
    state_dict = load_file(checkpoint_copy / "model.safetensors")
    state_dict["model.mm_projector.2.bias"] = torch.zeros(63)
    save_file(state_dict, checkpoint_copy / "model.safetensors")
    assert convert(entry_point, checkpoint_copy, tmp_path / "out", "--tokenizer", tokenizer_dir) == 1
    assert "The converted checkpoint does not fit the model: shape mismatches" in error_line(capsys)
    assert not (tmp_path / "out").exists() and not hidden_siblings(tmp_path / "out")


def test_previous_output_left_by_a_killed_replacement_is_pointed_at(
    converted_dir, checkpoint_copy, tokenizer_dir, capsys
):
    """After a conversion killed (SIGKILL) between its two renames, the next run refuses and says where the previous output is kept."""
    output_dir = checkpoint_copy.parent / "vilamp-tiny"
    kept = checkpoint_copy.parent / ".vilamp-tiny.replaced.x1y2z3" / "vilamp-tiny"
    shutil.copytree(converted_dir, kept)
    assert convert("vilamp-convert", checkpoint_copy, output_dir, "--tokenizer", tokenizer_dir, "--overwrite") == 2
    error = error_line(capsys)
    assert f"its previous content is in {kept}: move it back to {output_dir}" in error
    assert snapshot(kept) == snapshot(converted_dir)


def test_traceback_only_when_asked(unreadable_checkpoint, tmp_path, monkeypatch):
    """With VILAMP_TRACEBACK=1 a failed conversion raises its error (with its traceback) instead of printing one line."""
    monkeypatch.setenv("VILAMP_TRACEBACK", "1")
    with pytest.raises(ConversionError, match="Pass --tokenizer"):
        convert_main(["--input", str(unreadable_checkpoint), "--output", str(tmp_path / "out")])


def test_help_gives_the_exit_statuses(capsys):
    """`--help` of both entry points states the exit statuses the code returns (a failed conversion check is 1)."""
    for run in (lambda: convert_main(["--help"]), lambda: vilamp_main(["--help"])):
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 0
        help_text = " ".join(capsys.readouterr().out.split())
        assert "2 for a usage error" in help_text and "1 when the work" in help_text
        assert "a failed conversion check" in help_text and "130" in help_text


def start_conversion(entry_point: str, input_dir: Path, output_dir: Path, *flags, pause_at: str) -> subprocess.Popen:
    """
    Starts `python -m vilamp.conversion.convert_original_to_hf` (what `vilamp-convert` runs) or `python -m vilamp.cli
    convert`, told by the testing hook to pause at the step `pause_at` until it is signalled.
    """
    if entry_point == "vilamp-convert":
        command = [
            "-m",
            "vilamp.conversion.convert_original_to_hf",
            "--input",
            input_dir,
            "--output",
            output_dir,
            *flags,
        ]
    else:
        command = ["-m", "vilamp.cli", "convert", input_dir, output_dir, *flags]
    return subprocess.Popen(
        [sys.executable, *map(str, command)],
        cwd=REPO_ROOT,
        env={**os.environ, PAUSE_AT_VARIABLE: pause_at},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def signal_when_paused(process: subprocess.Popen, step: str, signum: int) -> tuple[int, str]:
    """
    Reads the converter's stderr up to the line saying that it paused at `step` (it then waits, writing nothing, so no
    timing decides what it has done), sends `signum`, and returns the exit status and the whole of stderr.
    """
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith(f"{PAUSE_AT_VARIABLE}: paused at {step}: "):
            process.send_signal(signum)
            break
    _, rest = process.communicate(timeout=SUBPROCESS_TIMEOUT_SECONDS)
    stderr = "".join(lines) + rest
    assert f"paused at {step}: " in stderr, f"the converter never paused at {step}: {stderr}"
    return process.returncode, stderr


def lay_earlier_output(converted_dir: Path, output_dir: Path):
    """Copies an earlier conversion to `output_dir`, marked (a second newline ending config.json) so that a new
    conversion in its place would not compare equal."""
    shutil.copytree(converted_dir, output_dir)
    (output_dir / "config.json").write_text((converted_dir / "config.json").read_text() + "\n")


@pytest.mark.parametrize(
    ("entry_point", "signum", "earlier_output", "step"),
    [
        ("vilamp-convert", signal.SIGTERM, False, "writing"),
        ("vilamp-convert", signal.SIGINT, True, "writing"),
        ("vilamp convert", signal.SIGTERM, True, "writing"),
        ("vilamp-convert", signal.SIGINT, True, "renaming"),
    ],
    ids=[
        "vilamp-convert-sigterm-new-output",
        "vilamp-convert-sigint-overwrite",
        "vilamp-convert-subcommand-sigterm-overwrite",
        "vilamp-convert-sigint-overwrite-before-renaming",
    ],
)
def test_interrupt_while_writing_leaves_the_output_as_it_was(
    entry_point, signum, earlier_output, step, converted_dir, checkpoint_copy, tokenizer_dir
):
    """
    SIGINT or SIGTERM while the converter writes (the model written, the processor not yet) or once all is written but
    not yet renamed removes its temporary folder and leaves the output as it was: one line, exit 128 + signal.
    """
    output_dir = checkpoint_copy.parent / "vilamp-tiny"
    flags = ["--tokenizer", tokenizer_dir, "--max-shard-size", "100KB", *(["--overwrite"] if earlier_output else [])]
    if earlier_output:
        lay_earlier_output(converted_dir, output_dir)
    before = snapshot(output_dir) if earlier_output else None
    process = start_conversion(entry_point, checkpoint_copy, output_dir, *flags, pause_at=step)
    returncode, stderr = signal_when_paused(process, step, signum)
    assert returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1] == f"{entry_point}: interrupted"
    assert "Traceback" not in stderr
    assert not hidden_siblings(output_dir)
    if earlier_output:
        assert snapshot(output_dir) == before
    else:
        assert not output_dir.exists()


@pytest.mark.parametrize(
    ("entry_point", "signum", "earlier_output"),
    [("vilamp-convert", signal.SIGINT, True), ("vilamp convert", signal.SIGTERM, False)],
    ids=["vilamp-convert-sigint-overwrite", "vilamp-convert-subcommand-sigterm-new-output"],
)
def test_interrupt_after_the_last_write_exits_with_the_signal_and_keeps_the_new_output(
    entry_point, signum, earlier_output, converted_dir, checkpoint_copy, tokenizer_dir
):
    """
    SIGINT or SIGTERM once the new output is renamed into place (nothing left to write) still exits 128 + signal, in
    one line saying that the conversion completed: the output is the whole new conversion, no temporary folder left.
    """
    output_dir = checkpoint_copy.parent / "vilamp-tiny"
    flags = ["--tokenizer", tokenizer_dir, *(["--overwrite"] if earlier_output else [])]
    if earlier_output:
        lay_earlier_output(converted_dir, output_dir)
    process = start_conversion(entry_point, checkpoint_copy, output_dir, *flags, pause_at="renamed")
    returncode, stderr = signal_when_paused(process, "renamed", signum)
    assert returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"{entry_point}: interrupted after the conversion completed: {output_dir} holds it"
    )
    assert "Traceback" not in stderr
    assert not hidden_siblings(output_dir)
    assert snapshot(output_dir) == snapshot(converted_dir)


def test_pause_at_an_unknown_step_is_refused(unreadable_checkpoint, tokenizer_dir, monkeypatch, capsys):
    """A `VILAMP_CONVERT_PAUSE_AT` (the testing hook) naming no step exits 2 listing the steps, before any read."""
    monkeypatch.setenv(PAUSE_AT_VARIABLE, "saving")
    output_dir = unreadable_checkpoint.parent / "vilamp-tiny"
    assert convert("vilamp-convert", unreadable_checkpoint, output_dir, "--tokenizer", tokenizer_dir) == 2
    assert (
        "`VILAMP_CONVERT_PAUSE_AT` is 'saving', which is no step of the converter; set it to one of writing, "
        "renaming, renamed, or unset it." in error_line(capsys)
    )
    assert not output_dir.exists() and not hidden_siblings(output_dir)
