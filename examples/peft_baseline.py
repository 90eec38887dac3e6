"""HuggingFace PEFT P-tuning baseline on GLUE SST-2 (PyTorch).

Trains `peft.PromptEncoderConfig` P-tuning of a frozen
`transformers.AutoModelForSequenceClassification` (the prompt encoder and
the classifier head are trained; the backbone and pooler stay frozen), with
the same recipe as `examples/sst2_ptuning.py`: Adam (eps=1e-7, as Keras),
cross entropy, a seeded shuffle every epoch, dynamic padding, dev accuracy
after every epoch and optional early stopping that restores the best epoch.

`examples/sst2_ptuning.py --baselines` calls `run_peft_ptuning`; it can also
run alone (needs `pip install peft transformers`):

    python examples/peft_baseline.py --train-rows 2000 --epochs 2
    python examples/peft_baseline.py --encoder LSTM --patience 2

and prints the result dict as JSON.
"""

import argparse
import json
import time

import numpy as np


def _import_backends():
    try:
        import peft
        import torch
        import transformers
    except ImportError as error:
        raise ImportError(
            "The PEFT baseline needs PyTorch, PEFT and transformers: "
            "`pip install peft transformers` (and `torch`). "
            f"Import failed with: {error}"
        ) from error
    return torch, peft, transformers


def _tokenize(tokenizer, sentences, sequence_length):
    encoded = tokenizer(
        list(sentences), truncation=True, max_length=sequence_length
    )
    return encoded["input_ids"]


def _pad_batch(torch, rows, pad_id):
    """Pads token id lists to the batch's longest row."""
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), pad_id, dtype="int64")
    mask = np.zeros((len(rows), length), dtype="int64")
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _evaluate(torch, model, ids, labels, batch_size, pad_id):
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            input_ids, mask = _pad_batch(
                torch, ids[start : start + batch_size], pad_id
            )
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            predictions = logits.argmax(dim=-1).numpy()
            correct += int(
                (predictions == labels[start : start + batch_size]).sum()
            )
    return correct / len(ids)


