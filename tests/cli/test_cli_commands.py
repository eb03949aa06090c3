"""Each `vilamp` subcommand in a subprocess on the demo's tiny random checkpoint: outputs, exit codes, messages."""

import json

import pytest
from PIL import Image

import vilamp
from vilamp.cli.main import convert_command

VIDEO_TIMING_STAGES = {"load_model", "decoding", "keyframe_embedding", "vision_encoding", "total"}
TIMING_STAGES = {
    "keyframe_selection", "encoding", "prefill", "decode_warm_up", "generation", "time_to_first_token", "total",
}  # fmt: skip


def test_ask_json_reports_answer_keyframe_times_and_timings(run_vilamp, model_dir, video_file):
    result = run_vilamp(
        "ask", model_dir, video_file, "What colour is the square?", "--json", "--max-frames", "10", "--keyframes", "3",
        "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    (answer,) = record["answers"]
    assert isinstance(answer["answer"], str) and answer["question"] == "What colour is the square?"
    assert record["num_frames"] == 10  # 12 frames at 1 fps, thinned to --max-frames
    assert (record["duration_seconds"], record["video_backend"]) == (12.0, "pyav")
    assert answer["num_keyframes"] == 3
    keyframe_times = answer["keyframe_timestamps_seconds"]
    assert len(keyframe_times) == 3 and all(isinstance(seconds, float) for seconds in keyframe_times)
    assert keyframe_times == sorted(keyframe_times) and 0 <= keyframe_times[0] and keyframe_times[-1] < 12
    assert answer["num_video_tokens"] == 196 * 3 + (10 - 3) + 1
    assert 1 <= answer["num_tokens"] <= 4  # --max-new-tokens, or fewer when the end token comes first
    assert set(record["timings_seconds"]) == VIDEO_TIMING_STAGES and set(answer["timings_seconds"]) == TIMING_STAGES
    timings = [*record["timings_seconds"].values(), *answer["timings_seconds"].values()]
    assert all(isinstance(seconds, float) and seconds >= 0 for seconds in timings)
    assert (record["device"], record["dtype"]) == ("cpu", "float32")


def test_ask_streams_the_same_answer_and_shows_progress(run_vilamp, model_dir, video_file):
    arguments = [
        "ask",
        model_dir,
        video_file,
        "What colour is the square?",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]
    streamed = run_vilamp(*arguments)
    assert streamed.returncode == 0, streamed.stderr
    as_json = json.loads(run_vilamp(*arguments, "--json", "--no-progress").stdout)
    assert streamed.stdout == as_json["answers"][0]["answer"] + "\n"  # greedy decoding is deterministic
    for stage in ("decoding", "keyframe selection", "encoding"):
        assert stage in streamed.stderr  # the progress bars
    assert "12 frames, 4 keyframes at" in streamed.stderr


def test_ask_with_a_static_cache_gives_the_default_greedy_answer(run_vilamp, model_dir, video_file):
    arguments = [
        "ask",
        model_dir,
        video_file,
        "What colour is the square?",
        "--max-new-tokens",
        "6",
        "--device",
        "cpu",
    ]
    arguments += ["--dtype", "float32", "--json", "--no-progress"]
    default = run_vilamp(*arguments)
    static = run_vilamp(*arguments, "--cache-implementation", "static")
    assert default.returncode == 0, default.stderr
    assert static.returncode == 0, static.stderr
    (static_answer,) = json.loads(static.stdout)["answers"]
    assert static_answer["answer"] == json.loads(default.stdout)["answers"][0]["answer"]
    assert set(static_answer["timings_seconds"]) == TIMING_STAGES


def test_keyframes_draws_a_png_of_the_expected_size(run_vilamp, model_dir, video_file, tmp_path):
    picture = tmp_path / "pictures" / "timeline.png"
    result = run_vilamp(
        "keyframes", model_dir, video_file, "What colour is the square?", "--out", picture, "--dpi", "50", "--json"
    )
    assert result.returncode == 0, result.stderr
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.size == (600, 300)  # 12x6 inches at 50 dpi
    record = json.loads(result.stdout)
    assert record["picture"] == str(picture) and record["num_frames"] == 12
    assert len(record["keyframe_timestamps_seconds"]) == len(record["keyframe_relevance_scores"]) == 4
    assert set(record["ranked_keyframe_timestamps_seconds"]) <= set(record["keyframe_timestamps_seconds"])
    assert not [path for path in picture.parent.iterdir() if path.name != "timeline.png"]  # no temporary left


def test_convert_writes_a_loadable_directory_and_refuses_to_overwrite(run_vilamp, demo_dir, tmp_path):
    output_dir = tmp_path / "converted"
    arguments = ["convert", demo_dir / "original_tiny", output_dir, "--tokenizer", demo_dir / "tiny-tokenizer"]
    result = run_vilamp(*arguments)
    assert result.returncode == 0, result.stderr
    assert f"into {output_dir}" in result.stdout
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "keyframe_selector.safetensors").is_file()

    again = run_vilamp(*arguments)
    assert again.returncode != 0 and "pass --overwrite" in again.stderr and "Traceback" not in again.stderr


