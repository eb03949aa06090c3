"""
Fine-tune ViLaMP with LoRA on video question-answer pairs, with `transformers.Trainer`.

The dataset is a JSON list or a JSONL file of `{"video": path, "question": ..., "answer": ...}` rows (video paths
relative to the dataset file). Adapters go on the language model's projections only; `--modules-to-save` also trains
the projector and/or the DFM in full; the SigLIP tower stays frozen. The adapter and the processor are saved to
`--output-dir`. Several processes train data-parallel, each with the whole model; with `--fsdp` they shard it instead
(FSDP2, GPUs only; see `training.shard_model`).

    python examples/finetune_lora.py --model vilamp-7b --data train.jsonl --output-dir vilamp-7b-lora
    accelerate launch examples/finetune_lora.py --model vilamp-7b --data train.jsonl --output-dir vilamp-7b-lora
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_lora.py --fsdp --model vilamp-7b --data train.jsonl --output-dir vilamp-7b-lora
    python examples/finetune_lora.py --tiny --output-dir vilamp-tiny-lora   # tiny random model, about a minute
"""

import argparse
import os
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModel, AutoProcessor, Trainer, TrainingArguments

import vilamp  # noqa: F401  (registers ViLaMP with the Auto classes)
from vilamp.processing import ViLaMPDataCollator, read_video_qa_file
from vilamp.testing import build_tiny_model, build_tiny_processor, write_tiny_video_qa_dataset
from vilamp.training import enable_gradient_checkpointing, lora_config, save_adapter, shard_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted ViLaMP directory (model and processor)")
    parser.add_argument("--data", type=Path, help="JSON or JSONL dataset of video, question, answer rows")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the adapter and processor are saved")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and synthetic videos: runs anywhere")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument(
        "--modules-to-save",
        nargs="*",
        default=["multi_modal_projector"],
        choices=["multi_modal_projector", "feature_merger"],
        help="modules trained in full next to the adapters (default: the projector, as the original training did)",
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument(
        "--max-steps", type=int, help="stop after this many optimizer steps (default: --epochs; 12 with --tiny)"
    )
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default 2e-4; 5e-3 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=1, help="videos per device and step")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    parser.add_argument("--attn-implementation", default="sdpa", help='"sdpa" (default) or "flash_attention_2"')
    parser.add_argument("--max-frames", type=int, help="frames sampled per video (default: the processor's, 600)")
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model over the processes (FSDP2) instead of giving each a whole copy; needs GPUs and "
        "`accelerate launch` or `torchrun` with several processes",
    )
    args = parser.parse_args()
    if not args.tiny and (args.model is None or args.data is None):
        parser.error("`--model` and `--data` are required unless `--tiny` is given.")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    # accelerate runs FSDP on GPUs only: on CPUs it would wrap the sharded model in DistributedDataParallel
    if args.fsdp and (world_size < 2 or not torch.cuda.is_available()):
        parser.error(
            f"`--fsdp` shards the model over several GPU processes, found {world_size} process(es) and "
            f"{torch.cuda.device_count()} GPU(s); launch with `accelerate launch --num_processes N` or "
            "`torchrun --nproc_per_node N` on a machine with N GPUs, or leave out `--fsdp`."
        )
    return args


def main():
    args = parse_args()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    training_args = TrainingArguments(
        output_dir=str(args.output_dir),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        # a tiny random model needs large steps to show the loss falling within a few of them
        learning_rate=args.learning_rate or (5e-3 if args.tiny else 2e-4),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps or (12 if args.tiny else -1),
        lr_scheduler_type="constant" if args.tiny else "cosine",
        warmup_steps=0 if args.tiny else 10,
        logging_steps=1,
        save_strategy="no",
        bf16=not args.tiny and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        # the collator reads the `video`, `question` and `answer` fields, which Trainer would otherwise drop
        remove_unused_columns=False,
        # the model comes sharded (`shard_model`): accelerate keeps it out of DistributedDataParallel, wraps nothing
        fsdp=True if args.fsdp else None,
        fsdp_config={"auto_wrap_policy": "NO_WRAP"} if args.fsdp else None,
        # several processes without GPUs (torchrun on CPUs) talk through gloo; without `use_cpu` accelerate would not
        # treat them as distributed, and each would train its own copy on its own rows
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world_size > 1 and not torch.cuda.is_available() else None,
        report_to=[],
    )
    if args.tiny:
        model, processor = build_tiny_model(), build_tiny_processor()
        with training_args.main_process_first(desc="writing the tiny dataset"):
            data_path = args.output_dir / "tiny_data" / "train.jsonl"
            if training_args.process_index == 0:
                write_tiny_video_qa_dataset(data_path)
    else:
        dtype = torch.bfloat16 if training_args.bf16 else torch.float32
        model = AutoModel.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn_implementation)
        processor = AutoProcessor.from_pretrained(args.model)
        data_path = args.data
    if args.max_frames is not None:
        processor.video_processor.max_frames = args.max_frames

    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = get_peft_model(
        model, lora_config(r=args.lora_rank, lora_alpha=args.lora_alpha, modules_to_save=args.modules_to_save)
    )
    model.print_trainable_parameters()
    if args.fsdp:
        model = shard_model(model, training_args.device)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=read_video_qa_file(data_path),
        data_collator=ViLaMPDataCollator(processor),
    )
    result = trainer.train()
    if args.fsdp:
        save_adapter(model, args.output_dir)  # gathers the trained weights only, not the whole model
    else:
        trainer.save_model(str(args.output_dir))
    if trainer.is_world_process_zero():
        processor.save_pretrained(args.output_dir)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        print(f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}, {result.global_step} steps")
        print(f"Saved the adapter and the processor to {args.output_dir}")


if __name__ == "__main__":
    main()
