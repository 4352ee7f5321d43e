"""Write examples/seed.ipynb, blocks.ipynb and training.ipynb from the cells below and execute
them, so they are stored with their outputs (`make notebooks`). tests/examples runs them again.

    python tools/make_notebooks.py [NAME ...]      # all three by default
"""

# ruff: noqa: E501  (the cells are notebook code, wrapped as a notebook reader sees them)
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CELL_TIMEOUT_S = 120


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(text.strip())


SEED = [
    md("""
# The seed notebook, rebuilt with backlens

The research notebook this project grows from (`shared/seed/notebook.txt`), section by section:
the data, the traced model, hand backprop checked against autograd, the Abstraction Experiment
with held-out scores and the sweep over the number of samples, and the forward toy. Its bugs
are fixed (float shapes, a shape error, and scores computed only on the fitting samples).

Sizes: 128 samples of 3 features, batches of 4; the Abstraction Experiment at the notebook's
b = 128, d_in = 512, hidden = 256; the sweep b = 64 … 2048 with 512 held-out samples (the
command line's `backlens demo` sweeps up to 8192).
"""),
    code("""
import torch
from torch import nn
import matplotlib.pyplot as plt
from IPython.display import HTML

import backlens
from backlens.workflows import notebook as nb
from backlens.display import html_table, tensor_table, wrap

torch.set_printoptions(precision=2, sci_mode=False)  # the notebook's printing
"""),
    md(
        "## a. Data\n`x = randint(-10, 10, (128, 3))`, `y = (x0·(cos x1 + exp(x1/3)) + x2) / 10`, batches of 4."
    ),
    code("""
x, y = backlens.seed_regression(128, seed=0)
xb, yb = next(iter(backlens.seed_loader(x, y, batch_size=4, seed=0)))
HTML(wrap(tensor_table(xb, "first batch: x") + tensor_table(yb, "first batch: y")))
"""),
    md("""
## b. The traced model
A 3→2→2→1 ReLU MLP. `backlens.trace` records each Linear's input, output, grad_output and
grad_input (the notebook printed them from hooks); the record shows itself as tables.
"""),
    code("""
model = backlens.build_mlp([3, 2, 2, 1], "relu", seed=0)
with backlens.trace(model, select=[nn.Linear]) as rec:
    loss = nn.functional.mse_loss(model(xb), yb[:, None])
    loss.backward()
print(repr(rec), f"loss = {loss.item():.2f}")
rec
"""),
    md("The first layer's grad_input is None: x does not require grad, as in the notebook."),
    code("rec['0'].grad_input is None"),
    md("""
## c. Hand backprop, checked
z = a·Wᵀ + b, R = [z > 0], a = relu z; δ3 = 2/b·(z3 − y), dW = δᵀa, δ_prev = (δ·W) ⊙ R.
`backlens.check` derives every quantity by hand and compares it with autograd, the trace and
torch.func (float64, tolerance 1e-10).
"""),
    code("""
report = backlens.check(model.double(), xb.double(), yb.double())
assert report.ok
report
"""),
    code("""
tape = report.tape
HTML(wrap("".join(
    tensor_table(layer.delta, f"δ{i} (layer {layer.name})") for i, layer in enumerate(tape.layers, start=1)
)))
"""),
    md("The hand δ of each layer is the gradient the trace recorded at that layer's output:"),
    code("""
[torch.allclose(layer.delta.float(), rec[layer.name].grad_output, atol=1e-6) for layer in tape.layers]
"""),
    md("""
## d. The Abstraction Experiment
Can one matrix M stand in for the gradient's path back through Linear → mask → Linear,
Gp = ((G·W) ⊙ R)·W2? Ridge fits M on b = 128 samples of width 512; the expected-mask map
W·diag(E R)·W2 needs no fit. Scored on the fitting samples (what the notebook did) and on
fresh samples (what it did not).
"""),
    code("""
def abstraction_table(result):
    columns = ["map", "rel. error, fitting", "rel. error, held-out"]
    rows = [(r["method"], f"{r['train_rel']:.3g}", f"{r['test_rel']:.3g}") for r in result["rows"]]
    title = f"{result['kind']} data, b = {result['b']}, d_in = {result['d_in']}, hidden = {result['hidden']}"
    return html_table(columns, rows, title)

results = [nb.abstraction_experiment(kind=kind, seed=0) for kind in ("uniform", "normal")]
HTML(wrap("".join(abstraction_table(r) for r in results)))
"""),
    md("""
With b < d_in the ridge fit interpolates: ≈ 0 error on its own samples, yet on fresh samples
it is no better than the expected-mask map (all-positive data) or worse than predicting zero
(zero-mean data, relative error ≥ 1). The notebook's `Gp − G@W` crash, explained:
"""),
    code("print(results[0]['note'])"),
    md("### The sweep over the number of fitting samples"),
    code("""
sweep = nb.sample_size_sweep(sizes=(64, 128, 256, 512, 1024, 2048), kind="normal", seed=0, n_test=512)
fig, ax = plt.subplots(figsize=(6, 3.5))
for method in dict.fromkeys(p["method"] for p in sweep["points"]):
    pts = [p for p in sweep["points"] if p["method"] == method]
    ax.plot([p["b"] for p in pts], [p["test_rel"] for p in pts], "-o", label=f"{method}, held-out")
ax.axvline(sweep["d_in"], color="grey", ls=":", label="b = d_in")
ax.set(xscale="log", yscale="log", xlabel="fitting samples b", ylabel="relative error")
ax.legend(fontsize=8); plt.show()
"""),
    md(
        "## e. The forward toy\nY = W·relu(X) fitted by M = Y·Xᵀ(XXᵀ)⁻¹; the notebook's M = [[1.36, 0.88], [−1.36, −0.88]], residual 3.0199."
    ),
    code("""
toy = nb.forward_toy()
print(f"residual ‖M·X − Y‖ = {toy['residual']:.4f}")
HTML(wrap(tensor_table(toy["M"], "M") + tensor_table(toy["MX"], "M·X") + tensor_table(toy["Y"], "Y")))
"""),
]