def test_convert_verifies_against_the_golden_reference(run_vilamp, reference_dir, demo_dir, tmp_path):
    result = run_vilamp(
        "convert", reference_dir / "original_tiny", tmp_path / "vilamp-tiny", "--tokenizer", demo_dir / "tiny-tokenizer",
        "--verify-reference", reference_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| logits |" in result.stdout and "| NO |" not in result.stdout


def test_demo_runs_end_to_end_and_says_the_weights_are_random(run_vilamp, tmp_path):
    result = run_vilamp("demo", "--out-dir", tmp_path, "--no-progress", "--max-new-tokens", "4", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stdout and "Answer of the tiny random model" in result.stdout
    assert "<|reserved_" not in result.stdout and "\ufffd" not in result.stdout
    assert (tmp_path / "original_tiny" / "model.safetensors").is_file()
    assert (tmp_path / "vilamp-tiny" / "config.json").is_file()
    with Image.open(tmp_path / "timeline.png") as image:
        assert image.size == (1200, 600)


def test_demo_without_out_dir_removes_its_temporary_directory(run_vilamp, tmp_path):
    """`vilamp demo` without `--out-dir` works in a temporary directory and removes it, saying so."""
    temporary_root = tmp_path / "tmp"
    temporary_root.mkdir()
    result = run_vilamp(
        "demo", "--no-progress", "--max-new-tokens", "4", "--device", "cpu", env={"TMPDIR": str(temporary_root)}
    )
    assert result.returncode == 0, result.stderr
    assert f"Removed {temporary_root}" in result.stdout and "pass --out-dir DIR to keep" in result.stdout
    assert list(temporary_root.iterdir()) == []


def test_version_prints_the_package_version(run_vilamp):
    result = run_vilamp("--version")
    assert result.returncode == 0 and result.stdout == f"vilamp {vilamp.__version__}\n"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["ask", "{model}", "{missing}", "q"], "argument VIDEO: no such file: '{missing}'"),
        (["ask", "{missing}", "{video}", "q"], "argument MODEL_DIR: no such directory: '{missing}'"),
        (["ask", "{model}", "{video}", "q", "--max-frames", "many"], "argument --max-frames: expected a positive integer, got 'many'"),
        (["ask", "{model}", "{video}", "q", "--keyframes", "0"], "argument --keyframes: expected a positive integer, got 0"),
        (["ask", "{model}", "{video}", "q", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["keyframes", "{model}", "{video}", "q", "--dpi", "1.5"], "argument --dpi: expected a positive integer, got '1.5'"),
        (["convert", "{missing}", "{tmp}/out"], "argument ORIGINAL_DIR: no such directory: '{missing}'"),
        (["ask", "{model}", "{video}"], "the following arguments are required: QUESTION"),
        (["ask", "{model}", "{video}", "q", "--keep-features", "bogus"], "vilamp ask: error: argument --keep-features: invalid choice: 'bogus'"),
        (["chat", "{model}", "{video}", "--keep-features", "gpu"], "vilamp chat: error: argument --keep-features: invalid choice: 'gpu'"),
        (["chat", "{model}", "{video}", "q"], "vilamp chat: error: unrecognized arguments: q; see `vilamp chat --help`"),
        (["chat", "{model}"], "the following arguments are required: VIDEO"),
        ([], "the following arguments are required: COMMAND"),
        (["ask", "{model}", "{video}", "q", "--device", "gpu"], "vilamp ask: error: argument --device: 'gpu' is not a device; pass auto, cpu, cuda or cuda:N"),
        (["demo", "--device", "cuda:x"], "vilamp demo: error: argument --device: 'cuda:x' is not a device"),
        (["keyframes", "{model}", "{video}", "q", "--out", "{tmp}/t.jpg"], "vilamp keyframes: error: argument --out: '{tmp}/t.jpg' must name a .png file"),
        (["ask", "{model}", "{video}", "q", "--bogus"], "vilamp ask: error: unrecognized arguments: --bogus; see `vilamp ask --help`"),
        (["ask", "{model}", "{tmp}", "q"], "argument VIDEO: '{tmp}' is a directory, not a file"),
        (["ask", "{video}", "{video}", "q"], "argument MODEL_DIR: '{video}' is a file, not a directory"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_and_name_the_argument(run_vilamp, model_dir, video_file, tmp_path, arguments, message):
    """A usage error is one line (no usage block), naming the argument, the value and the fix, with exit 2."""
    names = {"model": model_dir, "video": video_file, "missing": tmp_path / "nothing.mp4", "tmp": tmp_path}
    result = run_vilamp(*[argument.format(**names) for argument in arguments])
    assert result.returncode == 2
    assert message.format(**names) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def test_device_without_a_gpu_is_a_usage_error(run_vilamp, model_dir, video_file):
    """`--device cuda` where torch sees no GPU (none made visible here) is a wrong value: exit 2, one line."""
    result = run_vilamp("ask", model_dir, video_file, "q", "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert result.stderr == (
        "vilamp ask: error: argument --device: 'cuda' asks for a GPU, but torch sees none; pass auto or cpu; see "
        "`vilamp ask --help`\n"
    )


def test_unreadable_video_exits_1_naming_the_file(run_vilamp, model_dir, tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("these are notes, not a video")
    for command in ("ask", "keyframes"):
        result = run_vilamp(command, model_dir, not_a_video, "q")
        assert result.returncode == 1
        assert f"vilamp {command}: error: `{not_a_video}` could not be decoded: it is a text file, not a video" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr and "Errno" not in result.stderr


def test_empty_video_file_exits_1_saying_it_is_empty(run_vilamp, model_dir, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    result = run_vilamp("ask", model_dir, empty, "q")
    assert result.returncode == 1
    assert result.stderr.startswith(f"vilamp ask: error: `{empty}` is empty (0 bytes), not a video")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_directory_that_is_not_converted_exits_1_with_what_to_do(run_vilamp, demo_dir, video_file, tmp_path):
    result = run_vilamp("keyframes", demo_dir / "original_tiny", video_file, "q", "--out", tmp_path / "t.png")
    assert result.returncode == 1
    assert "is not a converted ViLaMP directory (no processor_config.json)" in result.stderr
    assert "vilamp convert ORIGINAL_DIR OUTPUT_DIR" in result.stderr


def test_picture_must_be_a_png(run_vilamp, model_dir, video_file, tmp_path):
    result = run_vilamp("keyframes", model_dir, video_file, "q", "--out", tmp_path / "timeline.jpg")
    assert result.returncode == 2 and "must name a .png file" in result.stderr


def test_vilamp_convert_usage_error_is_one_line(capsys):
    """`vilamp-convert` (the console script) words its usage errors as `vilamp` does: one line, exit 2."""
    with pytest.raises(SystemExit) as exit_status:
        convert_command(["--input", "checkpoint"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err == (
        "vilamp-convert: error: the following arguments are required: --output; see `vilamp-convert --help`\n"
    )
