"""ssm_universal: nn.Module layers and architectures built on ssm_kernels (see DESIGN.md)."""
__version__ = "0.1.0"