BLOCKS = [
    md("""
# Blocks, abstracted forward and backward

A trained MLP on scikit-learn's digits, then the shipped transformer: for each block, linear
stand-ins fitted on a training split and scored on held-out data and in use. Tables and maps
show themselves in the notebook.

Sizes: a 64-32-32-10 MLP trained 8 epochs (batch 128) on 1,258 digits, 539 held out; the zoo's
2-layer transformer (d 32) trained 2 epochs on its repeat-token task, its maps fitted on 512
sequences and scored on 512 others (`backlens abstract --arch transformer` uses them all).
"""),
    code("""
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
import matplotlib.pyplot as plt

import backlens

torch.manual_seed(0)
torch.set_num_threads(1)  # small models: one thread is fastest, and fair to a shared machine
digits = load_digits()
x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
y = torch.tensor(digits.target)
order = torch.randperm(len(x))
train_idx, test_idx = order[:1258], order[1258:]
train = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=128, shuffle=True)
test = DataLoader(TensorDataset(x[test_idx], y[test_idx]), batch_size=256)
model = backlens.build_mlp([64, 32, 32, 10], "relu", seed=0)   # 0 Linear, 1 ReLU, 2 Linear, 3 ReLU, 4 Linear
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(8):
    for xb, yb in train:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    print("test accuracy", (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item())
"""),
    md("## The block 0:2 (Linear → ReLU → Linear), every method, both directions"),
    code("""
block = backlens.Block(model, "0", "2")
fit_loader = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=256)
rows = backlens.compare(model, block, fit_loader, test, loss="ce", show_progress=False,
                        methods=["ridge", "expected-mask", "mean-jacobian", "weights-only", "identity"])
rows
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for ax, direction in zip(axes, ("forward", "backward")):
    scored = [r for r in rows if r.direction == direction and r.test_rel_error is not None and r.method != "intact"]
    ax.bar([r.method for r in scored], [r.test_rel_error for r in scored])
    ax.set(title=f"{direction} maps", ylabel="held-out relative error")
    ax.tick_params(axis="x", rotation=30)
plt.tight_layout(); plt.show()
"""),
    md("A fitted map, and the streamed statistics it came from:"),
    code("""
col = backlens.collect(model, block, fit_loader, direction="both", loss="ce", show_progress=False)
lm = backlens.fit_method("ridge", block, col, "backward")
lm
"""),
    code("col.backward"),
    md("""
## The shipped transformer
Each encoder layer as a block; activations (n, T, d) with one map shared across positions.
"""),
    code("""
from backlens.workflows.zoo import ARCHITECTURES, build, loaders, train_arch, zoo_data

data = zoo_data("transformer", seed=0)
tf = build("transformer", seed=0)
train_arch("transformer", tf, data, epochs=2, seed=0)
tf_train, tf_test = (list(part)[:2] for part in loaders(data, batch_size=256, seed=0))  # 2 batches each
ARCHITECTURES["transformer"].blocks
"""),
    code("""
tf_rows = backlens.CompareRows()
for path in ARCHITECTURES["transformer"].blocks:
    tf_rows += backlens.compare(tf, backlens.Block(tf, path), tf_train, tf_test, loss="ce",
                                show_progress=False, methods=["ridge", "identity"])
tf_rows
"""),
]

TRAINING = [
    md("""
# Training through a linear backward

One model per backward method from the same initialisation: backprop (bp), feedback alignment
(fa), direct feedback alignment (dfa) and the expected-mask map; shadow mode measures the angle
between each method's update and true backprop's, layer by layer.

Sizes: a 64-32-10 MLP on digits, 3 epochs, batch 128, Adam at lr 0.01, one seed (`backlens train` does the same
at any size, with mean ± std over seeds).
"""),
    code("""
import io, tempfile
from pathlib import Path
from IPython.display import Image, display
from rich.console import Console

from backlens.workflows.train_backward import TrainOptions, run_train
from backlens.workflows.train_backward_report import plot_alignment, plot_learning_curves, print_summary

options = TrainOptions(data="digits", layers="64,32,10", backward="bp,fa,dfa,expected-mask", epochs=3, batch_size=128, lr=1e-2, shadow=True)
results = run_train(options, console=Console(file=io.StringIO()))
print_summary(Console(force_jupyter=True), results)  # the command's own table
"""),
    md("## Learning curves"),
    code("""
plots = Path(tempfile.mkdtemp())
display(Image(filename=plot_learning_curves(results, plots / "learning_curves.png")))
"""),
    md("## Alignment with the true gradient (0° = backprop)"),
    code('display(Image(filename=plot_alignment(results, plots / "alignment.png")))'),
    code("""
{r["method"]: round(r["final"]["test_metric"], 3) for r in results["runs"]}
"""),
]

NOTEBOOKS = {"seed": SEED, "blocks": BLOCKS, "training": TRAINING}


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a kernel of this Python (the project's venv); a cell error raises."""
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


def build(name: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    execute(nb, EXAMPLES)
    path = EXAMPLES / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def main(names: list[str]) -> int:
    for name in names or list(NOTEBOOKS):
        if name not in NOTEBOOKS:
            print(f"unknown notebook {name!r}: one of {', '.join(NOTEBOOKS)}")
            return 2
        print(f"wrote {build(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
