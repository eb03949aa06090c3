"""The `vilamp` command line: convert a checkpoint, ask about a video, chat about it, draw the keyframe timeline, run
the demo.

    vilamp demo
    vilamp convert ViLAMP-llava-qwen vilamp-7b
    vilamp ask vilamp-7b talk.mp4 "What is the speaker holding?" "Where is the speaker?"
    vilamp chat vilamp-7b talk.mp4
    vilamp keyframes vilamp-7b talk.mp4 "What is the speaker holding?" --out timeline.png

Exit status: 0 on success; 2 for a usage error (an unknown flag, a value of the wrong kind, a path that does not exist,
a `--device` this machine does not have, an `--out` that is not a .png, an OUTPUT_DIR that `convert` will not write); 1
when the work itself fails (an empty, unreadable or non-video file, a directory that is not a converted checkpoint or
does not load, a checkpoint that does not convert, a failed conversion check or `--verify-reference`); 130 when
interrupted (Ctrl-C), 143 on SIGTERM during `convert`. Every error is one line naming the problem and the fix, with no
usage block and no traceback (`VILAMP_TRACEBACK=1` shows it). The commands load models, read videos and draw only once
the arguments are known to be good.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vilamp import __version__
from vilamp.runner import KEEP_FEATURES

DEFAULT_MAX_NEW_TOKENS = 128
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
CACHE_IMPLEMENTATION_CHOICES = ("dynamic", "static")
DEMO_QUESTION = "What colour is the square in the middle of the video?"
DEMO_VIDEO_SECONDS = 24
DEMO_VIDEO_FPS = 8
RANDOM_WEIGHTS_NOTE = (
    "The answer above comes from a tiny model with RANDOM weights: it is noise, not an answer. It proves that decoding, "
    "keyframe selection, encoding and generation work end to end on this machine. For real answers, download the "
    "released checkpoint (the README says where), convert it with `vilamp convert ORIGINAL_DIR OUTPUT_DIR` and ask with "
    "`vilamp ask OUTPUT_DIR VIDEO QUESTION`."
)


class CommandLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line (`prog: error: message; see `prog --help``, exit 2), and
    whose subcommands refuse an argument they do not know under their own name rather than the top-level `vilamp`."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class CommandError(Exception):
    """The command cannot do its work; the message names the problem and what to do."""


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value:g}")
    return value


def existing_file(text: str) -> Path:
    """An argparse type: the path of an existing file."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file; pass the path of a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a regular file; pass the path of a file")
    return path


def existing_dir(text: str) -> Path:
    """An argparse type: the path of an existing directory."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such directory: {text!r}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory; pass the path of a directory")
    return path


def device_name(text: str) -> str:
    """An argparse type: `auto`, or a torch device that this machine has (`cpu`, `cuda`, `cuda:N`)."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        num_gpus = torch.cuda.device_count()
        if num_gpus == 0:
            raise argparse.ArgumentTypeError(f"{text!r} asks for a GPU, but torch sees none; pass auto or cpu")
        if device.index is not None and device.index >= num_gpus:
            raise argparse.ArgumentTypeError(
                f"{text!r} asks for GPU {device.index}, but torch sees {num_gpus}; pass cuda:0 to cuda:{num_gpus - 1}"
            )
    return text


