"""Integrations of ssm_kernels with other libraries (Hugging Face transformers: `integrations.transformers`)."""
