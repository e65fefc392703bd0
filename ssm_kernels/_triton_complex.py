"""Complex numbers in Triton kernels as (re, im) pairs of fp32 tiles, read from and written to the real view of
a complex64 tensor (re, im interleaved: element k at offsets 2k and 2k + 1). Imported by Triton backends only."""
import triton
import triton.language as tl


@triton.jit
def load_complex(ptr, index, mask):
    """(re, im) of complex elements `index` (a tile of element indices) of the real view at ptr; 0 where masked."""
    re = tl.load(ptr + 2 * index, mask=mask, other=0.0)
    im = tl.load(ptr + 2 * index + 1, mask=mask, other=0.0)
    return re, im


@triton.jit
def store_complex(ptr, index, re, im, mask):
    tl.store(ptr + 2 * index, re, mask=mask)
    tl.store(ptr + 2 * index + 1, im, mask=mask)


@triton.jit
def exp_complex(re, im):
    """exp(re + i im) = (e^re cos im, e^re sin im)."""
    magnitude = tl.exp(re)
    return magnitude * tl.cos(im), magnitude * tl.sin(im)