def png_file(text: str) -> Path:
    """An argparse type: the path of a PNG picture to write."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text!r} must name a .png file (the timeline is a PNG), e.g. timeline.png")
    return path


def add_model_arguments(parser: argparse.ArgumentParser):
    """MODEL_DIR, VIDEO and the sampling flags shared by `ask`, `chat` and `keyframes`."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=existing_dir, help="a converted ViLaMP directory")
    parser.add_argument("video", metavar="VIDEO", type=existing_file, help="the video file")
    parser.add_argument(
        "--max-frames",
        type=positive_int,
        help="at most this many frames, sampled at 1 fps (default: the processor's, 600)",
    )
    parser.add_argument("--keyframes", type=positive_int, help="keyframes per video K (default: the processor's, 32)")
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="where the models run: auto (default: the GPU when torch sees one), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def add_generation_arguments(parser: argparse.ArgumentParser):
    """The flags of the model's side shared by `ask` and `chat`."""
    parser.add_argument("--max-new-tokens", type=positive_int, default=DEFAULT_MAX_NEW_TOKENS, help="default 128")
    parser.add_argument(
        "--dtype", choices=DTYPE_CHOICES, default="auto", help="auto: bfloat16 on a GPU, float32 on the CPU"
    )
    parser.add_argument(
        "--cache-implementation", choices=CACHE_IMPLEMENTATION_CHOICES, default="dynamic",
        help="generate's KV cache (default dynamic); static compiles the decoding step on a GPU: faster per token after "
        "a one-time warm-up, reported as `decode_warm_up`",
    )  # fmt: skip
    parser.add_argument(
        "--keep-features", choices=KEEP_FEATURES, default="auto",
        help="where the video's projected patches (SigLIP and the projector, per frame) are kept for its questions: "
        "device (the model's), cpu, none (each question encodes the frames again), or auto (default: the device if they "
        "take at most half its free memory, else the host under the same rule, else none)",
    )  # fmt: skip
    parser.add_argument(
        "--video-cache", type=Path, metavar="DIR",
        help="read the video through an on-disk cache of loaded videos in DIR: a later run on the same file and "
        "settings skips decoding",
    )  # fmt: skip
    parser.add_argument(
        "--video-cache-max-gib", type=positive_number, default=20.0, metavar="GIB",
        help="the video cache's size cap; the least recently used videos go first (default 20)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from vilamp.conversion.convert_original_to_hf import build_parser as build_conversion_parser

    parser = CommandLineParser(
        prog="vilamp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vilamp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert the original checkpoint (llava_qwen) into a directory AutoModel and AutoProcessor load",
        description="Converts the original ViLaMP checkpoint, checks every tensor and writes the output atomically "
        "(conversion/convert_original_to_hf.py; `vilamp-convert --input ... --output ...` is the same command). "
        "OUTPUT_DIR is never the input, inside it or holding it; --overwrite replaces only a directory that an earlier "
        "conversion wrote (config.json of model_type vilamp, processor_config.json, and no file a conversion never "
        "writes). Ctrl-C or SIGTERM before the new OUTPUT_DIR is renamed into place leaves it as it was. Exit "
        "status: 2 for a usage error (a path that does not exist, an OUTPUT_DIR it will not write), 1 when the "
        "conversion, its check or --verify-reference fails, 130 on Ctrl-C, 143 on SIGTERM.",
    )
    build_conversion_parser(convert, directory_type=existing_dir)
    convert.set_defaults(handler=run_convert)

    ask = commands.add_parser(
        "ask", help="answer questions about a video, printing each answer as it is generated",
        description="Answers each QUESTION about VIDEO with the model in MODEL_DIR, in order, streaming the answers to "
        "stdout (each after its question, when there are several) and progress bars (decoding, keyframe selection, "
        "encoding) to stderr. The video is decoded, embedded for the keyframe selection and encoded once for all the "
        "questions; each question then runs its keyframe selection, the DFM, the prefill and its answer, and gets the "
        "answer it would get asked alone.",
    )  # fmt: skip
    add_model_arguments(ask)
    ask.add_argument("questions", metavar="QUESTION", nargs="+", help="a question about the video; give one or more")
    add_generation_arguments(ask)
    ask.add_argument(
        "--json", action="store_true",
        help="print one JSON object instead of the text: the video's frame count, decoders and one-time costs, and a "
        "list of answers, each with its keyframe timestamps, token count and timings",
    )  # fmt: skip
    ask.set_defaults(handler=run_ask)

    chat = commands.add_parser(
        "chat", help="answer questions about a video read from stdin, one a line, keeping the conversation",
        description="Loads VIDEO once, then reads questions from stdin, one a line, and streams each answer to stdout "
        "(a `> ` prompt on stderr when stdin is a terminal). Each question selects its own keyframes; the earlier "
        "questions and answers stay in the prompt as the chat template allows, the oldest dropped (with a warning) "
        "when the prompt would exceed the model's positions. An empty line is ignored; `/exit` or the end of input "
        "(Ctrl-D) ends the chat.",
    )  # fmt: skip
    add_model_arguments(chat)
    add_generation_arguments(chat)
    chat.set_defaults(handler=run_chat)

    keyframes = commands.add_parser(
        "keyframes", help="draw the relevance curve, the chosen keyframes and their thumbnails",
        description="Runs the keyframe selection of VIDEO against QUESTION and draws why those keyframes were chosen: "
        "the CLIP relevance of every sampled frame over time, the keyframes marked on it, and their thumbnails. Only "
        "the processor and its CLIP keyframe selector run, not the language model.",
    )  # fmt: skip
    add_model_arguments(keyframes)
    keyframes.add_argument("question", metavar="QUESTION", help="the question the frames are ranked against")
    keyframes.add_argument(
        "--out", type=png_file, default=Path("timeline.png"), help="the PNG to write (default timeline.png)"
    )
    keyframes.add_argument(
        "--dpi", type=positive_int, default=100, help="the PNG is 12x6 inches at this dpi (default 100)"
    )
    keyframes.add_argument("--json", action="store_true", help="print the keyframe timestamps and scores as JSON")
    keyframes.set_defaults(handler=run_keyframes)

    demo = commands.add_parser(
        "demo", help="build a tiny random model, convert it, and run ask and keyframes on a synthetic video",
        description="Works with no checkpoint and no download: writes a tiny random ViLaMP in the original layout, "
        "converts it with the converter, writes a short synthetic video and runs `ask` and `keyframes` on it. The "
        "answer is from random weights; the run proves the install works end to end. Without --out-dir it works in a "
        "temporary directory and removes it at the end.",
    )  # fmt: skip
    demo.add_argument(
        "--out-dir",
        type=Path,
        help="where to write and keep the checkpoint, video and picture (default: a temporary directory, removed at the "
        "end)",
    )
    demo.add_argument("--device", type=device_name, default="auto", help="auto (default), cpu, cuda, ...")
    demo.add_argument("--max-new-tokens", type=positive_int, default=16, help="default 16")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    demo.set_defaults(handler=run_demo)
    return parser


def quiet_transformers():
    """Silences transformers' own progress bars and advice, so the output holds only this command's."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def check_model_dir(model_dir: Path):
    """Fails early, with what to do, when MODEL_DIR is not a converted ViLaMP directory."""
    missing = [name for name in ("config.json", "processor_config.json") if not (model_dir / name).is_file()]
    if missing:
        raise CommandError(
            f"MODEL_DIR `{model_dir}` is not a converted ViLaMP directory (no {' or '.join(missing)}); convert the "
            "original checkpoint first with `vilamp convert ORIGINAL_DIR OUTPUT_DIR`."
        )


@contextmanager
def model_dir_errors(model_dir: Path):
    """Turns what loading a damaged MODEL_DIR raises (a damaged weight file, invalid JSON, a config field of the wrong
    type) into a `CommandError` naming the directory and the fix."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, StrictDataclassError, OSError, ValueError, TypeError) as error:
        damaged = damaged_safetensors_files(model_dir) if isinstance(error, SafetensorError) else []
        # `from_pretrained` names the damaged file and the fix itself; here safetensors' own reason is enough
        reason = f"{', '.join(damaged)} damaged ({error.__cause__ or error})" if damaged else str(error).rstrip(".")
        raise CommandError(
            f"MODEL_DIR `{model_dir}` does not load: {reason}; repair it, or convert the original checkpoint again "
            f"(`vilamp convert ORIGINAL_DIR {model_dir} --overwrite`)."
        ) from error


def damaged_safetensors_files(model_dir: Path) -> list[str]:
    """The names of the safetensors files in `model_dir` whose header or size is wrong."""
    from safetensors import SafetensorError, safe_open

    damaged = []
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError):
            damaged.append(path.name)
    return damaged