def run_peft_ptuning(
    train_x,
    train_y,
    dev_x,
    dev_y,
    *,
    model_dir,
    num_virtual_tokens=20,
    encoder_reparameterization_type="MLP",
    encoder_hidden_size=None,
    sequence_length=64,
    batch_size=32,
    epochs=3,
    learning_rate=3e-3,
    seed=0,
    patience=None,
    verbose=True,
):
    """P-tunes a HF checkpoint with PEFT and returns its dev accuracy.

    Args:
        train_x, train_y: training sentences (list of str) and labels (0/1).
        dev_x, dev_y: dev sentences and labels, evaluated after every epoch.
        model_dir: local HF checkpoint directory (safetensors, config.json,
            tokenizer files).
        num_virtual_tokens: int, the prompt length.
        encoder_reparameterization_type: `"MLP"` or `"LSTM"`.
        encoder_hidden_size: int or `None` (PEFT's default: the model's
            hidden size).
        sequence_length: int, the most real tokens per row, [CLS] and [SEP]
            included; batches are padded to their longest row.
        batch_size: int.
        epochs: int, the most epochs to train.
        learning_rate: float, Adam's learning rate.
        seed: int, seeds torch (head and prompt encoder initialization,
            dropout) and the per-epoch numpy shuffle.
        patience: int or `None`. Stop after `patience` epochs without a
            better dev accuracy; `None` trains all `epochs`. Either way the
            best epoch's trainable weights are restored at the end.
        verbose: bool, print one line per epoch.

    Returns:
        A dict: `dev_accuracy` (the best epoch's), `history` (`loss`, the
        mean training loss per epoch, and `val_accuracy` per epoch),
        `fit_seconds`, `epochs_run`, `trainable_params`, `peft_version` and
        `transformers_version`.
    """
    torch, peft, transformers = _import_backends()
    if len(train_x) != len(train_y) or len(dev_x) != len(dev_y):
        raise ValueError(
            "Sentences and labels must have the same length. Received: "
            f"{len(train_x)} train sentences, {len(train_y)} train labels, "
            f"{len(dev_x)} dev sentences, {len(dev_y)} dev labels"
        )
    if patience is not None and patience < 1:
        raise ValueError(
            f"`patience` must be a positive int or None. "
            f"Received: patience={patience}"
        )

    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2
    )
    config = peft.PromptEncoderConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=num_virtual_tokens,
        encoder_reparameterization_type=encoder_reparameterization_type,
        encoder_hidden_size=encoder_hidden_size,
    )
    model = peft.get_peft_model(model, config)
    trainable = [
        (name, param)
        for name, param in model.named_parameters()
        if param.requires_grad
    ]
    trainable_params = sum(param.numel() for _, param in trainable)
    optimizer = torch.optim.Adam(
        [param for _, param in trainable], lr=learning_rate, eps=1e-7
    )
    pad_id = tokenizer.pad_token_id or 0
    train_ids = _tokenize(tokenizer, train_x, sequence_length)
    dev_ids = _tokenize(tokenizer, dev_x, sequence_length)
    train_labels = np.asarray(train_y, dtype="int64")
    dev_labels = np.asarray(dev_y, dtype="int64")
    rng = np.random.default_rng(seed)

    history = {"loss": [], "val_accuracy": []}
    best_accuracy, best_state, waited = -1.0, None, 0
    start_time = time.perf_counter()
    for epoch in range(epochs):
        epoch_start = time.perf_counter()
        model.train()
        order = rng.permutation(len(train_ids))
        loss_sum = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, mask = _pad_batch(
                torch, [train_ids[i] for i in rows], pad_id
            )
            labels = torch.from_numpy(train_labels[rows])
            logits = model(input_ids=input_ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(rows)
        history["loss"].append(loss_sum / len(order))
        dev_start = time.perf_counter()
        train_seconds = dev_start - epoch_start
        accuracy = _evaluate(
            torch, model, dev_ids, dev_labels, batch_size, pad_id
        )
        history["val_accuracy"].append(accuracy)
        if accuracy > best_accuracy:
            best_accuracy, waited = accuracy, 0
            best_state = {
                name: param.detach().clone() for name, param in trainable
            }
        else:
            waited += 1
        if verbose:
            print(
                f"[peft] epoch {epoch + 1}/{epochs} "
                f"loss={history['loss'][-1]:.4f} "
                f"val_accuracy={accuracy:.4f} "
                f"(train {train_seconds:.1f}s, "
                f"{len(order) / train_seconds:.1f} examples/s; "
                f"dev {time.perf_counter() - dev_start:.1f}s)",
                flush=True,
            )
        if patience is not None and waited >= patience:
            break
    fit_seconds = time.perf_counter() - start_time
    if best_state is not None:
        with torch.no_grad():
            for name, param in trainable:
                param.copy_(best_state[name])

    return {
        "dev_accuracy": best_accuracy,
        "history": history,
        "fit_seconds": fit_seconds,
        "epochs_run": len(history["loss"]),
        "trainable_params": int(trainable_params),
        "peft_version": peft.__version__,
        "transformers_version": transformers.__version__,
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model-dir",
        default=None,
        help="HF checkpoint directory (default: the installed "
        "all-MiniLM-L6-v2)",
    )
    parser.add_argument("--data-dir", default=None, help="SST-2 directory")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--dev-rows", type=int, default=None)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--encoder", default="MLP", choices=["MLP", "LSTM"])
    parser.add_argument("--encoder-hidden-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=None)
    return parser.parse_args()


def run_peft_from_args(args, model_dir, train_x, train_y, dev_x, dev_y):
    """`run_peft_ptuning` with the hyperparameters of an argparse namespace.

    `args` has this script's options (also `examples/sst2_ptuning.py`'s).
    """
    return run_peft_ptuning(
        train_x,
        train_y,
        dev_x,
        dev_y,
        model_dir=model_dir,
        num_virtual_tokens=args.num_virtual_tokens,
        encoder_reparameterization_type=args.encoder,
        encoder_hidden_size=args.encoder_hidden_size,
        sequence_length=args.sequence_length,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        seed=args.seed,
        patience=args.patience,
    )


def main():
    from keras_ptuning.datasets import load_sst2
    from keras_ptuning.presets import minilm_preset_dir

    args = parse_args()
    model_dir = args.model_dir or minilm_preset_dir()
    train_x, train_y = load_sst2("train", args.data_dir, args.train_rows)
    dev_x, dev_y = load_sst2("dev", args.data_dir, args.dev_rows)
    print(f"model_dir={model_dir} train={len(train_x)} dev={len(dev_x)}")
    result = run_peft_from_args(args, model_dir, train_x, train_y, dev_x, dev_y)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
