"""Plain PyTorch, as most tutorials write it: ``TensorDataset`` + ``DataLoader(shuffle=True)``,
``nn.Sequential``, ``torch.optim.SGD`` with ``weight_decay`` on the weight matrices, an
``ExponentialLR`` scheduler stepped every batch, and ``AveragedModel`` for the moving average.

Where PyTorch forces a difference from the TensorFlow program:
- ``AveragedModel`` copies the weights on its first update instead of averaging them with the
  initial ones (TF: ``0.1 * initial + 0.9 * weights``); from the second update on, the custom
  ``avg_fn`` below applies TF's ``min(0.99, (1+n)/(10+n))`` exactly.
- ``weight_decay=l2`` adds ``l2 * w`` to the gradient: the gradient of TF's
  ``l2 * sum(w**2) / 2``; the loss it reports is the cross-entropy alone.
- the scheduler multiplies the rate by ``decay ** (1 / decay_steps)`` each step (chained, in
  double precision) instead of computing ``decay ** (step / decay_steps)``.
"""

from __future__ import annotations

from typing import Any

from ports.common import Clock, Data, Program, ema_decay, result


def run(
    program: Program, data: Data, steps: int, seed: int, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.optim.lr_scheduler import ExponentialLR
    from torch.optim.swa_utils import AveragedModel
    from torch.utils.data import DataLoader, TensorDataset

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sizes = [784, *program.hidden, 10]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, program.init_std)
            nn.init.constant_(m.bias, program.bias_init)
    model.to(device)

    weights = [p for p in model.parameters() if p.ndim == 2]
    biases = [p for p in model.parameters() if p.ndim == 1]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": program.l2}, {"params": biases, "weight_decay": 0.0}],
        lr=program.lr,
    )
    scheduler = ExponentialLR(optimizer, gamma=program.lr_decay ** (1 / data.decay_steps))
    averaged = None
    if program.ema:

        def tf_rule(avg: torch.Tensor, param: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = ema_decay(int(n), program.ema)
            return d * avg + (1 - d) * param

        averaged = AveragedModel(model, avg_fn=tf_rule)
    evaluated = averaged if averaged is not None else model

    loader = DataLoader(
        TensorDataset(torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)),
        batch_size=program.batch_size,
        shuffle=True,
    )

    def accuracy(x: Any, y: Any) -> float:
        evaluated.eval()
        with torch.no_grad():
            out = evaluated(torch.from_numpy(x).to(device)).argmax(1).cpu()
        evaluated.train()
        return (out == torch.from_numpy(y)).float().mean().item()

    step, val_acc, loss = 0, None, None
    clock = Clock()
    while step < steps:
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # a no-op on the CPU
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            step += 1
            if step % program.eval_every == 0 or step == steps:
                val_acc = accuracy(data.val_x, data.val_y)
            if step == steps:
                break
    if device != "cpu":
        torch.cuda.synchronize()  # the clock stops when the GPU is done, not when Python is
    seconds = clock.seconds()
    return result(
        framework="pytorch",
        version=f"torch {torch.__version__}",
        program=program,
        steps=steps,
        seconds=seconds,
        test_accuracy=accuracy(data.test_x, data.test_y),
        validation_accuracy=val_acc,
        final_loss=None if loss is None else loss.item(),
        device=device,
        threads=str(torch.get_num_threads()),
    )
