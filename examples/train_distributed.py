"""Train a language model with its sequences split across ranks (context parallelism) and its parameters
sharded (FSDP2) or replicated (DDP), on CPUs (gloo) or GPUs (NCCL):

    torchrun --nproc-per-node 4 examples/train_distributed.py --cp 2 --architecture mamba2 --steps 200

The world of N ranks is a (N / cp) x cp grid: each row of cp ranks holds the same sequences, each rank one
contiguous part of their length (ssm_universal's cp_group), and the rows split the global batch. FSDP2 shards
the parameters over all N ranks, so one reduce-scatter both averages over the rows and sums the parts of a
sequence; each rank's loss is scaled to its share of the global mean accordingly.
Data: walks on a fixed random sparse Markov chain (a learnable next-token distribution of known entropy,
printed as the floor). --verify trains one undistributed replica on the same global batches alongside and
stops with an error when the losses differ; --checkpoint-dir saves model, optimiser and step count with
torch.distributed.checkpoint at the end, --resume loads them first and continues from that step (the same
batches an uninterrupted run would see). Every step prints `step N  loss X` on rank 0 with --print-every 1.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

import ssm_universal as su

SUCCESSORS = 4  # each token of the chain has this many possible successors


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", default="mamba", choices=["mamba", "mamba2", "s5"])
    parser.add_argument("--cp", type=int, default=2, help="ranks per sequence (context parallelism)")
    parser.add_argument("--parallel", default="fsdp", choices=["fsdp", "ddp"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--verify", action="store_true", help="check every loss against one undistributed replica")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=0, help="default: about ten lines per run")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda: one GPU per rank, NCCL; cpu: gloo")
    return parser.parse_args(argv)


def markov_chain(vocab: int, seed: int):
    """(successors (V, SUCCESSORS) int64, their probabilities (V, SUCCESSORS)) and the chain's entropy rate."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.stack([torch.randperm(vocab, generator=gen)[:SUCCESSORS] for _ in range(vocab)])
    probs = torch.softmax(2 * torch.randn(vocab, SUCCESSORS, generator=gen), dim=-1)
    entropy = -(probs * probs.log()).sum(-1).mean().item()  # uniform over states: close to the stationary one
    return successors, probs, entropy


def global_batch(chain, step: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """(batch, length + 1) token walks, the same on every rank for a given step."""
    successors, probs = chain
    gen = torch.Generator().manual_seed(seed * 100003 + step)
    tokens = torch.empty(batch, length + 1, dtype=torch.int64)
    tokens[:, 0] = torch.randint(0, successors.shape[0], (batch,), generator=gen)
    for t in range(length):
        pick = torch.multinomial(probs[tokens[:, t]], 1, generator=gen)[:, 0]
        tokens[:, t + 1] = successors[tokens[:, t], pick]
    return tokens


def shard_bounds(length: int, parts: int, index: int):
    """(start, end) of part `index` of `length` positions cut into `parts` contiguous, nearly equal parts."""
    base, extra = divmod(length, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def build_model(args, cp_group):
    torch.manual_seed(args.seed)  # the same initial parameters on every rank (and in the replica)
    return su.SSMLanguageModel(args.vocab, args.architecture, d_model=args.d_model, n_layer=args.n_layer,
                               cp_group=cp_group)


def main(argv=None) -> None:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world % args.cp:
        raise SystemExit(f"--cp {args.cp} must divide the number of ranks {world}")
    rows = world // args.cp
    if args.batch % rows:
        raise SystemExit(f"--batch {args.batch} must be a multiple of the number of sequence groups {rows}")
    grid = init_device_mesh(device.type, (rows, args.cp), mesh_dim_names=("dp", "cp"))
    row, part = rank // args.cp, rank % args.cp

    model = build_model(args, grid["cp"].get_group() if args.cp > 1 else None).to(device)
    if args.parallel == "fsdp":
        everyone = init_device_mesh(device.type, (world,))
        for block in model.backbone.layers:
            fully_shard(block, mesh=everyone)
        fully_shard(model, mesh=everyone)
        trained = model
    else:
        trained = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    first_step = 0
    if args.resume:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state, "step": torch.zeros((), dtype=torch.int64)}
        dcp.load(state, checkpoint_id=args.checkpoint_dir)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        first_step = int(state["step"])

    replica = build_model(args, None).to(device) if args.verify else None
    replica_optimizer = torch.optim.AdamW(replica.parameters(), lr=args.lr) if replica is not None else None
    if replica is not None and args.resume:
        raise SystemExit("--verify starts from the initial parameters: it cannot be combined with --resume")

    chain = markov_chain(args.vocab, args.seed)
    if rank == 0:
        print(f"{args.architecture}: {world} ranks = {rows} x {args.cp} (batch x sequence), {args.parallel}, "
              f"{device.type}; loss floor (chain entropy) {chain[2]:.3f}, uniform {math.log(args.vocab):.3f}",
              flush=True)
    per_row = args.batch // rows
    start, end = shard_bounds(args.length, args.cp, part)
    total = args.batch * args.length  # predicted tokens in the global batch
    for step in range(first_step, first_step + args.steps):
        tokens = global_batch(chain[:2], step, args.batch, args.length, args.seed)
        mine = tokens[row * per_row:(row + 1) * per_row]
        inputs, targets = mine[:, start:end].to(device), mine[:, start + 1:end + 1].to(device)
        logits = trained(inputs)
        local = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
        # FSDP / DDP average the gradients over the world: scale this rank's sum to its share of the mean
        (local * world / total).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = local.detach().clone()
        dist.all_reduce(loss)
        loss = loss.item() / total
        if replica is not None:
            expected = F.cross_entropy(replica(tokens[:, :-1].to(device)).flatten(0, 1).float(),
                                       tokens[:, 1:].flatten().to(device))
            expected.backward()
            replica_optimizer.step()
            replica_optimizer.zero_grad(set_to_none=True)
            if not math.isclose(loss, expected.item(), rel_tol=1e-4):
                raise SystemExit(f"step {step}: distributed loss {loss:.6f} != single-process loss "
                                 f"{expected.item():.6f}")
        every = args.print_every or max(1, args.steps // 10)
        if rank == 0 and ((step - first_step) % every == 0 or step == first_step + args.steps - 1):
            print(f"step {step:5d}  loss {loss:.4f}" + ("  (= one process)" if replica is not None else ""),
                  flush=True)
    if args.checkpoint_dir:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state,
                  "step": torch.tensor(first_step + args.steps)}, checkpoint_id=args.checkpoint_dir)
        if rank == 0:
            print(f"saved model and optimiser to {args.checkpoint_dir}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