def run_convert(args) -> int:
    from vilamp.conversion.convert_original_to_hf import run_command

    return run_command(args, prog="vilamp convert")


def load_runner(model_dir: Path, video: Path, args):
    """Checks MODEL_DIR and VIDEO, then loads the model and its processor with the command's settings."""
    from vilamp.processing import VideoCache
    from vilamp.runner import ViLaMPRunner

    from .pipeline import probe_video

    check_model_dir(model_dir)
    probe_video(video)
    video_cache = None
    if args.video_cache is not None:
        video_cache = VideoCache(args.video_cache, max_bytes=int(args.video_cache_max_gib * 2**30))
    with model_dir_errors(model_dir):
        return ViLaMPRunner.from_pretrained(
            model_dir,
            device=args.device,
            dtype=args.dtype,
            cache_implementation=args.cache_implementation,
            video_cache=video_cache,
            max_frames=args.max_frames,
            num_keyframes=args.keyframes,
        )


def rounded(timings: dict[str, float]) -> dict[str, float]:
    """Timings to a tenth of a millisecond, for `--json`."""
    return {stage: round(seconds, 4) for stage, seconds in timings.items()}


def video_record(video: Path, encoded, runner, load_model_seconds: float) -> dict:
    """What `--json` says once about the loaded video: its frames, decoders and one-time costs, and the model's side."""
    metadata = encoded.video.metadata
    features = encoded.frame_features
    return {
        "video": str(video),
        "num_frames": encoded.num_frames,
        "duration_seconds": None if metadata.duration is None else round(float(metadata.duration), 3),
        "video_backend": metadata.video_backend,
        "frame_features_device": None if features is None else str(features.device),
        "timings_seconds": rounded({"load_model": load_model_seconds, **encoded.seconds}),
        "device": str(runner.device),
        "dtype": str(runner.model.dtype).removeprefix("torch."),
    }


