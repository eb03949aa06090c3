"""The converter's output without loss: the overwrite policy, the directory written as a hidden sibling and renamed
into place, and SIGINT/SIGTERM handling.

`check_output_dir` refuses, before anything is read, an output that is the input, holds it or lies inside it, one that
an earlier conversion left half-replaced, and an existing one unless `--overwrite` is passed and an earlier conversion
wrote it (`config.json` of `model_type` "vilamp", `processor_config.json`, and no file a conversion never writes).
`atomic_directory` yields a temporary sibling to write into and renames it into place once complete; a failure, SIGINT
or SIGTERM removes it and leaves the output as it was. From the rename on, the conversion is complete: a signal that
arrives during the rename or after it (the last write) still raises `Interrupted`, whose `completed_output` names the
output, which holds the whole new conversion; the command line exits 128 + the signal for it and says so.

Testing hook: with `VILAMP_CONVERT_PAUSE_AT=STEP` (one of `PAUSE_STEPS`) the converter stops at that step, prints one
line on stderr and waits for SIGINT or SIGTERM, so that a test signals it exactly there instead of racing it.
"""

import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from vilamp.modeling_vilamp import ViLaMPConfig

PROCESSOR_CONFIG_NAME = "processor_config.json"
# The model's and the processor's code, copied next to the weights for `trust_remote_code`.
MODEL_CODE_FILES = ("configuration_vilamp.py", "modeling_vilamp.py", "feature_merger.py", "frame_parallel.py")
PROCESSOR_CODE_FILES = (
    "processing_vilamp.py",
    "chat_template_extras.py",
    "video_processing_vilamp.py",
    "keyframe_selection.py",
    "video_decoding.py",
    "nvdec_decoding.py",
    "video_cache.py",
)
# The files a conversion writes: the tokenizer's as any transformers 5 version saves them, `model-00001-of-00002`
# shards aside. `--overwrite` replaces only a directory holding nothing else, so it never deletes a file of the user's.
TOKENIZER_FILE_NAMES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.json",
)  # fmt: skip
CONVERTED_FILE_NAMES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        PROCESSOR_CONFIG_NAME,
        "chat_template.jinja",
        "keyframe_selector.safetensors",
        "keyframe_selector_config.json",
        *MODEL_CODE_FILES,
        *PROCESSOR_CODE_FILES,
        *TOKENIZER_FILE_NAMES,
    }
)
SHARD_FILE_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PAUSE_AT_VARIABLE = "VILAMP_CONVERT_PAUSE_AT"
# The steps `VILAMP_CONVERT_PAUSE_AT` may name, in the order the converter reaches them, with the state at each.
PAUSE_STEPS = {
    "writing": "the model's weights are in the temporary directory, the processor's files not yet",
    "renaming": "every file is written and the output checked again, the temporary directory not yet renamed",
    "renamed": "the new output is in place and nothing is left to write, the converter not yet returned",
}


class ConversionError(ValueError):
    """The conversion cannot run as asked; the message names what is wrong and what to do."""


class ConversionUsageError(ConversionError):
    """
    An argument is wrong (a path that does not exist, an output the converter will not write, a size it cannot parse),
    found before anything is read; the command line exits with 2 for it and with 1 for any other `ConversionError`.
    """


