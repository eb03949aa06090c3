"""`lmms-eval --model vilamp` end to end on the CPU: a local generation task and a local multiple-choice task over
synthetic videos, and the per-sample results against the processor and the model called directly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from vilamp.testing import torchrun_launcher

pytest.importorskip(
    "lmms_eval", reason="lmms-eval is not installed: pip install -e '.[lmms-eval]' (the lmms-eval CI lane)"
)

from vilamp.evaluation.lmms_eval_vilamp import question_alone  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATION_TASK = "vilamp_tiny_generation"
CHOICE_TASK = "vilamp_tiny_choice"
MAX_NEW_TOKENS = 5

TASK_YAMLS = {
    GENERATION_TASK: f"""task: {GENERATION_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: generate_until
doc_to_visual: video
doc_to_text: prompt
doc_to_target: answer_letter
generation_kwargs:
  max_new_tokens: {MAX_NEW_TOKENS}
  do_sample: false
metric_list:
  - metric: exact_match
""",
    CHOICE_TASK: f"""task: {CHOICE_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {{data}}
test_split: test
output_type: multiple_choice
doc_to_visual: video
doc_to_text: question
doc_to_choice: choices
doc_to_target: answer_index
metric_list:
  - metric: acc
""",
}


def run_lmms_eval(task_dir: Path, output_dir: Path, model_args: str, *, processes: int = 1) -> None:
    """Runs lmms-eval on both tasks, in `processes` CPU processes (gloo) under torchrun."""
    # offline, the datasets cache in the test's folder; one thread per process, so that any number of processes
    # computes what the test process computes
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(output_dir / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    launcher = [sys.executable, "-m", "lmms_eval"]
    if processes > 1:
        # on GPUs `accelerate launch --num_processes N` does the same; on the CPU it would start one process
        launcher = [*torchrun_launcher(processes), "-m", "lmms_eval"]
    arguments = [
        "--model",
        "vilamp",
        "--model_args",
        model_args,
        "--tasks",
        f"{GENERATION_TASK},{CHOICE_TASK}",
        "--include_path",
        str(task_dir),
        "--batch_size",
        "2",
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(output_dir),
    ]
    result = subprocess.run(
        [*launcher, *arguments], cwd=output_dir, env=env, capture_output=True, text=True, timeout=900
    )
    # lmms-eval logs a failed evaluation and still exits 0: the results file is the proof
    assert result.returncode == 0 and list(output_dir.glob("*/*_results.json")), (
        result.stdout[-3000:] + result.stderr[-5000:]
    )


def read_run(output_dir: Path) -> dict:
    """The results file and each task's samples (by doc id) of a run."""
    (results_path,) = output_dir.glob("*/*_results.json")
    samples = {}
    for task in (GENERATION_TASK, CHOICE_TASK):
        (samples_path,) = output_dir.glob(f"*/*_samples_{task}.jsonl")
        lines = samples_path.read_text(encoding="utf-8").splitlines()
        samples[task] = {sample["doc_id"]: sample for sample in map(json.loads, lines)}
    return {"results": json.loads(results_path.read_text(encoding="utf-8")), "samples": samples}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, question_rows) -> Path:
    """The two task YAMLs, for `--include_path`, over a JSONL file of `question_rows`."""
    directory = tmp_path_factory.mktemp("tasks")
    data = directory / "data.jsonl"
    rows = [{**row, "answer_letter": "ABC"[row["answer_index"]]} for row in question_rows]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    for task, text in TASK_YAMLS.items():
        (directory / f"{task}.yaml").write_text(text.format(data=data), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, task_dir, converted_dir) -> dict:
    output_dir = tmp_path_factory.mktemp("lmms-eval-single")
    run_lmms_eval(task_dir, output_dir, f"pretrained={converted_dir},decode_workers=1")
    return read_run(output_dir)


@pytest.fixture(scope="module")
def model_and_processor(converted_dir):
    return AutoModel.from_pretrained(converted_dir, dtype=torch.float32).eval(), AutoProcessor.from_pretrained(
        converted_dir
    )


def test_results_file_holds_both_tasks_for_the_vilamp_model(single_process_run, question_rows, converted_dir):
    results = single_process_run["results"]
    assert results["config"]["model"] == "vilamp"
    assert results["model_name"] == str(converted_dir)
    assert results["config"]["model_backend"] == "vilamp.evaluation.lmms_eval_vilamp.ViLaMP (simple)"
    assert results["n-samples"] == {task: {"original": 3, "effective": 3} for task in (GENERATION_TASK, CHOICE_TASK)}
    assert 0 <= results["results"][GENERATION_TASK]["exact_match,none"] <= 1
    assert 0 <= results["results"][CHOICE_TASK]["acc,none"] <= 1
    assert results["configs"][CHOICE_TASK]["output_type"] == "multiple_choice"
    for task in (GENERATION_TASK, CHOICE_TASK):
        assert sorted(single_process_run["samples"][task]) == list(range(len(question_rows)))


def test_generated_answers_equal_the_processor_and_generate_called_directly(
    single_process_run, question_rows, model_and_processor
):
    model, processor = model_and_processor
    samples = single_process_run["samples"][GENERATION_TASK]
    for doc_id, row in enumerate(question_rows):
        # the keyframe selector ranks the frames against the question alone; the options go only into the prompt
        inputs = processor(text=row["prompt"], videos=row["video"], query=row["question"])
        output_ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answer = processor.tokenizer.decode(output_ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert samples[doc_id]["filtered_resps"] == answer.strip()
        assert samples[doc_id]["exact_match"] == float(answer.strip() == "ABC"[row["answer_index"]])


def test_choice_losses_equal_a_direct_forward_of_each_option(single_process_run, question_rows, model_and_processor):
    model, processor = model_and_processor
    samples = single_process_run["samples"][CHOICE_TASK]
    for doc_id, row in enumerate(question_rows):
        inputs = processor(text=row["question"], videos=row["video"], query=row["question"])
        losses = []
        for choice in row["choices"]:
            # lmms-eval puts its target delimiter, a space, before each choice
            choice_ids = processor.tokenizer(f" {choice}", add_special_tokens=False, return_tensors="pt").input_ids
            input_ids = torch.cat([inputs["input_ids"], choice_ids], dim=1)
            with torch.no_grad():
                logits = model(
                    **{**inputs, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
                ).logits
            choice_logits = logits[0, inputs["input_ids"].shape[1] - 1 : -1]
            losses.append(torch.nn.functional.cross_entropy(choice_logits, choice_ids[0]).item())
        logged_losses = [float(loss) for loss, _ in samples[doc_id]["filtered_resps"]]
        torch.testing.assert_close(torch.tensor(logged_losses), torch.tensor(losses), rtol=0, atol=1e-4)
        # lmms-eval picks the option of the lowest loss
        prediction = min(range(len(losses)), key=losses.__getitem__)
        assert samples[doc_id]["acc"] == float(prediction == row["answer_index"])


def test_two_processes_give_the_samples_of_one(tmp_path, task_dir, converted_dir, single_process_run):
    run_lmms_eval(task_dir, tmp_path, f"pretrained={converted_dir},decode_workers=0", processes=2)
    double = read_run(tmp_path)
    assert double["results"]["n-samples"] == single_process_run["results"]["n-samples"]
    for task in (GENERATION_TASK, CHOICE_TASK):
        assert sorted(double["samples"][task]) == sorted(single_process_run["samples"][task])
    for doc_id, sample in single_process_run["samples"][GENERATION_TASK].items():
        assert double["samples"][GENERATION_TASK][doc_id]["filtered_resps"] == sample["filtered_resps"]
    for doc_id, sample in single_process_run["samples"][CHOICE_TASK].items():
        single_losses = [float(loss) for loss, _ in sample["filtered_resps"]]
        double_losses = [float(loss) for loss, _ in double["samples"][CHOICE_TASK][doc_id]["filtered_resps"]]
        torch.testing.assert_close(torch.tensor(double_losses), torch.tensor(single_losses), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "text, question",
    [
        ("What moves?", "What moves?"),
        ("What moves?\nA. a bar\nB. a ball", "What moves?"),
        ("What moves in\nthe video?\n(A) a bar\n(B) a ball\nBest option: (", "What moves in\nthe video?"),
        ("Which one?\nA) left\nB) right", "Which one?"),
    ],
)
def test_question_alone_cuts_the_answer_options(text, question):
    assert question_alone(text) == question
