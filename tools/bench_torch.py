#!/usr/bin/env python3
"""PyTorch peer of `selfish bench`: the same model, loss and optimizer, the same figures.

What it measures, in float32 on one device (CPU or CUDA):

* matmul: `torch.matmul` GFLOP/s (2*m*n*k / time, median of several runs after a warm-up)
  for the shapes `selfish bench` times, under the same names: the forward, input-gradient
  (dx) and weight-gradient (dW) products of the paper config (B*T = 768 rows), plus square
  1024/2048/4096 (a size is skipped when one run is estimated to exceed --max-seconds).
  Layouts: `A·Bᵀ` is `a @ b.T` with b stored [n, k]; `A·B` is `a @ b`; `Aᵀ·B` is `a.T @ b`
  with a stored [k, m]. TF32 is off unless --tf32.
* training step: nanoGPT's GPT (bias=False, dropout 0, tied head, exact GELU), one step =
  zero_grad + forward + loss + backward + clip_grad_norm_(1.0) + AdamW.step, on a fresh
  random batch of token ids each step (made up front, so not timed). Configs `paper`
  (vocab 130, block 64, 4 layers, 4 heads, C 128, batch 12) and `large` (vocab 130,
  block 256, 6 layers, 6 heads, C 384, batch 64). Losses `plain` (mean cross-entropy) and
  `margin:M` (threshold loss: logits below l_target - M are set to -inf before the
  softmax, so they get no gradient). Warm-up steps are not timed; the report gives the
  median step time and tokens/s = B*T / median.
* memory: peak `torch.cuda.max_memory_allocated()` per config on CUDA (null on CPU), and
  the analytic sum of parameters, gradients and AdamW state (2x parameters).

Run it alone:

    python3 tools/bench_torch.py                      # all sections, human-readable
    python3 tools/bench_torch.py --steps 5 --configs paper --json
    python3 tools/bench_torch.py --check              # sanity checks of model and loss

Side by side with selfish, in one run (selfish first, then PyTorch right after it):

    python3 tools/bench_torch.py --selfish-cmd "target/release/selfish bench --json"

or against a saved `selfish bench --json` output:

    python3 tools/bench_torch.py --selfish selfish.json

Both tools print the same JSON shape (--json); the side-by-side table pairs matmul shapes
by name (selfish's fastest variant per name) and training steps by (config, loss). Unless
--configs / --losses are given, the side-by-side mode measures the configs and losses that
the selfish output holds. Progress goes to stderr, so stdout holds only the report.
"""

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "paper": dict(vocab=130, block=64, n_layer=4, n_head=4, n_embd=128, batch=12),
    "large": dict(vocab=130, block=256, n_layer=6, n_head=6, n_embd=384, batch=64),
}
PAPER_PARAMS = 812_416  # selfish's parameter count for the paper config

