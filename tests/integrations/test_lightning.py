"""CSGCallback: the gate, its loss, projection and schedule inside a user's own LightningModule, and a run
directory `csg evaluate` reads."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("pytorch_lightning")

from csg.cli import main  # noqa: E402
from csg.data import load_dataset  # noqa: E402
from csg.integrations.lightning import CSGCallback  # noqa: E402


class TinyNet(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class LitTiny(pl.LightningModule):
    """A user's own module: nothing of csg in it."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyNet(width)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class GateWatch(pl.Callback):
    """Records the gate after every optimiser step (the projection has run by then)."""

    def __init__(self, csg: CSGCallback):
        self.csg, self.gates = csg, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.gates.append(self.csg.gate.weight.detach().clone())


def loader(tiny_idx_dir, split="train", n=80):
    ds = load_dataset("fashion-mnist", split, data_dir=str(tiny_idx_dir), subset=n, seed=0)
    data = torch.utils.data.TensorDataset(ds.images.float() / 255, ds.labels)
    return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True,
                                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("schedule", ["joint", "alternate"])
def test_callback_trains_the_gate_and_writes_a_run(tiny_idx_dir, tmp_path, schedule, capsys):
    torch.manual_seed(0)
    out = tmp_path / "run"
    csg = CSGCallback(feature_layer="net.features", head="net.fc", num_classes=10, out=out, data="fashion-mnist",
                      data_dir=str(tiny_idx_dir), test_subset=40, schedule=schedule, warmup=0, period=2,
                      csg_epochs=1)
    watch = GateWatch(csg)
    module = LitTiny()
    before = module.net.features[0].weight.detach().clone()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[csg, watch])
    trainer.fit(module, loader(tiny_idx_dir))
    assert len(watch.gates) == 10  # 80 images / 16 per batch x 2 epochs
    csg_steps = watch.gates if schedule == "joint" else watch.gates[5:]  # alternate, period 2: STD then CSG
    for g in csg_steps:
        # project_columns_: entries in [0, 1], every column's maximum exactly 1, so K <= ||G||_1 <= C*K
        assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0
        assert torch.allclose(g.max(dim=0).values, torch.ones(g.shape[1]))
        assert g.shape[1] <= float(g.sum()) <= g.numel()
    assert not torch.equal(csg_steps[-1], torch.full_like(csg_steps[-1], 0.5))  # the gate moved
    if schedule == "alternate":
        # the STD epoch leaves the gate at its initial value
        assert all(torch.equal(g, torch.full_like(g, 0.5)) for g in watch.gates[:5])
    assert not torch.equal(before, module.net.features[0].weight)

    for name in ("config.json", "checkpoint.safetensors", "log.jsonl", "gate.npy", "metrics.json"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and "l1_density" in log[-1] and "loss" in log[-1]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--no-progress"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_filters"] == 8 and metrics["num_samples"] == 40
    assert {"accuracy", "csg_accuracy", "l1_density", "mis"} <= set(metrics)
    assert metrics["l1_density"] == pytest.approx(float(csg.gate.weight.detach().mean()), abs=1e-6)
    if schedule == "joint":  # the rest of the pipeline reads it too
        assert main(["analyze", str(out)]) == 0
        assert main(["report", str(out)]) == 0 and (out / "report" / "index.html").is_file()


class FirstStepGrads(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch if batch_idx == 0 else getattr(self, "batch", batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not hasattr(self, "grads"):
            self.grads = [p.grad.detach().clone() for p in pl_module.parameters()]


@pytest.mark.parametrize("schedule", ["joint", "alternate"])
def test_step_gradient_is_the_csg_loss_of_the_phase(tiny_idx_dir, schedule):
    """Joint: d(CE_std + lambda1 CE_csg + lambda2 penalty); a CSG epoch: d(lambda1 CE_csg + lambda2 penalty)."""
    import copy

    torch.manual_seed(0)
    module = LitTiny()
    start = copy.deepcopy(module)
    csg = CSGCallback(feature_layer="net.features", head="net.fc", num_classes=10, schedule=schedule, warmup=0,
                      period=1, csg_epochs=1, rho=0.1, lambda2=0.5)
    grads = FirstStepGrads()
    backward_passes = []  # through the first layer: one per backward pass of the step
    module.net.features[0].register_full_backward_hook(lambda *_: backward_passes.append(1))
    pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[csg, grads]).fit(module, loader(tiny_idx_dir))
    assert len(backward_passes) == 1  # the CSG terms ride on Lightning's own backward, not a second one
    assert "training_step" not in vars(module)  # the wrapper is gone after fit: the user's class is untouched
    x, y = grads.batch
    a = start.net.features(x).mean(dim=(2, 3))
    gate = torch.full((10, 8), 0.5)
    loss = F.cross_entropy(start.net.fc(a * gate[y]), y) + 0.5 * torch.relu(gate.sum() - 0.1 * gate.numel())
    if schedule == "joint":
        loss = loss + F.cross_entropy(start(x), y)
    expected = torch.autograd.grad(loss, list(start.parameters()))
    for got, want in zip(grads.grads, expected):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


class Batches(pl.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not hasattr(self, "grads"):
            self.grads = [p.grad.detach().clone() for p in pl_module.parameters()]


def test_accumulated_micro_batches_scale_the_csg_terms_like_your_loss(tiny_idx_dir):
    """accumulate_grad_batches=2: the step's gradient is that of the mean of the two micro-batches' losses."""
    import copy

    torch.manual_seed(0)
    module = LitTiny()
    start = copy.deepcopy(module)
    csg = CSGCallback(feature_layer="net.features", head="net.fc", num_classes=10, warmup=0, rho=0.1, lambda2=0.5)
    seen = Batches()
    pl.Trainer(max_steps=1, accumulate_grad_batches=2, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               callbacks=[csg, seen]).fit(module, loader(tiny_idx_dir))
    gate = torch.full((10, 8), 0.5)
    total = 0.0
    for x, y in seen.batches[:2]:
        a = start.net.features(x).mean(dim=(2, 3))
        total = total + (F.cross_entropy(start(x), y) + F.cross_entropy(start.net.fc(a * gate[y]), y)
                         + 0.5 * torch.relu(gate.sum() - 0.1 * gate.numel())) / 2
    expected = torch.autograd.grad(total, list(start.parameters()))
    for got, want in zip(seen.grads, expected):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)
