"""A lane-by-lane Python model of csrc/causal_conv1d's backward kernel (runs, shuffles, right-aligned taps), checked
against autograd of the reference on random cases; small warps and blocks so that every edge is reached. A design
aid for changes to the kernel's indexing on a machine without a GPU (not collected by pytest):
    python -m tests.causal_conv1d.model_cuda_backward"""
import math, random
import torch
from ssm_kernels.causal_conv1d.reference import causal_conv1d_ref

KMAX = 8; H = KMAX - 1

def simulate(x, w, bias, init, seq, silu, RUN=8, WARP=4, THREADS=8):
    L = len(x); W = len(w); skip = KMAX - W
    wr = [0.0] * skip + list(w)
    def load_inputs(row, start, with_init):
        v = []
        for k in range(RUN):
            pos = start + k
            if 0 <= pos < L: v.append(row[pos])
            elif pos < 0 and pos >= 1 - W and with_init and init is not None: v.append(init[W - 1 + pos])
            else: v.append(0.0)
        return v
    def load_ids(start):
        return [seq[min(max(start + k, 0), L - 1)] for k in range(RUN)]
    def sigmoid(v): return 1 / (1 + math.exp(-v))
    def grad_pre(dy, pre): 
        if not silu: return dy
        s = sigmoid(pre); return dy * s * (1 + pre * (1 - s))
    def pre_act(win, idw, k):
        acc = bias
        for i in range(KMAX):
            if i >= skip and (seq is None or idw[k + i] == idw[k + H]): acc += wr[i] * win[k + i]
        return acc
    tile = THREADS * RUN
    nblocks = (L + tile - 1) // tile
    dx = [0.0] * L; dw_parts = []; db_parts = []; dinit = [0.0] * (W - 1)
    for blk in range(nblocks):
        starts = [blk * tile + t * RUN for t in range(THREADS)]
        runs = [load_inputs(x, s, True) for s in starts]
        dys = [load_inputs(dout, s, False) for s in starts]
        ids = [load_ids(s) if seq is not None else [0] * RUN for s in starts]
        windows, idws = [], []
        for t, s in enumerate(starts):
            lane = t % WARP
            if lane == 0:
                prev = load_inputs(x, s - RUN, True); prev_ids = load_ids(s - RUN) if seq is not None else [0] * RUN
            else:
                prev = runs[t - 1]; prev_ids = ids[t - 1]
            windows.append(prev[RUN - H:] + runs[t]); idws.append(prev_ids[RUN - H:] + ids[t])
        gs = [[grad_pre(dys[t][k], pre_act(windows[t], idws[t], k)) for k in range(RUN)] for t in range(THREADS)]
        bdw = [0.0] * KMAX; bdb = 0.0
        for t, s in enumerate(starts):
            lane = t % WARP
            if lane == WARP - 1:
                nx = load_inputs(x, s + RUN, True); ndy = load_inputs(dout, s + RUN, False)
                nids = load_ids(s + RUN) if seq is not None else [0] * RUN
                xw = windows[t][RUN:RUN + H] + nx[:H]; iw = idws[t][RUN:RUN + H] + nids[:H]
                g_after = [grad_pre(ndy[j], pre_act(xw, iw, j)) for j in range(H)]
                id_after = nids[:H]
            else:
                g_after = gs[t + 1][:H]; id_after = ids[t + 1][:H]
            g = gs[t]; win = windows[t]; idw = idws[t]
            for k in range(RUN):
                acc = 0.0
                for i in range(KMAX):
                    o = k + H - i
                    if i < skip: continue
                    go = g[o] if o < RUN else g_after[o - RUN]
                    if seq is not None:
                        id_o = idw[H + o] if o < RUN else id_after[o - RUN]
                        if id_o != idw[H + k]: continue
                    acc += wr[i] * go
                if s + k < L: dx[s + k] = acc
                bdb += g[k]
                for i in range(KMAX):
                    if i >= skip and (seq is None or idw[k + i] == idw[k + H]): bdw[i] += g[k] * win[k + i]
            if blk == 0 and t == 0:
                for j in range(H):
                    if j < W - 1:
                        a = 0.0
                        for o in range(H):
                            if o <= j and (seq is None or idw[H + o] == idw[H]): a += w[j - o] * g[o]
                        dinit[j] = a
        dw_parts.append(bdw[skip:]); db_parts.append(bdb)
    dwt = [sum(p[i] for p in dw_parts) for i in range(W)]
    return dx, dwt, sum(db_parts), dinit

torch.manual_seed(0); random.seed(0)
worst = 0
for trial in range(60):
    L = random.choice([1, 3, 7, 8, 9, 31, 32, 33, 64, 65, 100, 130])
    W = random.randint(1, 8); silu = random.random() < 0.7
    use_seq = random.random() < 0.5; use_init = random.random() < 0.5 and W > 1
    x = torch.randn(L, dtype=torch.float64); w = torch.randn(W, dtype=torch.float64); b = float(torch.randn(()))
    init = torch.randn(W - 1, dtype=torch.float64) if use_init else None
    seq = None
    if use_seq:
        cuts = sorted(random.sample(range(L + 1), min(2, L + 1)))
        seq = [sum(1 for c in cuts if p >= c) for p in range(L)]
    dout = torch.randn(L, dtype=torch.float64).tolist()
    dx, dw, db, dinit = simulate(x.tolist(), w.tolist(), b, None if init is None else init.tolist(), seq, silu)
    xr = x.clone().view(1, 1, L).requires_grad_(); wr_ = w.clone().view(1, W).requires_grad_()
    br = torch.tensor([b], dtype=torch.float64, requires_grad=True)
    ir = init.clone().view(1, 1, W - 1).requires_grad_() if init is not None else None
    si = torch.tensor(seq, dtype=torch.int32).view(1, L) if seq is not None else None
    y = causal_conv1d_ref(xr, wr_, br, "silu" if silu else None, seq_idx=si, initial_states=ir)
    ins = [xr, wr_, br] + ([ir] if ir is not None else [])
    grads = torch.autograd.grad(y, ins, torch.tensor(dout, dtype=torch.float64).view(1, 1, L))
    errs = [max(abs(a - b_) for a, b_ in zip(dx, grads[0].view(-1).tolist())),
            max(abs(a - b_) for a, b_ in zip(dw, grads[1].view(-1).tolist())), abs(db - grads[2].item())]
    if ir is not None:
        errs.append(max(abs(a - b_) for a, b_ in zip(dinit, grads[3].view(-1).tolist())))
    e = max(errs); worst = max(worst, e)
    if e > 1e-9: print("MISMATCH", dict(L=L, W=W, silu=silu, seq=seq is not None, init=use_init), errs)
print("trials done, worst abs error", worst)
