"""VideoNIAH: a needle clip inserted at chosen depths into haystack videos of chosen lengths, asked about, scored.

For every needle, haystack video, haystack length L (sampled frames, at the processor's 1 fps) and relative depth d,
the needle's frames are inserted into the first L frames of the haystack before frame round(d * L), the model is asked
the needle's question, and the answer is scored. The accuracy per (length, depth) over needles and haystacks is printed
as a markdown table and drawn as a heatmap; every trial is written to `results.jsonl`.

    PYTHONPATH=. python bench/videoniah.py --model vilamp-7b --needles needles.jsonl \\
        --haystacks long1.mp4 long2.mp4 --lengths 600,2000,10000 --depths 0,0.25,0.5,0.75,1 --out-dir niah
    PYTHONPATH=. python bench/videoniah.py --tiny --out-dir niah-tiny   # tiny random model, synthetic frames

Needles (`--needles`, JSONL, one object per line; relative paths are relative to the JSONL file):

    {"needle": "clips/red_umbrella.mp4", "question": "What colour is the umbrella?", "answer": "red"}
    {"needle": "clips/sign.png", "question": "What does the sign say?", "answer": "B", "options": ["stop", "exit", "open"]}

- `needle`: a video clip (decoded at the processor's fps, so a 3-second clip adds 3 frames) or an image (one frame).
- `question`: asked about the whole video; it is also what the keyframe selection ranks frames against.
- `answer`: without `options`, the reference text: an answer is correct when, lowercased with punctuation and extra
  spaces removed, it equals the reference (`exact`) or contains it (`contains`, the score reported). With `options`,
  the letter of the right option ("B") or its text ("exit"); the options are listed under the question as "A. stop",
  ..., the model is asked for the letter, and the answer is correct when its letter (or, failing a letter, the one
  option text it contains) is the right one.

Haystacks (`--haystacks`) are video files, decoded once at the processor's fps up to the longest length; a haystack
shorter than a length is repeated to fill it. Frames are composed in memory (no re-encoding), and the CLIP embedding of
each haystack and needle frame is computed once, so a trial costs the keyframe selection on cached embeddings and the
model. At 10K frames a trial holds about 6 GB of uint8 frames in host memory. Videos go through the processor's stages
(`load_video`, `select_keyframes` on the cached embeddings, `build_inputs`), as `processor(...)` runs them.
"""

import argparse
import json
import re
import string
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vilamp.runner import ViLaMPRunner

TINY_LENGTHS = (8, 32)
TINY_DEPTHS = (0.0, 0.5, 1.0)
TINY_NEEDLES = (
    {"question": "What colour is the square?", "answer": "red"},
    {"question": "What colour is the square?", "answer": "A", "options": ["red", "green", "blue", "yellow"]},
)
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class Needle:
    """A needle: its processed frames and CLIP embeddings, and the question to ask."""

    name: str
    siglip_frames: torch.Tensor  # (num_needle_frames, 3, size, size) uint8
    frame_embeds: torch.Tensor  # (num_needle_frames, embed_dim)
    question: str
    answer: str
    options: list[str] | None = None

    @property
    def prompt(self) -> str:
        """The question as asked: with the options listed and the letter instruction when there are options."""
        if not self.options:
            return self.question
        lines = [f"{string.ascii_uppercase[index]}. {option}" for index, option in enumerate(self.options)]
        return "\n".join([self.question, *lines, CHOICE_INSTRUCTION])


@dataclass
class Haystack:
    """A haystack: its processed frames and CLIP embeddings."""

    name: str
    siglip_frames: torch.Tensor  # (num_frames, 3, size, size) uint8
    frame_embeds: torch.Tensor  # (num_frames, embed_dim)


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, spaces collapsed."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def choice_letter(response: str, options: list[str]) -> str | None:
    """The option letter an answer gives: a leading letter ("B", "(B)", "B. exit"), else the one option it names."""
    letters = string.ascii_uppercase[: len(options)]
    match = re.match(r"\s*\(?([A-Za-z])(?:[\s.):,]|$)", response)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    named = [
        letters[index] for index, option in enumerate(options) if normalize_text(option) in normalize_text(response)
    ]
    return named[0] if len(named) == 1 else None


