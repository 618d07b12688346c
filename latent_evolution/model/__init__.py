"""The latent model (latent), where and in what precision it runs (device), and the CPU
kernels chosen by hardware.cpu_kernels (cpu_kernels)."""