class Interrupted(KeyboardInterrupt):
    """
    SIGINT or SIGTERM during the conversion, raised like Ctrl-C's `KeyboardInterrupt` so that cleanup runs;
    `completed_output` is the output directory when the signal came once the new conversion was in place, else None.
    """

    def __init__(self, signum: int, completed_output: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.completed_output = completed_output


def check_apart_from_input(output_dir: Path, input_dir: Path):
    """Raises when the output is the input, holds it or lies inside it (symbolic links resolved): writing it could
    replace the checkpoint being read."""
    output, original = output_dir.resolve(), input_dir.resolve()
    if output == original:
        relation = "is"
    elif output in original.parents:
        relation = "holds"
    elif original in output.parents:
        relation = "lies inside"
    else:
        return
    raise ConversionUsageError(
        f"The output directory {output_dir} {relation} the input directory {input_dir}; the converter never writes "
        "over its input, whatever --overwrite says: choose an output directory outside the input."
    )


def interrupted_replacement(output_dir: Path) -> Path | None:
    """The previous output that a conversion stopped (by SIGKILL or a power loss) in the middle of replacing it left
    in its hidden `.NAME.replaced.xxxx` sibling, if `output_dir` is missing and one is there."""
    parent = output_dir.parent
    if output_dir.exists() or not parent.is_dir():
        return None
    prefix = f".{output_dir.name}.replaced."
    kept = [entry / output_dir.name for entry in parent.iterdir() if entry.name.startswith(prefix)]
    return next((path for path in sorted(kept) if path.exists()), None)


def is_earlier_conversion(directory: Path) -> bool:
    """Whether `directory` has the files every conversion writes: a `config.json` of `model_type` "vilamp" and a
    `processor_config.json`."""
    config_file = directory / "config.json"
    if not (config_file.is_file() and (directory / PROCESSOR_CONFIG_NAME).is_file()):
        return False
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("model_type") == ViLaMPConfig.model_type


def written_by_conversion(path: Path) -> bool:
    """Whether `path` is a plain file of a name that a conversion writes (`CONVERTED_FILE_NAMES`, model shards)."""
    name_is_known = path.name in CONVERTED_FILE_NAMES or SHARD_FILE_PATTERN.fullmatch(path.name) is not None
    return name_is_known and path.is_file() and not path.is_symlink()


def check_replaceable(output_dir: Path, overwrite: bool):
    """
    Raises unless writing `output_dir` loses nothing: it is missing or empty, or, with `overwrite`, it holds an earlier
    conversion and no file a conversion never writes.
    """
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ConversionUsageError(
            f"The output directory {output_dir} is a file; choose another output directory or remove it yourself."
        )
    entries = sorted(output_dir.iterdir())
    if not entries:
        return
    if not is_earlier_conversion(output_dir):
        raise ConversionUsageError(
            f"The output directory {output_dir} exists and holds no earlier conversion (a config.json of `model_type` "
            '"vilamp" and a processor_config.json), and --overwrite replaces only that: choose another output '
            "directory or remove it yourself."
        )
    foreign = [entry.name for entry in entries if not written_by_conversion(entry)]
    if foreign:
        listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConversionUsageError(
            f"The output directory {output_dir} holds an earlier conversion and files a conversion never writes "
            f"({listed}), which --overwrite would delete: move those files out, or choose another output directory."
        )
    if not overwrite:
        raise ConversionUsageError(
            f"The output directory {output_dir} holds an earlier conversion; pass --overwrite to replace it, or choose "
            "another output directory."
        )


def check_output_dir(output_dir: Path, input_dir: Path, overwrite: bool):
    """Raises, before anything is read, unless the conversion can write `output_dir` without losing anything (and
    unless the testing hook names no step)."""
    requested_pause_step()
    check_apart_from_input(output_dir, input_dir)
    kept = interrupted_replacement(output_dir)
    if kept is not None:
        raise ConversionUsageError(
            f"An earlier conversion was stopped while replacing {output_dir}; its previous content is in {kept}: move "
            f"it back to {output_dir} or remove {kept.parent}, then run again."
        )
    check_replaceable(output_dir, overwrite)
    ancestor = next(path for path in output_dir.parents if path.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConversionUsageError(
            f"The output directory {output_dir} cannot be written: {ancestor} is not a writable directory; choose "
            "another output directory."
        )


class InterruptHandler:
    """
    While its `with` block runs (in the main thread), turns SIGINT and SIGTERM into `Interrupted`; inside `deferred()`
    a signal waits until that block ends, so a rename pair or a cleanup is never cut in half. A signal set to be ignored
    stays ignored, and the previous handlers come back at the end. Once `completed_output` is set (the new output is in
    place), every `Interrupted` it raises carries it, and so do those of an enclosing `InterruptHandler` afterwards.
    """

    def __init__(self):
        self.previous_handlers = {}
        self.deferring = False
        self.pending_signum = None
        self.completed_output = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in INTERRUPT_SIGNALS:
                if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                    self.previous_handlers[signum] = signal.signal(signum, self.interrupt)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous_handlers.items():
            enclosing = getattr(handler, "__self__", None)
            # the enclosing handler comes back: a signal after the rename must still say that the output is complete
            if isinstance(enclosing, InterruptHandler) and self.completed_output is not None:
                enclosing.completed_output = self.completed_output
            signal.signal(signum, handler)

    def interrupt(self, signum: int, frame):
        """The signal handler: raises `Interrupted`, or inside `deferred()` keeps the signal for the end of the block."""
        if self.deferring:
            self.pending_signum = signum
        else:
            raise Interrupted(signum, self.completed_output)

    @contextmanager
    def deferred(self):
        """Holds SIGINT and SIGTERM back while the block runs, then raises `Interrupted` if one came."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending_signum is not None:
            signum, self.pending_signum = self.pending_signum, None
            raise Interrupted(signum, self.completed_output)


def requested_pause_step() -> str | None:
    """The step that `VILAMP_CONVERT_PAUSE_AT` names, or None when it is unset; raises when it names no step."""
    requested = os.environ.get(PAUSE_AT_VARIABLE) or None
    if requested is not None and requested not in PAUSE_STEPS:
        raise ConversionUsageError(
            f"`{PAUSE_AT_VARIABLE}` is {requested!r}, which is no step of the converter; set it to one of "
            f"{', '.join(PAUSE_STEPS)}, or unset it."
        )
    return requested


def pause_for_testing(step: str):
    """
    The testing hook: when `VILAMP_CONVERT_PAUSE_AT` names `step`, prints `VILAMP_CONVERT_PAUSE_AT: paused at STEP`
    and the state there on stderr, and waits until a signal handler raises (the converter's handlers raise
    `Interrupted` for SIGINT and SIGTERM). Called only where signals are not deferred, so a signal sent before the wait
    begins ends it as well.
    """
    if requested_pause_step() != step:
        return
    print(f"{PAUSE_AT_VARIABLE}: paused at {step}: {PAUSE_STEPS[step]}", file=sys.stderr, flush=True)
    # short sleeps rather than `signal.pause()`: a signal the kernel hands to another thread wakes no pause, but its
    # handler still runs in the main thread at the next wake-up
    while True:
        time.sleep(0.05)


def make_temporary_sibling(output_dir: Path) -> Path:
    """Creates the hidden `.NAME.xxxx` directory beside `output_dir` to write into, with a new directory's permissions."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    # mkdtemp makes the directory private; the output gets the permissions of any new directory
    os.chmod(temporary_dir, 0o777 & ~current_umask())
    return temporary_dir


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def give_new_file_permissions(directory: Path):
    """Gives everything written under `directory` the permissions a new file or directory gets under the umask."""
    umask = current_umask()
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def move_into_place(temporary_dir: Path, output_dir: Path):
    """
    Renames the finished `temporary_dir` to `output_dir`. An existing output is first moved into a hidden
    `.NAME.replaced.xxxx` sibling and removed once the new one is in place; run with signals deferred, so only a SIGKILL
    or a power loss between the two renames leaves no output, and then the previous one is intact in that sibling
    (`check_output_dir` points at it on the next run).
    """
    if not output_dir.exists():
        os.replace(temporary_dir, output_dir)
        return
    replaced_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.replaced.", dir=output_dir.parent))
    os.replace(output_dir, replaced_dir / output_dir.name)
    try:
        os.replace(temporary_dir, output_dir)
    except OSError:
        os.replace(replaced_dir / output_dir.name, output_dir)
        replaced_dir.rmdir()
        raise
    shutil.rmtree(replaced_dir)


@contextmanager
def atomic_directory(output_dir: Path, overwrite: bool):
    """
    Yields a hidden temporary sibling of `output_dir` to write into and renames it into place once the block succeeds.
    A failure, SIGINT or SIGTERM removes it and leaves `output_dir` as it was; `output_dir` is checked again right
    before it is replaced (`check_replaceable`), in case files appeared in it meanwhile. A signal that arrives during
    the rename or after it raises `Interrupted` with `completed_output` set: the output is then the new conversion.
    """
    temporary_dir = None
    with InterruptHandler() as interrupts:
        try:
            with interrupts.deferred():
                temporary_dir = make_temporary_sibling(output_dir)
            yield temporary_dir
            give_new_file_permissions(temporary_dir)
            check_replaceable(output_dir, overwrite)
            pause_for_testing("renaming")
            with interrupts.deferred():
                move_into_place(temporary_dir, output_dir)
                interrupts.completed_output = output_dir
            pause_for_testing("renamed")
        finally:
            with interrupts.deferred():
                if temporary_dir is not None and temporary_dir.exists():
                    shutil.rmtree(temporary_dir)


__all__ = [
    "CONVERTED_FILE_NAMES",
    "ConversionError",
    "ConversionUsageError",
    "InterruptHandler",
    "Interrupted",
    "PAUSE_AT_VARIABLE",
    "PAUSE_STEPS",
    "atomic_directory",
    "check_output_dir",
    "pause_for_testing",
]