def score_answer(response: str, answer: str, options: list[str] | None = None) -> dict:
    """
    Scores one answer.

    Returns:
        `dict` with `correct` (`bool`, the reported score), and `exact` (`bool`) for open answers or `predicted`
        (the letter read from the answer, or None) for multiple choice.
    """
    if options:
        letters = string.ascii_uppercase[: len(options)]
        expected = answer.strip().upper()
        if expected not in letters:
            normalized = [normalize_text(option) for option in options]
            if normalize_text(answer) not in normalized:
                raise ValueError(
                    f"The answer {answer!r} is neither an option letter ({letters}) nor one of {options}."
                )
            expected = letters[normalized.index(normalize_text(answer))]
        predicted = choice_letter(response, options)
        return {"correct": predicted == expected, "predicted": predicted}
    response, answer = normalize_text(response), normalize_text(answer)
    return {"correct": bool(answer) and answer in response, "exact": response == answer}


def read_needle_specs(path: Path) -> list[dict]:
    """Reads and checks the needles JSONL, naming the line of any problem; relative clip paths become absolute."""
    specs = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            spec = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number} is not JSON ({error}).") from error
        missing = [key for key in ("needle", "question", "answer") if not isinstance(spec.get(key), str)]
        if missing:
            raise ValueError(
                f"{path}:{line_number} needs string fields {missing}; see `needle`, `question`, `answer`."
            )
        if "options" in spec and not (isinstance(spec["options"], list) and len(spec["options"]) >= 2):
            raise ValueError(f"{path}:{line_number}: `options` must be a list of at least two strings.")
        clip = Path(spec["needle"])
        spec["needle"] = clip if clip.is_absolute() else path.parent / clip
        if not spec["needle"].is_file():
            raise ValueError(f"{path}:{line_number}: no needle clip at {spec['needle']}.")
        specs.append(spec)
    if not specs:
        raise ValueError(f"{path} holds no needle.")
    return specs


