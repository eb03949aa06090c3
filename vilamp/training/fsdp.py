"""Fine-tuning over several processes with FSDP2 (`torch.distributed.fsdp.fully_shard`): the language model's decoder
layers are sharded one by one, the rest of ViLaMP as one group, and the trained adapter is saved from the shards."""

import os

import torch
from torch import distributed as dist
from torch import nn
from transformers.utils import is_torch_greater_or_equal

from vilamp.modeling_vilamp.modeling_vilamp import ViLaMPModel


def shard_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """
    Shards a ViLaMP model, bare or wrapped by PEFT, over the ranks of the default process group with FSDP2, in place.

    Each decoder layer of the language model is one FSDP group, gathered only while it runs (and again in the
    backward pass). Everything else (SigLIP, the projector, the DFM, the embeddings, `lm_head`) is the root group,
    gathered once for the whole forward and backward pass. The vision stage is not split into groups on purpose: each
    rank runs SigLIP once per chunk of its own frames, a count that depends on its videos (and on its free memory), so
    per-layer groups would issue a different number of collectives on each rank (a collective mismatch, or a hang).
    0-d parameters (the DFM's `tau`), which `fully_shard` cannot shard, stay whole on every rank; FSDP does not average
    their gradients, so they must be frozen (leave `"feature_merger"` out of `modules_to_save`).

    Call it after `enable_gradient_checkpointing` and `peft.get_peft_model`, and before creating the optimizer. Every
    rank must hold the same frozen weights (load the same checkpoint, or draw them from the same seed).

    Args:
        model (`nn.Module`): a [`ViLaMPForConditionalGeneration`] or a `peft.PeftModel` around one.
        device (`torch.device` or `str`): this process's device, e.g. `TrainingArguments.device`; the current CUDA
            device for `"cuda"`.

    Returns:
        `nn.Module`: `model`, sharded (its class becomes FSDP's subclass of it).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not is_torch_greater_or_equal("2.7"):
        raise ImportError(
            f"`shard_model` needs torch>=2.7 (`fully_shard(ignored_params=...)`), found {torch.__version__}."
        )
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "`shard_model` needs `torch.distributed` to be initialised: start the script with `torchrun` or "
            "`accelerate launch` and create `TrainingArguments` (or call `torch.distributed.init_process_group()`) "
            "first."
        )
    vilamp_models = [module for module in model.modules() if isinstance(module, ViLaMPModel)]
    if len(vilamp_models) != 1:
        raise TypeError(
            f"`model` must be a ViLaMPForConditionalGeneration or a PEFT model around one, got {type(model).__name__}."
        )
    replicated = {name: parameter for name, parameter in model.named_parameters() if parameter.ndim == 0}
    trainable_replicated = sorted(name for name, parameter in replicated.items() if parameter.requires_grad)
    if trainable_replicated:
        raise ValueError(
            "FSDP cannot shard 0-d parameters, and `shard_model` keeps them whole on every rank without averaging "
            f"their gradients, so they must be frozen; trainable: {trainable_replicated}. Leave `feature_merger` out "
            "of `modules_to_save`."
        )
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in vilamp_models[0].language_model.layers:
        fully_shard(layer, mesh=mesh)
    # the root stays gathered from its forward to the end of the backward pass, where the vision chunks are recomputed
    fully_shard(model, mesh=mesh, reshard_after_forward=False, ignored_params=set(replicated.values()))
    for parameter in replicated.values():
        parameter.data = parameter.data.to(device)
    return model


def save_adapter(model: nn.Module, output_dir: str | os.PathLike):
    """
    Saves the adapter of a PEFT model sharded by [`shard_model`] as `PeftModel.save_pretrained` does. Call it on
    every rank: the trainable parameters (adapters and `modules_to_save`) are gathered to rank 0, which writes them;
    the frozen weights are not gathered.

    Args:
        model (`peft.PeftModel`): the sharded model.
        output_dir (`str` or `os.PathLike`): where the adapter is written.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    state_dict = get_model_state_dict(model, options=options)
    if dist.get_rank() == 0:
        model.save_pretrained(output_dir, state_dict=state_dict)
    dist.barrier()


__all__ = ["save_adapter", "shard_model"]
