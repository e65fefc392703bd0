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
def exp_complex_scaled(re, im, scale):
    """exp((re + i im) scale) for fp32 (re, im) and an integer tile `scale` (|scale| < 2**29), broadcast together.

    The phase im * scale is formed and reduced to [-pi, pi] in fp64, where the product is exact: an fp32 phase of
    a long kernel (im * scale ~ 1e5) would carry a rounding error of 1e-2 radians, and sin / cos of arguments
    past 105615 take libdevice's slow (Payne-Hanek) reduction, which any lane of a warp makes the warp pay."""
    phase = im.to(tl.float64) * scale.to(tl.float64)
    phase -= tl.floor(phase * 0.15915494309189535 + 0.5) * 6.283185307179586
    phase = phase.to(tl.float32)
    magnitude = tl.exp(re * scale.to(tl.float32))
    return magnitude * tl.cos(phase), magnitude * tl.sin(phase)
