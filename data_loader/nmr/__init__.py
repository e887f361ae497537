"""NMR denoising data: simulation of multi-SNR acquisition ladders and batched preprocessing."""
