"""ssm_kernels._side_by_side: which tensors count as consecutive channel slices of one tensor, and split, whose
backward passes such gradients on as one tensor (no copy) and concatenates any others as torch.split's does."""
import pytest
import torch

from ssm_kernels._side_by_side import gradient_buffers, side_by_side, split


def _slices(t, sizes, dim=-1):
    return list(torch.split(t, sizes, dim))


def test_slices_of_one_tensor_have_it_as_parent():
    t = torch.randn(2, 5, 12)
    parent = side_by_side(_slices(t, [4, 3, 5]), 2)
    assert parent is not None and parent.data_ptr() == t.data_ptr() and parent.shape == t.shape
    assert parent.stride() == t.stride()
    # parts reshaped on their channel axis (x as (B, L, H, P)) still count
    x, B, C = _slices(t, [4, 4, 4])
    parent = side_by_side([x.unflatten(-1, (2, 2)), B.unflatten(-1, (1, 4)), C], 2)
    assert parent is not None and torch.equal(parent, t)
    # channel-first memory: channels strided by L
    cf = torch.randn(2, 12, 5).transpose(1, 2)
    parent = side_by_side(_slices(cf, [6, 6]), 2)
    assert parent is not None and parent.stride() == cf.stride() and torch.equal(parent, cf)


@pytest.mark.parametrize("case", ["gap", "order", "other_tensor", "dtype", "lead_stride", "overlap", "empty"])
def test_other_layouts_have_no_parent(case):
    t = torch.randn(2, 5, 12)
    parts = _slices(t, [4, 3, 5])
    if case == "gap":
        parts = [t[..., :4], t[..., 5:8]]
    elif case == "order":
        parts = parts[::-1]
    elif case == "other_tensor":
        parts = [parts[0], parts[1].clone()]
    elif case == "dtype":
        parts = [t.view(torch.int32)[..., :4], parts[1]]
    elif case == "lead_stride":
        parts = [t[:, ::2, :4], t[:, 1::2, 4:7]]
    elif case == "overlap":  # rows 6 apart, 12 channels each
        parts = [t.view(-1)[:60].as_strided((2, 5, 6), (30, 6, 1)), t.view(-1)[6:].as_strided((2, 5, 6), (30, 6, 1))]
    elif case == "empty":
        parts = [parts[0], t[..., 4:4], parts[1]]
    assert side_by_side(parts, 2) is None


def test_gradient_buffers_lie_like_the_parts_parent():
    cf = torch.randn(2, 12, 5).transpose(1, 2)  # (B, L, C), channels strided
    x, B = _slices(cf, [8, 4])
    views = gradient_buffers([x.unflatten(-1, (2, 4)), B], 2)
    assert [v.shape for v in views] == [(2, 5, 2, 4), (2, 5, 4)]
    whole = side_by_side(views, 2)
    assert whole is not None and whole.shape == cf.shape and whole.stride() == cf.stride()
    assert gradient_buffers([x, B.clone()], 2) is None


def _grads(parts_fn, t, sizes, weights):
    leaf = t.detach().requires_grad_()
    parts = parts_fn(leaf, sizes)
    loss = sum((p * w).sum() for p, w in zip(parts, weights) if w is not None)
    return torch.autograd.grad(loss, leaf)[0]


def test_split_backward_concatenates_separate_gradients_and_zeros_for_unused_parts():
    t = torch.randn(3, 4, 10)
    sizes = [2, 5, 3]
    weights = [torch.randn(3, 4, s) for s in sizes]
    for used in ([0, 1, 2], [0, 2], [1]):
        w = [weights[i] if i in used else None for i in range(3)]
        ours = _grads(lambda x, s: split(x, s), t, sizes, w)
        theirs = _grads(lambda x, s: torch.split(x, s, -1), t, sizes, w)
        assert torch.equal(ours, theirs)
    # another axis than the last: torch.split's result
    ours = _grads(lambda x, s: split(x, s, 1), t, [1, 3], [torch.randn(3, 1, 10), torch.randn(3, 3, 10)])
    assert ours.shape == t.shape


class _SideBySideGrads(torch.autograd.Function):
    """Identity on parts whose backward writes their gradients side by side (as the SSD's backward does)."""

    @staticmethod
    def forward(ctx, *parts):
        ctx.parts = [p.detach() for p in parts]
        return tuple(p.view_as(p) * 1 for p in parts)

    @staticmethod
    def backward(ctx, *grads):
        views = gradient_buffers(ctx.parts, 2)
        for v, g in zip(views, grads):
            v.copy_(g)
        _SideBySideGrads.last = views
        return tuple(views)


def test_split_backward_passes_side_by_side_gradients_on_without_a_copy():
    leaf = torch.randn(2, 6, 9, requires_grad=True)
    parts = split(leaf, [3, 2, 4])
    outs = _SideBySideGrads.apply(*parts)
    cotangents = [torch.randn_like(o) for o in outs]
    grad, = torch.autograd.grad(outs, leaf, cotangents)
    assert grad.data_ptr() == _SideBySideGrads.last[0].data_ptr()
    assert torch.equal(grad, torch.cat(cotangents, -1))


def test_split_without_grad_is_torch_split():
    t = torch.randn(2, 3, 7)
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(split(t, [3, 4]), torch.split(t, [3, 4], -1)))