# (name, m, n, k, layout): C[m, n] = A[m, k] . B[k, n]; the same list as `selfish bench`.
MATMULS = [
    ("c_attn fwd", 768, 384, 128, "A·Bᵀ"),
    ("attn proj fwd", 768, 128, 128, "A·Bᵀ"),
    ("c_fc fwd", 768, 512, 128, "A·Bᵀ"),
    ("mlp proj fwd", 768, 128, 512, "A·Bᵀ"),
    ("head fwd", 768, 130, 128, "A·Bᵀ"),
    ("c_attn dx", 768, 128, 384, "A·B"),
    ("c_fc dx", 768, 128, 512, "A·B"),
    ("mlp proj dx", 768, 512, 128, "A·B"),
    ("head dx", 768, 128, 130, "A·B"),
    ("c_attn dW", 384, 128, 768, "Aᵀ·B"),
    ("c_fc dW", 512, 128, 768, "Aᵀ·B"),
    ("mlp proj dW", 128, 512, 768, "Aᵀ·B"),
    ("head dW", 130, 128, 768, "Aᵀ·B"),
]
SQUARES = [1024, 2048, 4096]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, attention):
        super().__init__()
        c = cfg["n_embd"]
        self.n_head = cfg["n_head"]
        self.attention = attention
        self.c_attn = nn.Linear(c, 3 * c, bias=False)
        self.c_proj = nn.Linear(c, c, bias=False)
        block = cfg["block"]
        self.register_buffer(
            "causal", torch.tril(torch.ones(block, block, dtype=torch.bool)), persistent=False
        )

    def forward(self, x):
        b, t, c = x.shape
        hd = c // self.n_head
        q, k, v = self.c_attn(x).split(c, dim=2)
        # [B, T, C] -> [B, heads, T, hd]
        q, k, v = (z.view(b, t, self.n_head, hd).transpose(1, 2) for z in (q, k, v))
        if self.attention == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # manual: explicit scores, causal mask, softmax (what selfish does)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(~self.causal[:t, :t], float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = cfg["n_embd"]
        self.c_fc = nn.Linear(c, 4 * c, bias=False)
        self.c_proj = nn.Linear(4 * c, c, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, cfg, attention):
        super().__init__()
        c = cfg["n_embd"]
        self.ln_1 = nn.LayerNorm(c, eps=1e-5, bias=False)
        self.attn = CausalSelfAttention(cfg, attention)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg, attention):
        super().__init__()
        c = cfg["n_embd"]
        self.wte = nn.Embedding(cfg["vocab"], c)
        self.wpe = nn.Embedding(cfg["block"], c)
        self.blocks = nn.ModuleList(Block(cfg, attention) for _ in range(cfg["n_layer"]))
        self.ln_f = nn.LayerNorm(c, eps=1e-5, bias=False)
        # N(0, 0.02) everywhere, N(0, 0.02 / sqrt(2 n_layer)) for the residual projections;
        # LayerNorm weights keep their initial 1.
        proj_std = 0.02 / math.sqrt(2 * cfg["n_layer"])
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx):
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied head: [B, T, vocab]


