"""`vilamp ask` with several questions and `vilamp chat`: one video load for all the questions, and each answer the one
the question gets asked alone (or, in a chat, after the earlier questions and answers)."""

import json

import pytest

from vilamp.cli.pipeline import chat_conversation
from vilamp.runner import ViLaMPRunner

QUESTIONS = ("What colour is the square?", "Where is the square?", "Is anything moving?")
MAX_NEW_TOKENS = 4
SETTINGS = ("--max-frames", "10", "--keyframes", "3", "--max-new-tokens", MAX_NEW_TOKENS, "--device", "cpu")


def ask_json(run_vilamp, model_dir, video_file, *questions) -> dict:
    result = run_vilamp("ask", model_dir, video_file, *questions, *SETTINGS, "--json", "--no-progress")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def single_answers(run_vilamp, model_dir, video_file) -> dict[str, dict]:
    """Each of `QUESTIONS` asked alone, one `vilamp ask` run each, as `--json` reports its answer."""
    return {question: ask_json(run_vilamp, model_dir, video_file, question)["answers"][0] for question in QUESTIONS}


def test_several_questions_load_the_video_once_and_answer_each_as_asked_alone(
    run_vilamp, model_dir, video_file, single_answers
):
    record = ask_json(run_vilamp, model_dir, video_file, *QUESTIONS)
    # the video's one-time costs appear once, for all the questions
    assert record["num_frames"] == 10 and set(record["timings_seconds"]) >= {"decoding", "keyframe_embedding"}
    assert [answer["question"] for answer in record["answers"]] == list(QUESTIONS)
    for answer in record["answers"]:
        alone = single_answers[answer["question"]]
        for key in ("answer", "keyframe_timestamps_seconds", "num_video_tokens", "num_tokens"):
            assert answer[key] == alone[key], key
        assert "decoding" not in answer["timings_seconds"] and "keyframe_selection" in answer["timings_seconds"]


def test_several_questions_print_one_block_per_question(run_vilamp, model_dir, video_file, single_answers):
    result = run_vilamp("ask", model_dir, video_file, *QUESTIONS, *SETTINGS)
    assert result.returncode == 0, result.stderr
    blocks = [f"> {question}\n{single_answers[question]['answer']}\n" for question in QUESTIONS]
    assert result.stdout == "\n".join(blocks)
    summaries = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(summaries) == 4 and summaries[0].startswith("[video: 10 frames of 12 s, decoded by pyav; load_model")
    assert all(line.startswith("[10 frames, 3 keyframes at") for line in summaries[1:])


def test_chat_answers_each_line_of_stdin_keeping_the_conversation(run_vilamp, model_dir, video_file, single_answers):
    first, second, after_exit = QUESTIONS
    result = run_vilamp(
        "chat",
        model_dir,
        video_file,
        *SETTINGS,
        "--no-progress",
        stdin=f"{first}\n\n  \n{second}\n/exit\n{after_exit}\n",
    )
    assert result.returncode == 0, result.stderr
    first_answer = single_answers[first]["answer"]  # the first turn is `vilamp ask` with that question
    runner = ViLaMPRunner.from_pretrained(model_dir, device="cpu", max_frames=10, num_keyframes=3)
    video = runner.load_video(str(video_file), keep_features="none")
    conversation = chat_conversation(video.video, [(first, first_answer)], second)
    second_answer = runner.reply(video, conversation, second, MAX_NEW_TOKENS)
    assert result.stdout == f"{first_answer}\n{second_answer}\n"
    # empty lines are skipped, nothing after /exit is asked, and no prompt is shown when stdin is not a terminal
    assert len([line for line in result.stderr.splitlines() if line.startswith("[10 frames")]) == 2
    assert "> " not in result.stderr


def test_chat_ends_at_the_end_of_its_input(run_vilamp, model_dir, video_file, single_answers):
    question = QUESTIONS[1]
    result = run_vilamp("chat", model_dir, video_file, *SETTINGS, "--no-progress", stdin=question)
    assert result.returncode == 0, result.stderr
    assert result.stdout == single_answers[question]["answer"] + "\n"


def test_a_video_cache_keeps_the_loaded_video_for_the_next_run(
    run_vilamp, model_dir, video_file, single_answers, tmp_path
):
    cache = tmp_path / "videos"
    question = QUESTIONS[0]
    for _ in range(2):
        record = ask_json(run_vilamp, model_dir, video_file, question, "--video-cache", cache)
        assert record["answers"][0]["answer"] == single_answers[question]["answer"]
    # one entry: the second run read the first run's frames rather than storing its own
    assert [path.suffix for path in cache.iterdir()] == [".safetensors"]


def test_a_video_cache_size_that_is_not_positive_is_a_usage_error(run_vilamp, model_dir, video_file):
    result = run_vilamp("ask", model_dir, video_file, QUESTIONS[0], "--video-cache-max-gib", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vilamp ask: error: argument --video-cache-max-gib: expected a positive number, got 0; see `vilamp ask --help`"
    ]
