"""Training commands' library side: the Fashion-MNIST source model, the small diffusion model, the DANN experiment."""