def n_params(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied wte once


# ----------------------------------------------------------------------------- loss


def parse_loss(name):
    """'plain' -> None; 'margin:M' -> M (float). Returns (canonical name, margin)."""
    if name == "plain":
        return "plain", None
    if name.startswith("margin:"):
        m = float(name.split(":", 1)[1])
        return f"margin:{m:g}", m
    raise SystemExit(f"unknown loss {name!r} (plain or margin:M)")


def threshold_cross_entropy(logits, targets, margin):
    """Mean cross-entropy over rows; with a margin, logits below l_target - margin are -inf.

    logits [N, V], targets [N]. The target logit is never masked (margin >= 0), so every row
    keeps a finite loss; masked_fill passes zero gradient to the masked entries.
    """
    if margin is not None:
        lt = logits.gather(1, targets[:, None])
        logits = logits.masked_fill(logits < lt - margin, float("-inf"))
    return F.cross_entropy(logits, targets)


# ------------------------------------------------------------------------ optimizer


def make_optimizer(model, fused):
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matmul weights, wte, wpe
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # LayerNorm weights
    groups = [
        {"params": decay, "weight_decay": 0.1},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kw = {"fused": True} if fused else {}
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, **kw)


def adamw_impl(params, fused):
    """The AdamW implementation PyTorch picks by default for these parameters."""
    if fused:
        return "fused"
    try:
        from torch.optim.optimizer import _default_to_fused_or_foreach

        _, foreach = _default_to_fused_or_foreach(list(params), False, False)
        return "foreach" if foreach else "for-loop"
    except Exception:  # private helper moved: fall back to its documented rule
        return "foreach" if next(iter(params)).is_cuda else "for-loop"


# ------------------------------------------------------------------------- devices


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- matmul


def bench_matmul(m, n, k, layout, device, min_total=0.2):
    """Times one float32 product; returns (median ms, min ms, products timed)."""
    g = torch.Generator().manual_seed(0)
    shape_a = (k, m) if layout == "Aᵀ·B" else (m, k)
    shape_b = (n, k) if layout == "A·Bᵀ" else (k, n)
    a = torch.randn(shape_a, generator=g).to(device)
    b = torch.randn(shape_b, generator=g).to(device)
    c = torch.empty(m, n, device=device)
    lhs = a.t() if layout == "Aᵀ·B" else a
    rhs = b.t() if layout == "A·Bᵀ" else b

    def sample(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(lhs, rhs, out=c)
        sync(device)
        return (time.perf_counter() - t0) / reps

    sample(1)  # warm-up (allocation, kernel selection)
    # Repeat short products inside one sample so each sample lasts >= ~1 ms (launch and
    # timer overhead stay small), then take samples until min_total s and >= 3 samples.
    reps = max(1, min(1000, int(1e-3 / max(sample(1), 1e-7))))
    times, spent = [], 0.0
    while len(times) < 3 or (spent < min_total and len(times) < 200):
        t = sample(reps)
        times.append(t)
        spent += t * reps
    return statistics.median(times) * 1e3, min(times) * 1e3, len(times) * reps


def run_matmuls(device, max_seconds):
    results, skipped = [], []
    for name, m, n, k, layout in MATMULS:
        log(f"matmul {name} {m}x{n}x{k}")
        ms, best, runs = bench_matmul(m, n, k, layout, device)
        results.append(matmul_entry(name, m, n, k, layout, ms, best, runs))
    prev = None  # (size, seconds per run)
    for s in SQUARES:
        name = f"square {s}"
        if prev is not None:
            est = prev[1] * (s / prev[0]) ** 3
            if est > max_seconds:
                skipped.append(f"{name}: estimated {est:.1f} s > --max-seconds {max_seconds:g}")
                log(f"skip {skipped[-1]}")
                prev = (s, est)
                continue
        log(f"matmul {name}")
        ms, best, runs = bench_matmul(s, s, s, "A·B", device)
        results.append(matmul_entry(name, s, s, s, "A·B", ms, best, runs))
        prev = (s, ms / 1e3)
    return results, skipped


def matmul_entry(name, m, n, k, layout, ms, best, runs):
    return {
        "name": name, "m": m, "n": n, "k": k, "layout": layout, "variant": "torch",
        "ms": ms, "gflops": 2.0 * m * n * k / (ms * 1e-3) / 1e9, "min_ms": best, "runs": runs,
    }


# --------------------------------------------------------------------- train steps


def make_batches(cfg, count, seed, device):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, cfg["vocab"], (count, cfg["batch"], cfg["block"] + 1), generator=g)
    data = data.to(device)
    return [(d[:, :-1], d[:, 1:].reshape(-1)) for d in data]


def bench_steps(cname, loss_name, margin, args, device):
    cfg = CONFIGS[cname]
    torch.manual_seed(args.seed)
    model = GPT(cfg, args.attention).to(device)
    opt = make_optimizer(model, args.fused_adamw)
    params = [p for g in opt.param_groups for p in g["params"]]
    batches = make_batches(cfg, args.warmup + args.steps, args.seed, device)
    v = cfg["vocab"]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = threshold_cross_entropy(logits.view(-1, v), y, margin)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    # Wall time is what is reported; process CPU time (all threads) is kept alongside, as on
    # a shared machine a wall time far above cpu_ms / threads means the process waited.
    losses, times, cpu = [], [], []
    for i, (x, y) in enumerate(batches):
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        loss = step(x, y)
        sync(device)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            times.append(dt)
            cpu.append(dc)
        losses.append(loss.detach())
    losses = [float(l) for l in losses]
    if not all(math.isfinite(l) for l in losses):
        raise SystemExit(f"{cname} {loss_name}: non-finite loss {losses}")
    tokens = cfg["batch"] * cfg["block"]
    med = statistics.median(times)
    entry = {
        "config": cname, "loss": loss_name, "batch": cfg["batch"], "block": cfg["block"],
        "tokens_per_step": tokens, "median_ms": med * 1e3, "tokens_per_s": tokens / med,
        "timed_steps": len(times), "min_ms": min(times) * 1e3,
        "cpu_ms": statistics.median(cpu) * 1e3,
        "loss_first": losses[0], "loss_last": losses[-1],
    }
    return entry, n_params(model), adamw_impl(params, args.fused_adamw)


def run_steps(configs, losses, args, device):
    steps, memory, impl = [], [], None
    for cname in configs:
        peak = None
        count = None
        for lname in losses:
            canon, margin = parse_loss(lname)
            log(f"steps {cname} {canon}: {args.warmup} warm-up + {args.steps} timed")
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            entry, count, impl = bench_steps(cname, canon, margin, args, device)
            steps.append(entry)
            if device.type == "cuda":
                peak = max(peak or 0, torch.cuda.max_memory_allocated(device))
        p = 4 * count  # float32 bytes
        memory.append({
            "config": cname, "params": count, "peak_bytes": peak, "params_bytes": p,
            "grads_bytes": p, "optimizer_bytes": 2 * p, "activations_bytes": None,
            "analytic_bytes": 4 * p,
        })
    return steps, memory, impl


# ---------------------------------------------------------------------------- check


def run_check(args, device):
    """Sanity checks of the model and the threshold loss; raises on failure."""
    cfg = CONFIGS["paper"]
    torch.manual_seed(args.seed)
    model = GPT(cfg, "manual").to(device)
    count = n_params(model)
    ok = count == PAPER_PARAMS
    print(f"{'ok  ' if ok else 'FAIL'} paper parameters {count:,} (selfish: {PAPER_PARAMS:,})")
    failures = 0 if ok else 1

    x, y = make_batches(cfg, 1, args.seed, device)[0]
    with torch.no_grad():
        manual = model(x)
        for blk in model.blocks:
            blk.attn.attention = "sdpa"
        sdpa = model(x)
    diff = (manual - sdpa).abs().max().item()
    ok = diff < 1e-4
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} manual vs sdpa attention: max |diff| {diff:.2e}")

    # Random logits with unit-scale spread (the init's are ~0.2), so margins mask a good share.
    g = torch.Generator().manual_seed(args.seed)
    base = (2 * torch.randn(manual.shape[0] * manual.shape[1], cfg["vocab"], generator=g)).to(device)

    def loss_and_grad(margin):
        lg = base.clone().requires_grad_(True)
        loss = threshold_cross_entropy(lg, y, margin)
        loss.backward()
        return loss.detach(), lg.grad

    plain, g_plain = loss_and_grad(None)
    huge, g_huge = loss_and_grad(1e30)
    ok = torch.equal(plain, huge) and torch.equal(g_plain, g_huge)
    failures += not ok
    print(f"{'ok  ' if ok else 'FAIL'} margin 1e30 == plain: loss {huge.item():.6f} vs "
          f"{plain.item():.6f}, gradients equal: {torch.equal(g_plain, g_huge)}")

    for margin in (1.0, 3.0):
        loss, grad = loss_and_grad(margin)
        lt = base.gather(1, y[:, None])
        masked = base < lt - margin
        frac = masked.float().mean().item()
        zero = bool((grad[masked] == 0).all()) and bool((grad[~masked] != 0).any())
        # Independent float64 reference, row by row: logsumexp over kept logits - l_t.
        ref_rows = []
        bn, yn = base.cpu().double().numpy(), y.cpu().numpy()
        for row, t in zip(bn, yn):
            kept = row[row >= np.float64(np.float32(row[t]) - np.float32(margin))]
            top = kept.max()
            ref_rows.append(top + math.log(np.exp(kept - top).sum()) - row[t])
        ref = float(np.mean(ref_rows))
        err = abs(loss.item() - ref)
        ok = zero and 0 < frac < 1 and err < 1e-4 * max(1.0, abs(ref)) and loss < plain
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} margin {margin:g}: {frac:.1%} of logits masked, "
              f"masked gradients all zero: {zero}, loss {loss.item():.6f} vs float64 "
              f"reference {ref:.6f} (plain {plain.item():.6f})")
    if failures:
        raise SystemExit(f"{failures} check(s) failed")
    print("all checks passed")