def load_frames(processor, source, *, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The processor's `load_video` on a needle or haystack (a video file, an image taken as a one-frame video, or frames)
    at the processor's fps, and the CLIP embedding of every frame.

    Returns:
        `tuple(torch.ByteTensor, torch.FloatTensor)`: the SigLIP frames `(num_frames, 3, size, size)` and the CLIP
        image embeddings `(num_frames, embed_dim)` on the CPU.
    """
    from PIL import Image

    if isinstance(source, Path) and source.suffix.lower() in IMAGE_SUFFIXES:
        source = [Image.open(source).convert("RGB")]
    loaded_video = processor.load_video(source, max_frames=max_frames)
    return loaded_video.siglip_frames, processor.keyframe_selector.encode_frames(loaded_video.clip_frames).cpu()


def load_needle(processor, name: str, source, spec: dict) -> Needle:
    siglip_frames, frame_embeds = load_frames(processor, source, max_frames=processor.video_processor.max_frames)
    return Needle(
        name=name,
        siglip_frames=siglip_frames,
        frame_embeds=frame_embeds,
        question=spec["question"],
        answer=spec["answer"],
        options=spec.get("options"),
    )


def load_haystack(processor, name: str, source, max_frames: int) -> Haystack:
    siglip_frames, frame_embeds = load_frames(processor, source, max_frames=max_frames)
    return Haystack(name=name, siglip_frames=siglip_frames, frame_embeds=frame_embeds)


def needle_position(length: int, depth: float) -> int:
    """The haystack frame the needle is inserted before: depth 0 is the start, 1 the end."""
    return int(round(depth * length))


def run_trial(
    runner: ViLaMPRunner, haystack: Haystack, needle: Needle, length: int, depth: float, max_new_tokens: int
) -> dict:
    """Inserts the needle into the first `length` haystack frames at `depth`, asks its question and scores the answer."""
    processor = runner.processor
    haystack_indices = torch.arange(length) % len(haystack.siglip_frames)
    position = needle_position(length, depth)
    before, after = haystack_indices[:position], haystack_indices[position:]
    siglip_frames = torch.cat([haystack.siglip_frames[before], needle.siglip_frames, haystack.siglip_frames[after]])
    frame_embeds = torch.cat([haystack.frame_embeds[before], needle.frame_embeds, haystack.frame_embeds[after]])
    keyframes = processor.select_keyframes(query=needle.prompt, frame_embeds=frame_embeds)
    inputs = processor.build_inputs(processor.question_prompt(needle.prompt), [siglip_frames], [keyframes])
    start = time.perf_counter()
    (response,) = runner.generate(inputs, max_new_tokens)
    needle_frames = slice(position, position + len(needle.siglip_frames))
    return {
        "haystack": haystack.name,
        "needle": needle.name,
        "length": length,
        "depth": depth,
        "num_frames": len(siglip_frames),
        "needle_frame_indices": [needle_frames.start, needle_frames.stop - 1],
        "needle_keyframes": int(keyframes.keyframe_mask[needle_frames].sum()),
        "response": response,
        "answer": needle.answer,
        **score_answer(response, needle.answer, needle.options),
        "seconds": round(time.perf_counter() - start, 3),
    }


def accuracy_grid(results: list[dict], lengths: list[int], depths: list[float]) -> np.ndarray:
    """Mean `correct` per (length, depth): `(len(lengths), len(depths))`, NaN where no trial ran."""
    grid = np.full((len(lengths), len(depths)), np.nan)
    for row, length in enumerate(lengths):
        for column, depth in enumerate(depths):
            scores = [
                result["correct"] for result in results if result["length"] == length and result["depth"] == depth
            ]
            if scores:
                grid[row, column] = float(np.mean(scores))
    return grid


def markdown_table(grid: np.ndarray, lengths: list[int], depths: list[float]) -> str:
    """Accuracy per haystack length (rows) and depth (columns), with the mean of each row."""
    header = "| haystack frames | " + " | ".join(f"depth {depth:.0%}" for depth in depths) + " | mean |"
    lines = [header, "| --- " * (len(depths) + 2) + "|"]
    for row, length in enumerate(lengths):
        cells = [f"{value:.2f}" if not np.isnan(value) else "n/a" for value in grid[row]]
        lines.append(f"| {length} | " + " | ".join(cells) + f" | {np.nanmean(grid[row]):.2f} |")
    return "\n".join(lines)


def draw_heatmap(path: Path, grid: np.ndarray, lengths: list[int], depths: list[float], title: str) -> Path:
    """Draws the accuracy grid (haystack length x needle depth) as an annotated heatmap PNG of 800x500 pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    image = axis.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    axis.set_xticks(range(len(depths)), [f"{depth:.0%}" for depth in depths])
    axis.set_yticks(range(len(lengths)), [str(length) for length in lengths])
    axis.set_xlabel("needle depth")
    axis.set_ylabel("haystack frames")
    axis.set_title(title, fontsize=10)
    for row in range(len(lengths)):
        for column in range(len(depths)):
            value = grid[row, column]
            axis.text(column, row, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=9)
    figure.colorbar(image, ax=axis, label="accuracy")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, format="png")
    temporary.replace(path)
    return path


