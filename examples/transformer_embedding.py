"""A token classifier regularized w.r.t. its embedding output, on synthetic data.

    python examples/transformer_embedding.py             # 400 steps, a few seconds on CPU
    python examples/transformer_embedding.py --dry-run   # 3 steps, a few seconds

Token ids are integers: there is no input gradient. The penalty differentiates by the
embedding *output* instead, which ``gr.capture`` takes from the forward pass you run::

    with gr.capture(model, "embed") as emb, sdpa_kernel(SDPBackend.MATH):
        logits = model(tokens)
    loss, terms = gr.regularize(logits, y, emb.value, [gr.DataGrad(...)])

Attention: the penalty's parameter gradient is a double backward, and PyTorch's fused attention
kernels (flash on CPU; flash and memory-efficient on CUDA) have none, so the training forward
pass runs under ``sdpa_kernel(SDPBackend.MATH)``; without it ``loss.backward()`` raises
"derivative for aten::_scaled_dot_product_..._backward is not implemented".

The task: sequences of 12 tokens from a vocabulary of 20; the label is which of the tokens
1, 2, 3 occurs most often (ties to the smaller). The last line printed is ``done: test accuracy ...``.
"""

import argparse
import time

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import gradreg as gr
from gradreg.hooks import capture

# Hyperparameters
VOCAB, LENGTH, CLASSES = 20, 12, 3  # synthetic task
D_MODEL, HEADS, FFN = 16, 2, 32  # one post-norm encoder layer, no dropout
STEPS, BATCH = 400, 64  # optimizer steps, sequences per step
LR = 3e-3  # Adam
DATAGRAD = 1.0  # lambda, per-example ||d loss_i / d embedding_i||^2, batch mean


class TokenClassifier(nn.Module):
    """embedding -> encoder layer -> mean over positions -> linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, CLASSES)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def synthetic(n, generator):
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    counts = torch.stack([(tokens == t).sum(1) for t in (1, 2, 3)], 1)
    return tokens, counts.argmax(1)  # argmax returns the first maximum


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="3 steps of batch 8")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    steps, batch = (3, 8) if args.dry_run else (args.steps, BATCH)

    torch.manual_seed(args.seed)
    data_gen = torch.Generator().manual_seed(args.seed)
    x_test, y_test = synthetic(256 if args.dry_run else 2000, data_gen)
    model = TokenClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    regs = [gr.DataGrad(DATAGRAD)]
    t0 = time.time()
    for step in range(steps):
        tokens, y = synthetic(batch, data_gen)  # fresh examples every step
        with capture(model, "embed") as emb, sdpa_kernel(SDPBackend.MATH):
            logits = model(tokens)
        loss, terms = gr.regularize(logits, y, emb.value, regs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"step {step}: loss {float(terms['loss']):.4f}  DataGrad {float(terms['DataGrad']):.4g}")
    model.eval()
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    print(f"done: test accuracy {100 * acc:.2f}% after {steps} steps in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