def answer_record(answer) -> dict:
    """What `--json` says about one answer."""
    return {
        "question": answer.question,
        "answer": answer.text,
        "num_keyframes": len(answer.keyframe_timestamps_seconds),
        "keyframe_timestamps_seconds": [round(seconds, 3) for seconds in answer.keyframe_timestamps_seconds],
        "num_video_tokens": answer.num_video_tokens,
        "num_tokens": answer.num_tokens,
        "timings_seconds": rounded(answer.timings_seconds),
    }


def print_timings(prefix: str, timings: dict[str, float]):
    """One line on stderr: `[prefix; stage 0.12 s, ...]`."""
    print(
        f"[{prefix}; {', '.join(f'{stage} {seconds:.2f} s' for stage, seconds in timings.items())}]", file=sys.stderr
    )


def print_video_summary(record: dict):
    """One line on stderr of what loading the video took."""
    duration = "" if record["duration_seconds"] is None else f" of {record['duration_seconds']:g} s"
    print_timings(
        f"video: {record['num_frames']} frames{duration}, decoded by {record['video_backend']}",
        record["timings_seconds"],
    )


def print_answer_summary(record: dict, num_frames: int):
    """One line on stderr of an answer's keyframes and how long each of its stages took."""
    keyframe_times = ", ".join(f"{seconds:g}" for seconds in record["keyframe_timestamps_seconds"])
    print_timings(
        f"{num_frames} frames, {record['num_keyframes']} keyframes at {keyframe_times} s", record["timings_seconds"]
    )


def ask_video(model_dir: Path, video: Path, questions: list[str], args, *, write, summarize: bool) -> dict:
    """
    Loads the model and the video once and answers each question in order, streaming the answers to `write` (each
    after its question when there are several) and, with `summarize`, a line of timings per stage on stderr. Returns
    the record that `--json` prints.
    """
    from .pipeline import answer_question, load_video

    empty = [index for index, question in enumerate(questions, start=1) if not question.strip()]
    if empty:
        raise CommandError(
            f"QUESTION {empty[0]} of {len(questions)} is empty; the keyframe selection ranks frames against it. Pass "
            "a question."
        )
    start = time.perf_counter()
    runner = load_runner(model_dir, video, args)
    loaded_at = time.perf_counter()
    encoded = load_video(runner, video, keep_features=args.keep_features, show_progress=not args.no_progress)
    record = video_record(video, encoded, runner, load_model_seconds=loaded_at - start)
    if summarize:
        print_video_summary(record)
    answers = []
    for index, question in enumerate(questions):
        if write is not None and len(questions) > 1:
            write(("\n" if index else "") + f"> {question}\n")
        answer = answer_question(
            runner, encoded, question, max_new_tokens=args.max_new_tokens, write=write,
            show_progress=not args.no_progress,
        )  # fmt: skip
        answers.append(answer_record(answer))
        if summarize:
            print_answer_summary(answers[-1], encoded.num_frames)
    record["timings_seconds"]["total"] = round(time.perf_counter() - start, 4)
    return {**record, "answers": answers}


