"""The LoRA example and the LoRA benchmarks run in their tiny CPU modes (timings are printed, never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bench_output import markdown_tables

pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (the `peft` extra)")

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_script(*command: str) -> subprocess.CompletedProcess:
    # the repository root on the path: the scripts import the package's folders from it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, *command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_finetune_lora_example_tiny_mode_trains_and_saves_an_adapter(tmp_path):
    from peft import PeftModel

    from vilamp.processing import ViLaMPDataCollator, read_video_qa_file
    from vilamp.testing import build_tiny_model, build_tiny_processor

    output_dir = tmp_path / "run"
    result = run_script("examples/finetune_lora.py", "--tiny", "--output-dir", str(output_dir), "--max-steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "first loss" in result.stdout
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert (output_dir / "keyframe_selector.safetensors").is_file()

    rows = read_video_qa_file(output_dir / "tiny_data" / "train.jsonl")
    batch = ViLaMPDataCollator(build_tiny_processor())(rows[:1])
    model = PeftModel.from_pretrained(build_tiny_model().eval(), output_dir)
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, build_tiny_model().eval()(**batch).logits)


@pytest.mark.slow
def test_finetune_lora_example_under_torchrun_on_cpus_trains_one_data_parallel_job(tmp_path):
    output_dir = tmp_path / "run"
    result = run_script(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "examples/finetune_lora.py", "--tiny", "--output-dir", str(output_dir), "--max-steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # transformers says this when the processes would each train their own copy on their own rows
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in result.stdout + result.stderr
    assert (output_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_lora_step_bench_tiny_mode_prints_one_row_per_frame_count_and_configuration():
    result = run_script(
        "bench/lora_step.py", "--tiny", "--device", "cpu", "--dtype", "float32", "--frames", "4,8", "--steps", "1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = lines.index("| frames | trainable | tokens | trainable params | peak GPU GiB | s / step |")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in lines[start + 2 :] if line.startswith("|")
    ]
    assert [(row[0], row[1]) for row in rows] == [
        ("4", "lora"), ("4", "lora+projector+dfm"), ("8", "lora"), ("8", "lora+projector+dfm")
    ]  # fmt: skip
    assert all(row[4] == "n/a" and float(row[5]) > 0 for row in rows)


@pytest.mark.slow
def test_lora_fsdp_bench_tiny_gloo_run_gives_one_process_losses_for_each_frame_count():
    result = run_script(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "bench/lora_fsdp.py", "--tiny", "--device", "cpu", "--dtype", "float32", "--frames", "4,8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("- torch ") and "transformers" in line for line in lines)
    rows = next(table for table in markdown_tables(lines) if table and "FSDP losses" in table[0])
    assert [int(row["frames"]) for row in rows] == [4, 8]
    for row in rows:
        assert row["ranks"] == "2" and row["equal"] == "yes"
        assert float(row["max abs loss diff"]) <= 1e-5
        assert len(row["FSDP losses"].split(", ")) == 3
