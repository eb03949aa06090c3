"""Bad inputs to LoRA fine-tuning with FSDP: sharding without a process group, a model that is not ViLaMP, a trainable
0-d parameter that FSDP cannot shard, and `examples/finetune_lora.py --fsdp` without several GPU processes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import distributed as dist
from torch import nn

peft = pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (the `peft` extra)")

from vilamp.testing import build_tiny_model  # noqa: E402
from vilamp.training import lora_config, shard_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def single_process_group(tmp_path):
    """A gloo process group of this process alone."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_shard_model_without_process_group_names_the_launchers():
    """`shard_model` called before `torch.distributed` is initialised."""
    with pytest.raises(ValueError, match="start the script with `torchrun` or `accelerate launch`"):
        shard_model(build_tiny_model(), "cpu")


def test_shard_model_refuses_a_model_that_is_not_vilamp(single_process_group):
    """`shard_model` given a module that holds no ViLaMP model."""
    with pytest.raises(TypeError, match="`model` must be a ViLaMPForConditionalGeneration .* got Linear"):
        shard_model(nn.Linear(4, 4), "cpu")


def test_trainable_dfm_is_refused_naming_its_temperature(single_process_group):
    """`shard_model` on a model whose DFM (with its 0-d `tau`) is trained in full."""
    model = peft.get_peft_model(build_tiny_model(), lora_config(r=4, modules_to_save=["feature_merger"]))
    with pytest.raises(ValueError, match=r"must be frozen; trainable: \[.*feature_merger\.modules_to_save.*\.tau"):
        shard_model(model, "cpu")


def test_finetune_example_with_fsdp_in_one_process_is_refused(tmp_path):
    """`examples/finetune_lora.py --fsdp` started as one process (or on a machine without GPUs)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run(
        [sys.executable, "examples/finetune_lora.py", "--tiny", "--fsdp", "--output-dir", str(tmp_path / "run")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "`--fsdp` shards the model over several GPU processes, found 1 process(es)" in result.stderr
    assert not (tmp_path / "run").exists()