# --------------------------------------------------------------------------- output


def table(headers, rows, left=1):
    """Plain-text table: the first `left` columns left-aligned, the rest right-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    return "\n".join(lines + [fmt(r) for r in rows])


def mib(b):
    return "-" if b is None else f"{b / 2**20:.2f}"


def num(x, spec):
    return "-" if x is None else format(x, spec)


def print_report(r):
    s = r["settings"]
    print(f"PyTorch {s['torch']} peer benchmark: {r['backend']} ({r['device']}), "
          f"{r['threads']} threads, float32")
    tf32 = "n/a" if s["tf32"] is None else s["tf32"]
    print(f"attention {s['attention']}, AdamW {s['adamw']}, tf32 {tf32}, "
          f"load average {s['loadavg_start']} -> {s['loadavg_end']}")
    if r["matmul"]:
        print("\nmatmul (torch.matmul, median ms per product)")
        print(table(["name", "m x n x k", "layout", "ms", "min ms", "GFLOP/s", "runs"],
                    [[e["name"], f"{e['m']}x{e['n']}x{e['k']}", e["layout"],
                      f"{e['ms']:.4f}", f"{e['min_ms']:.4f}", f"{e['gflops']:.1f}", e["runs"]]
                     for e in r["matmul"]],
                    left=3))
    for line in r["skipped"]:
        print(f"skipped: {line}")
    if r["steps"]:
        print(f"\ntraining step (zero_grad + forward + loss + backward + clip + AdamW), "
              f"median of timed steps after {s['warmup']} warm-up")
        print(table(["config", "loss", "params", "B", "T", "median ms", "min ms", "cpu ms",
                     "tokens/s", "steps", "loss first -> last"],
                    [[e["config"], e["loss"], f"{params_of(r, e['config']):,}", e["batch"],
                      e["block"], f"{e['median_ms']:.2f}", f"{e['min_ms']:.2f}",
                      f"{e['cpu_ms']:.2f}",
                      f"{e['tokens_per_s']:.0f}", e["timed_steps"],
                      f"{e['loss_first']:.4f} -> {e['loss_last']:.4f}"] for e in r["steps"]],
                    left=2))
        print("\nmemory (MiB; analytic = params + grads + AdamW state)")
        print(table(["config", "params", "grads", "AdamW", "analytic", "peak allocated"],
                    [[m["config"], mib(m["params_bytes"]), mib(m["grads_bytes"]),
                      mib(m["optimizer_bytes"]), mib(m["analytic_bytes"]),
                      mib(m["peak_bytes"])] for m in r["memory"]]))


def params_of(r, config):
    return next(m["params"] for m in r["memory"] if m["config"] == config)


def compare(selfish, torch_r):
    """Pairs selfish's and PyTorch's figures: matmul by name, steps by (config, loss)."""
    best = {}
    for e in selfish.get("matmul") or []:
        if e.get("gflops") is not None and (
                e["name"] not in best or e["gflops"] > best[e["name"]]["gflops"]):
            best[e["name"]] = e
    matmul = []
    for t in torch_r["matmul"]:
        s = best.get(t["name"])
        if s is None:
            continue
        same = (s.get("m"), s.get("n"), s.get("k")) == (t["m"], t["n"], t["k"])
        matmul.append({
            "name": t["name"], "m": t["m"], "n": t["n"], "k": t["k"], "same_shape": same,
            "selfish_variant": s.get("variant"), "selfish_gflops": s["gflops"],
            "pytorch_gflops": t["gflops"], "ratio_selfish_over_pytorch": s["gflops"] / t["gflops"],
        })
    s_steps = {(e["config"], e["loss"]): e for e in selfish.get("steps") or []}
    steps = []
    for t in torch_r["steps"]:
        s = s_steps.get((t["config"], t["loss"]))
        if s is None or s.get("median_ms") is None:
            continue
        steps.append({
            "config": t["config"], "loss": t["loss"],
            "same_tokens": s.get("tokens_per_step") == t["tokens_per_step"],
            "selfish_ms": s["median_ms"], "pytorch_ms": t["median_ms"],
            "ratio_selfish_over_pytorch": s["median_ms"] / t["median_ms"],
            "selfish_tokens_per_s": s.get("tokens_per_s"),
            "pytorch_tokens_per_s": t["tokens_per_s"],
        })
    s_mem = {m["config"]: m for m in selfish.get("memory") or []}
    memory = []
    for t in torch_r["memory"]:
        s = s_mem.get(t["config"])
        if s is None:
            continue
        memory.append({"config": t["config"], "selfish": s, "pytorch": t})
    only = sorted(set(best) - {t["name"] for t in torch_r["matmul"]}) if torch_r["matmul"] else []
    only += [f"{c} {l}" for c, l in sorted(set(s_steps) - {(t["config"], t["loss"])
                                                            for t in torch_r["steps"]})]
    return {"matmul": matmul, "steps": steps, "memory": memory, "only_in_selfish": only}


def print_comparison(selfish, torch_r, cmp):
    def who(r):
        return f"{r.get('backend')} ({r.get('device')}), {r.get('threads')} threads"

    print(f"selfish: {who(selfish)}, settings {json.dumps(selfish.get('settings', {}))}")
    print(f"pytorch: {who(torch_r)}, settings {json.dumps(torch_r['settings'])}")
    if cmp["matmul"]:
        print("\nmatmul GFLOP/s (selfish: fastest variant per name; ratio > 1: selfish faster)")
        print(table(["name", "m x n x k", "selfish variant", "selfish", "pytorch",
                     "selfish/pytorch"],
                    [[e["name"], f"{e['m']}x{e['n']}x{e['k']}" + ("" if e["same_shape"] else " !"),
                      e["selfish_variant"], f"{e['selfish_gflops']:.1f}",
                      f"{e['pytorch_gflops']:.1f}", f"{e['ratio_selfish_over_pytorch']:.3f}"]
                     for e in cmp["matmul"]], left=3))
    if cmp["steps"]:
        print("\ntraining step median ms (ratio > 1: selfish slower)")
        print(table(["config", "loss", "selfish ms", "pytorch ms", "selfish/pytorch",
                     "selfish tok/s", "pytorch tok/s"],
                    [[e["config"], e["loss"] + ("" if e["same_tokens"] else " !"),
                      f"{e['selfish_ms']:.2f}", f"{e['pytorch_ms']:.2f}",
                      f"{e['ratio_selfish_over_pytorch']:.2f}",
                      num(e["selfish_tokens_per_s"], ".0f"),
                      f"{e['pytorch_tokens_per_s']:.0f}"] for e in cmp["steps"]], left=2))
    if cmp["memory"]:
        print("\nmemory MiB (analytic = params + grads + optimizer state)")
        rows = []
        for e in cmp["memory"]:
            s, t = e["selfish"], e["pytorch"]
            s_an = sum(s.get(k) or 0 for k in ("params_bytes", "grads_bytes", "optimizer_bytes"))
            rows.append([e["config"], mib(s_an or None), mib(t["analytic_bytes"]),
                         mib(s.get("peak_bytes")), mib(t["peak_bytes"])])
        print(table(["config", "selfish analytic", "pytorch analytic", "selfish peak",
                     "pytorch peak"], rows))
    if any(not e["same_shape"] for e in cmp["matmul"]) or any(
            not e["same_tokens"] for e in cmp["steps"]):
        print("\n! shapes or tokens per step differ between the two tools")
    for line in selfish.get("skipped") or []:
        print(f"selfish skipped: {line}")
    for line in torch_r["skipped"]:
        print(f"pytorch skipped: {line}")
    if cmp["only_in_selfish"]:
        print(f"only in selfish: {', '.join(cmp['only_in_selfish'])}")


# ----------------------------------------------------------------------------- main


def load_selfish(args):
    if args.selfish:
        with open(args.selfish) as f:
            return json.load(f)
    cmd = shlex.split(args.selfish_cmd)
    log(f"running selfish: {args.selfish_cmd}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
    log(f"selfish finished in {time.perf_counter() - t0:.1f} s (exit {proc.returncode})")
    if proc.returncode != 0:
        raise SystemExit(f"selfish command failed with exit status {proc.returncode}")
    out = proc.stdout
    try:
        return json.loads(out)
    except json.JSONDecodeError:  # tolerate stray lines around the object
        i, j = out.find("{"), out.rfind("}")
        if i < 0 or j < i:
            raise SystemExit(f"no JSON object in selfish's stdout:\n{out[:2000]}")
        return json.loads(out[i:j + 1])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--configs", help="comma list of paper,large (default: both, or "
                   "those in the selfish output)")
    p.add_argument("--losses", help="comma list of plain, margin:M (default: plain,margin:1, "
                   "or those in the selfish output)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--attention", choices=["manual", "sdpa"], default="sdpa",
                   help="manual: matmul + masked softmax (as selfish); sdpa: "
                   "F.scaled_dot_product_attention (default)")
    p.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    p.add_argument("--no-matmul", action="store_true", help="skip the matmul section")
    p.add_argument("--no-steps", action="store_true", help="skip training steps and memory")
    p.add_argument("--max-seconds", type=float, default=10.0,
                   help="skip a square matmul estimated to take longer per run (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument("--check", action="store_true",
                   help="run sanity checks of model and threshold loss, then exit")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--selfish", metavar="JSON_FILE", help="`selfish bench --json` output "
                   "to compare against")
    g.add_argument("--selfish-cmd", metavar="CMD", help='run this first, e.g. '
                   '"target/release/selfish bench --json", and compare against its stdout')
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")

    if args.check:
        run_check(args, device)
        return

    selfish = load_selfish(args) if (args.selfish or args.selfish_cmd) else None

    def pick(explicit, key, default):
        if explicit:
            return [x.strip() for x in explicit.split(",") if x.strip()]
        if selfish is not None:
            names = list(dict.fromkeys(e.get(key) for e in selfish.get("steps") or []))
            if names:
                return names
        return default

    configs = pick(args.configs, "config", list(CONFIGS))
    losses = pick(args.losses, "loss", ["plain", "margin:1"])
    if selfish is not None and not args.configs:
        configs = [c for c in configs if c in CONFIGS]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r} ({', '.join(CONFIGS)})")
    for l in losses:
        parse_loss(l)

    load_start = loadavg()
    matmul, skipped = ([], []) if args.no_matmul else run_matmuls(device, args.max_seconds)
    steps, memory, impl = ([], [], None) if args.no_steps else run_steps(
        configs, losses, args, device)
    if impl is None:
        impl = "fused" if args.fused_adamw else ("foreach" if device.type == "cuda"
                                                 else "for-loop")
    result = {
        "tool": "pytorch",
        "device": device_name(device),
        "backend": device.type,
        "threads": torch.get_num_threads(),
        "settings": {
            "tf32": bool(args.tf32) if device.type == "cuda" else None,
            "attention": args.attention,
            "adamw": impl,
            "adamw_choice": "explicit --fused-adamw" if args.fused_adamw else "pytorch default",
            "torch": torch.__version__.split("+")[0],
            "torch_build": torch.__version__,
            "dtype": "float32",
            "warmup": args.warmup,
            "seed": args.seed,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "cpu_count": os.cpu_count(),
        },
        "matmul": matmul,
        "steps": steps,
        "memory": memory,
        "skipped": skipped,
    }

    if selfish is None:
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print_report(result)
        return
    cmp = compare(selfish, result)
    if args.json:
        print(json.dumps({"tool": "comparison", "selfish": selfish, "pytorch": result,
                          **cmp}, indent=1))
    else:
        print_comparison(selfish, result, cmp)


if __name__ == "__main__":
    main()