def write_stdout(text: str):
    """Writes to stdout at once, so each token of a streamed answer shows as it comes."""
    sys.stdout.write(text)
    sys.stdout.flush()


def run_ask(args) -> int:
    quiet_transformers()
    record = ask_video(
        args.model_dir, args.video, args.questions, args, write=None if args.json else write_stdout,
        summarize=not args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    return 0


def read_questions(stream) -> Iterator[str]:
    """The questions of a chat, one a line, until `/exit` or the end of `stream`; empty lines are skipped, and a `> `
    prompt goes to stderr before each line when `stream` is a terminal."""
    while True:
        if stream.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        question = line.strip()
        if not line or question == "/exit":
            return
        if question:
            yield question


def run_chat(args) -> int:
    from .pipeline import answer_question, load_video

    quiet_transformers()
    start = time.perf_counter()
    runner = load_runner(args.model_dir, args.video, args)
    loaded_at = time.perf_counter()
    encoded = load_video(runner, args.video, keep_features=args.keep_features, show_progress=not args.no_progress)
    print_video_summary(video_record(args.video, encoded, runner, load_model_seconds=loaded_at - start))
    exchanges: list[tuple[str, str]] = []
    for question in read_questions(sys.stdin):
        answer = answer_question(
            runner, encoded, question, max_new_tokens=args.max_new_tokens, exchanges=exchanges, write=write_stdout,
            show_progress=not args.no_progress,
        )  # fmt: skip
        if answer.num_dropped_exchanges:
            print(
                f"vilamp chat: warning: the conversation would exceed the model's "
                f"{runner.model.config.text_config.max_position_embeddings} positions, so its "
                f"{answer.num_dropped_exchanges} oldest question(s) and answer(s) are left out of this prompt and the "
                "later ones; the video moves to the first question kept.",
                file=sys.stderr,
            )
        exchanges = exchanges[answer.num_dropped_exchanges :] + [(question, answer.text)]
        print_answer_summary(answer_record(answer), encoded.num_frames)
    return 0


def draw_keyframes(model_dir: Path, video: Path, question: str, out: Path, args) -> dict:
    """Runs the keyframe selection of the video against the question, draws the timeline into `out` and returns the
    record that `--json` prints."""
    from vilamp.processing import resolve_device
    from vilamp.runner import load_processor

    from .pipeline import prepare_video, probe_video
    from .timeline import draw_keyframe_timeline

    check_model_dir(model_dir)
    probe_video(video)
    device = resolve_device(args.device)
    with model_dir_errors(model_dir):
        processor = load_processor(model_dir, device=device, max_frames=args.max_frames, num_keyframes=args.keyframes)
    prepared = prepare_video(processor, video, question, show_progress=not args.no_progress)
    keyframes = prepared.keyframes
    draw_keyframe_timeline(
        out,
        timestamps_seconds=prepared.timestamps_seconds,
        keyframes=keyframes,
        siglip_frames=prepared.inputs["pixel_values_videos"],
        question=question,
        relevance_threshold=processor.video_processor.keyframe_relevance_threshold,
        aspect_ratio=prepared.frame_aspect_ratio,
        dpi=args.dpi,
    )
    keyframe_indices = keyframes.keyframe_mask.nonzero().flatten().tolist()
    ranked_indices = keyframes.ranked_keyframe_mask.nonzero().flatten().tolist()
    return {
        "picture": str(out),
        "num_frames": len(prepared.timestamps_seconds),
        "keyframe_timestamps_seconds": [round(prepared.timestamps_seconds[index], 3) for index in keyframe_indices],
        "ranked_keyframe_timestamps_seconds": [
            round(prepared.timestamps_seconds[index], 3) for index in ranked_indices
        ],
        "keyframe_relevance_scores": [
            round(float(keyframes.relevance_scores[index]), 4) for index in keyframe_indices
        ],
        "timings_seconds": {stage: round(seconds, 4) for stage, seconds in prepared.timings_seconds.items()},
    }


def run_keyframes(args) -> int:
    quiet_transformers()
    record = draw_keyframes(args.model_dir, args.video, args.question, args.out, args)
    if args.json:
        print(json.dumps(record))
    else:
        keyframe_times = ", ".join(f"{seconds:g}" for seconds in record["keyframe_timestamps_seconds"])
        print(f"Keyframes at {keyframe_times} s of {record['num_frames']} frames; timeline written to {args.out}")
    return 0


def run_demo(args) -> int:
    quiet_transformers()
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        return demo_in(args.out_dir, args)
    with tempfile.TemporaryDirectory(prefix="vilamp-demo-", ignore_cleanup_errors=True) as work_dir:
        status = demo_in(Path(work_dir), args)
    print(f"Removed {work_dir}; pass --out-dir DIR to keep the checkpoint, the video and the picture.")
    return status


def demo_in(work_dir: Path, args) -> int:
    """Writes the tiny checkpoint and the video into `work_dir` and runs `ask` and `keyframes` on them."""
    from vilamp.testing import build_demo_checkpoint, synthetic_frames, write_video

    print(f"1/4 Writing a tiny random ViLaMP checkpoint in the original layout and converting it ({work_dir})")
    model_dir = build_demo_checkpoint(work_dir)
    video = write_video(
        work_dir / "demo.mp4", synthetic_frames(DEMO_VIDEO_SECONDS * DEMO_VIDEO_FPS), fps=DEMO_VIDEO_FPS
    )
    print(f"2/4 Wrote a {DEMO_VIDEO_SECONDS}-second synthetic video: {video}")
    print(f"3/4 vilamp ask {model_dir} {video} {json.dumps(DEMO_QUESTION)}")
    sampling = argparse.Namespace(
        max_frames=None, keyframes=None, device=args.device, dtype="auto", max_new_tokens=args.max_new_tokens,
        cache_implementation="dynamic", keep_features="auto", no_progress=args.no_progress, dpi=100, video_cache=None,
    )  # fmt: skip
    record = ask_video(model_dir, video, [DEMO_QUESTION], sampling, write=None, summarize=True)
    # random byte tokens rarely form UTF-8 characters: the replacement characters are dropped from the display
    (demo_answer,) = record["answers"]
    answer = demo_answer["answer"].replace("\ufffd", "").strip()
    if answer:
        print(f"Answer of the tiny random model (noise): {answer}")
    else:
        print("Answer of the tiny random model: no text (its random weights picked tokens that spell no characters)")
    picture = work_dir / "timeline.png"
    print(f"4/4 vilamp keyframes {model_dir} {video} {json.dumps(DEMO_QUESTION)} --out {picture}")
    draw_keyframes(model_dir, video, DEMO_QUESTION, picture, sampling)
    print(f"Keyframe timeline written to {picture}")
    print(RANDOM_WEIGHTS_NOTE)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def print_warning(message, category, filename, lineno, file=None, line=None):
        # a damaged video (`VideoDecodingWarning`) is worth one line, not a source location and a code line
        print(f"vilamp {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = print_warning
            return args.handler(args)
    except KeyboardInterrupt:
        print(f"vilamp {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError, ImportError) as error:
        if os.environ.get("VILAMP_TRACEBACK"):
            raise
        print(f"vilamp {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


def convert_command(argv: list[str] | None = None) -> int:
    """`vilamp-convert`: the converter's own command line, its usage errors one line as `vilamp`'s, with a Ctrl-C
    while torch and transformers are still importing reported in one line as well."""
    try:
        from vilamp.conversion.convert_original_to_hf import build_parser as build_conversion_parser
        from vilamp.conversion.convert_original_to_hf import run_command
    except KeyboardInterrupt:
        print("vilamp-convert: interrupted", file=sys.stderr)
        return 130
    args = build_conversion_parser(parser_class=CommandLineParser).parse_args(argv)
    return run_command(args, prog="vilamp-convert")


__all__ = ["build_parser", "convert_command", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