def parse_list(text: str, kind, name: str) -> list:
    """`"600,2000"` -> `[600, 2000]`; an argparse type naming the flag."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{name} is empty")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a converted ViLaMP directory (not with --tiny)")
    parser.add_argument("--needles", type=Path, help="the needles JSONL (see above)")
    parser.add_argument("--haystacks", type=Path, nargs="+", help="haystack video files")
    parser.add_argument("--lengths", type=lambda text: parse_list(text, int, "--lengths"), default=[600, 2000, 10000])
    parser.add_argument(
        "--depths", type=lambda text: parse_list(text, float, "--depths"), default=[0, 0.25, 0.5, 0.75, 1]
    )
    parser.add_argument("--keyframes", type=int, help="keyframes per video K (default: the processor's)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--out-dir", type=Path, default=Path("videoniah"), help="heatmap.png, results.jsonl, table.md")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, synthetic haystack and needle frames")
    args = parser.parse_args(argv)
    if args.tiny:
        if args.model or args.needles or args.haystacks:
            parser.error(
                "--tiny builds its own model, needles and haystack; leave out --model, --needles, --haystacks"
            )
        args.lengths = args.lengths if "--lengths" in (argv or sys.argv) else list(TINY_LENGTHS)
        args.depths = args.depths if "--depths" in (argv or sys.argv) else list(TINY_DEPTHS)
        args.max_new_tokens = min(args.max_new_tokens, 4)
    elif not (args.model and args.needles and args.haystacks):
        parser.error("pass --model, --needles and --haystacks (or --tiny)")
    for depth in args.depths:
        if not 0 <= depth <= 1:
            parser.error(f"--depths are fractions of the haystack in [0, 1], got {depth}")
    if min(args.lengths) < 1:
        parser.error(f"--lengths must be positive frame counts, got {args.lengths}")
    return args


def tiny_inputs(processor, max_length: int) -> tuple[list[Needle], list[Haystack]]:
    """Synthetic needles (frames with a red square) and one synthetic haystack (no square)."""
    from vilamp.testing import synthetic_frames

    haystack_frames = synthetic_frames(max_length, with_square=False, seed=1)
    needle_frames = synthetic_frames(3, seed=2)  # every frame of a 3-frame video is in the "middle third"
    needle_frames[:] = synthetic_frames(6, seed=2)[2:5]
    needles = [load_needle(processor, f"tiny-{index}", needle_frames, spec) for index, spec in enumerate(TINY_NEEDLES)]
    return needles, [load_haystack(processor, "tiny-haystack", haystack_frames, max_length)]


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    max_length = max(args.lengths)
    with tempfile.TemporaryDirectory() as temporary_dir:
        model_dir = args.model
        if args.tiny:
            from vilamp.testing import build_tiny_model, build_tiny_processor

            model_dir = Path(temporary_dir)
            build_tiny_model().save_pretrained(model_dir)
            build_tiny_processor().save_pretrained(model_dir)
        runner = ViLaMPRunner.from_pretrained(
            model_dir, device=args.device, dtype=args.dtype, max_frames=max_length, num_keyframes=args.keyframes
        )
        processor = runner.processor
        if args.tiny:
            needles, haystacks = tiny_inputs(processor, max_length)
        else:
            specs = read_needle_specs(args.needles)
            needles = [load_needle(processor, Path(spec["needle"]).name, spec["needle"], spec) for spec in specs]
            haystacks = [load_haystack(processor, path.name, path, max_length) for path in args.haystacks]
    results = []
    with open(args.out_dir / "results.jsonl", "w", encoding="utf-8") as results_file:
        for haystack in haystacks:
            for needle in needles:
                for length in args.lengths:
                    for depth in args.depths:
                        result = run_trial(runner, haystack, needle, length, depth, args.max_new_tokens)
                        results.append(result)
                        results_file.write(json.dumps(result, ensure_ascii=False) + "\n")
                        print(
                            f"{haystack.name} {needle.name} frames={length} depth={depth:.2f}: "
                            f"{'correct' if result['correct'] else 'wrong'} ({result['response']!r})",
                            file=sys.stderr,
                        )
    grid = accuracy_grid(results, args.lengths, args.depths)
    table = markdown_table(grid, args.lengths, args.depths)
    title = f"VideoNIAH accuracy: {len(needles)} needles x {len(haystacks)} haystacks, K={processor.video_processor.num_keyframes}"
    if args.tiny:
        title += " (tiny random model: accuracy is meaningless)"
    (args.out_dir / "table.md").write_text(table + "\n", encoding="utf-8")
    heatmap = draw_heatmap(args.out_dir / "heatmap.png", grid, args.lengths, args.depths, title)
    print(f"{title}\n")
    print(table)
    print(f"\nheatmap: {heatmap}\nper trial: {args.out_dir / 'results.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
