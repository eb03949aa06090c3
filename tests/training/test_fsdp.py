"""LoRA fine-tuning sharded with FSDP2 (`training.shard_model`) over two gloo processes on the CPU trains as one process
does on the same batches, and the adapter it saves loads."""

import pytest
import torch
from torch import distributed as dist
from torch import multiprocessing as mp

peft = pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (the `peft` extra)")

from vilamp.processing import ViLaMPDataCollator  # noqa: E402
from vilamp.testing import build_tiny_model  # noqa: E402
from vilamp.training import enable_gradient_checkpointing, lora_config, save_adapter, shard_model  # noqa: E402

WORLD_SIZE = 2
NUM_STEPS = 3
LEARNING_RATE = 1e-2
# two-frame vision chunks: the ranks' videos (3 and 6 frames) take 2 and 3 chunks, so the ranks run SigLIP a different
# number of times in the forward pass and again in the backward pass (gradient checkpointing recomputes each chunk)
VISION_CHUNK_SIZE = 2
# float32 on the CPU: FSDP adds the two ranks' gradients where one process accumulates them, the same sums in another
# order (measured: losses within 3e-7)
TOLERANCE = 1e-5


def build_base_model():
    return build_tiny_model(seed=0, vision_chunk_size=VISION_CHUNK_SIZE)


def build_lora_model():
    """The tiny model with gradient checkpointing and deterministic adapters (no dropout), the projector trained in
    full, as `examples/finetune_lora.py` trains it by default."""
    model = build_base_model().train()
    enable_gradient_checkpointing(model)
    return peft.get_peft_model(model, lora_config(r=4, lora_dropout=0.0, modules_to_save=["multi_modal_projector"]))


def optimizer_for(model) -> torch.optim.Optimizer:
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(parameters, lr=LEARNING_RATE)


def train_on_rank(rank: int, batches: list[dict], store_path: str, output_dir: str):
    """One rank: shards the model, trains on its own video, and saves the losses (averaged over the ranks) and the
    adapter."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE)
    try:
        model = shard_model(build_lora_model(), "cpu")
        optimizer = optimizer_for(model)
        losses = []
        for _ in range(NUM_STEPS):
            loss = model(**batches[rank]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.detach())
        losses = torch.stack(losses)
        dist.all_reduce(losses)
        save_adapter(model, f"{output_dir}/adapter")
        if rank == 0:
            torch.save(losses / WORLD_SIZE, f"{output_dir}/losses.pt")
    finally:
        dist.destroy_process_group()


def train_in_one_process(batches: list[dict]):
    """The same steps in one process: each step accumulates the gradients of every rank's video, each loss divided by
    the number of ranks as FSDP averages the ranks' gradients. Returns the losses and the trained model."""
    model = build_lora_model()
    optimizer = optimizer_for(model)
    losses = []
    for _ in range(NUM_STEPS):
        total = 0.0
        for batch in batches:
            loss = model(**batch).loss / len(batches)
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return torch.tensor(losses), model


@pytest.mark.slow
def test_two_gloo_ranks_train_as_one_process_and_save_an_adapter_that_loads(processor, training_rows, tmp_path):
    # one video per rank, of 3 and 6 frames: different numbers of tokens and of vision chunks
    batches = [dict(ViLaMPDataCollator(processor)([row])) for row in training_rows]
    assert [int(batch["video_frame_counts"].sum()) for batch in batches] == [3, 6]

    mp.spawn(train_on_rank, args=(batches, str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD_SIZE)

    expected_losses, expected_model = train_in_one_process(batches)
    losses = torch.load(tmp_path / "losses.pt")
    torch.testing.assert_close(losses, expected_losses, rtol=0, atol=TOLERANCE)
    # the steps trained: the loss moved by far more than the tolerance
    assert losses[-1] < losses[0] - 0.1

    reloaded = peft.PeftModel.from_pretrained(build_base_model().eval(), tmp_path / "adapter").eval()
    expected_model.eval()
    with torch.no_grad():
        for batch in batches:
            expected = expected_model(**batch).logits
            torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=TOLERANCE)
            assert not torch.allclose(build_base_model().eval()(**batch).logits, expected)
