"""The latent evolution model: encoder, residual evolver, decoder, stimulus encoder.

Prediction `x_hat[t+tu] = dec(evolve^tu(enc(x[t])))`, one evolver step per 20 ms frame:
`z <- z + evolver(cat[z, stim_enc(s[t])])`. The loss parts are returned separately
(evolve, reconstruction, L1) so reports never mix them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latent_evolution.config.schema import MLPConfig, ModelConfig

ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
LOSS_FUNCTIONS = {  # keys: config.LOSSES
    "mse": nn.functional.mse_loss,
    "huber": nn.functional.huber_loss,
    "l1": nn.functional.l1_loss,
}


class MLP(nn.Sequential):
    """Hidden blocks of nn.Linear -> [BatchNorm1d] -> activation, then a final Linear."""

    def __init__(
        self,
        in_dims: int,
        hidden_dims: int,
        out_dims: int,
        num_hidden_layers: int,
        activation: str = "relu",
        use_batch_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        width = in_dims
        for _ in range(num_hidden_layers):
            layers.append(nn.Linear(width, hidden_dims))
            if use_batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dims))
            layers.append(ACTIVATION_LAYERS[activation]())
            width = hidden_dims
        layers.append(nn.Linear(width, out_dims))
        super().__init__(*layers)


def head_errors(head: nn.Module, hidden: Tensor, targets: list[Tensor], loss: str) -> list[Tensor]:
    """[error(block, target)] in fp32 over the blocks of rows of head(hidden) matching targets."""
    blocks = head(hidden).float().split([len(target) for target in targets])
    return [LOSS_FUNCTIONS[loss](b, t) for b, t in zip(blocks, targets, strict=True)]


def l1_penalty(module: nn.Module) -> Tensor:
    """Sum over the module's parameter tensors of mean(|p|)."""
    return torch.stack([p.abs().mean() for p in module.parameters()]).sum()


class LatentModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_neurons: int, n_input: int):
        super().__init__()

        def block(part: MLPConfig, d_in: int, d_out: int) -> MLP:
            return MLP(
                d_in,
                part.hidden_dims,
                d_out,
                part.num_hidden_layers,
                cfg.activation,
                cfg.use_batch_norm,
            )

        self.encoder = block(cfg.encoder, n_neurons, cfg.latent_dims)
        self.decoder = block(cfg.decoder, cfg.latent_dims, n_neurons)
        stim_dims = 0
        self.stimulus_encoder: MLP | None = None
        if cfg.use_stimulus:
            s = cfg.stimulus_encoder
            # never batch-normed: the stimulus is sparse and its statistics shift per sequence
            self.stimulus_encoder = MLP(
                n_input, s.hidden_dims, s.output_dims, s.num_hidden_layers, cfg.activation
            )
            stim_dims = s.output_dims
        self.evolver = block(cfg.evolver, cfg.latent_dims + stim_dims, cfg.latent_dims)
        if cfg.zero_init_evolver:  # z + 0 = z at step 0: the constant model in latent space
            nn.init.zeros_(self.evolver[-1].weight)
            nn.init.zeros_(self.evolver[-1].bias)
        self.batch_norm = cfg.use_batch_norm
        # the decoder's last layer and the error; the CPU kernels (cpu_kernels.place_model) may
        # put a fused op here
        self.head_errors = head_errors
        self.l1_weights = {
            "encoder": cfg.encoder.l1_weight,
            "decoder": cfg.decoder.l1_weight,
            "evolver": cfg.evolver.l1_weight,
        }

    def encode_stimulus(self, stim: Tensor) -> Tensor | None:
        """stim (B, k, n_input) -> (B, k, S) in one batched pass; None without a stimulus."""
        if self.stimulus_encoder is None:
            return None
        b, k = stim.shape[:2]
        return self.stimulus_encoder(stim.reshape(-1, stim.shape[-1])).view(b, k, -1)

    def evolve_step(self, z: Tensor, s_enc: Tensor | None) -> Tensor:
        """One 20 ms frame: z + evolver(cat[z, s_enc]) for latents z (B, L), s_enc (B, S)."""
        return z + self.evolver(torch.cat([z, s_enc], dim=-1) if s_enc is not None else z)

    def rollout(self, z: Tensor, stim: Tensor) -> Tensor:
        """Evolve latents z (B, L) through stim (B, tu, n_input); returns (B, tu, L)."""
        s_enc = self.encode_stimulus(stim)  # all tu frames at once instead of tu small passes
        states = []
        for k in range(stim.shape[1]):
            z = self.evolve_step(z, s_enc[:, k] if s_enc is not None else None)
            states.append(z)
        return torch.stack(states, dim=1)

    def forward(self, x_t: Tensor, stim: Tensor) -> Tensor:
        """Predict frame t+tu from x_t (B, N) and stim (B, tu, n_input), decoding only it."""
        latents = self.rollout(self.encoder(x_t), stim)
        return self.decoder(latents[:, -1])

    def decoded_errors(
        self, latents: list[Tensor], targets: list[Tensor], loss: str
    ) -> list[Tensor]:
        """[error(decoder(z), target)] in fp32; one decoder call unless batch norm ties rows.

        One call reads the decoder's 13741 x 256 weights once instead of twice and needs no
        gradient accumulation between the two uses (the whole step 1.15-1.2x faster at batch
        32 on the CPU, fly size; neutral at 256).
        """
        if self.batch_norm:  # each of the two batches keeps its own batch-norm statistics
            pairs = zip(latents, targets, strict=True)
            return [LOSS_FUNCTIONS[loss](self.decoder(z).float(), t) for z, t in pairs]
        *hidden_layers, head = self.decoder
        hidden = torch.cat(latents)
        for layer in hidden_layers:
            hidden = layer(hidden)
        return self.head_errors(head, hidden, targets, loss)

    def loss_parts(
        self,
        x_t: Tensor,
        stim: Tensor,
        targets: Tensor,
        evolve_multiple_steps: bool,
        loss: str = "mse",
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(evolve, reconstruction, weighted L1) losses, each a 0-d tensor in fp32.

        targets: (B, tu, N) frames t+1..t+tu. With evolve_multiple_steps the evolve loss averages
        all tu predictions; otherwise only the last frame counts and only it is decoded.
        loss names the error of the first two terms (LOSS_FUNCTIONS).
        """
        z = self.encoder(x_t)
        latents = self.rollout(z, stim)
        b, tu, dims = latents.shape
        evolved = latents.reshape(b * tu, dims) if evolve_multiple_steps else latents[:, -1]
        frames = targets.reshape(b * tu, -1) if evolve_multiple_steps else targets[:, -1]
        evolve, recon = self.decoded_errors([evolved, z], [frames, x_t], loss)
        reg = evolve.new_zeros(())
        for name, weight in self.l1_weights.items():
            if weight > 0:
                reg = reg + weight * l1_penalty(getattr(self, name)).float()
        return evolve, recon, reg

    # ---------------------------------------------------------------- FLOPs

    def _linear_uses(self, time_units: int, decoder_uses: int) -> list:
        """(linear layer, uses per sample, whether its input needs a gradient) for each layer."""
        uses = {
            "encoder": 1,
            "decoder": decoder_uses,
            "evolver": time_units,
            "stimulus_encoder": time_units,
        }
        rows = []
        for name, n in uses.items():
            linears = [m for m in getattr(self, name) or () if isinstance(m, nn.Linear)]
            for i, layer in enumerate(linears):
                # the encoders' first layers read data, which needs no gradient
                input_grad = not (i == 0 and name in ("encoder", "stimulus_encoder"))
                rows.append((layer, n, input_grad))
        return rows

    def train_step_flops(
        self, batch_size: int, time_units: int, evolve_multiple_steps: bool
    ) -> int:
        """Matmul FLOPs of one training step, forward and backward (as FlopCounterMode counts).

        Forward is 2*in*out per sample per use; backward adds 2*in*out for the weight
        gradient and, where the input needs one, 2*in*out for the input gradient. The
        decoder runs for the reconstruction and for one (or tu) predictions.
        """
        decoder_uses = 1 + (time_units if evolve_multiple_steps else 1)
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n * (3 if input_grad else 2)
            for layer, n, input_grad in self._linear_uses(time_units, decoder_uses)
        )

    def eval_flops(self, batch_size: int, time_units: int) -> int:
        """Matmul FLOPs of predicting frame t+tu for batch_size start frames (forward only)."""
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n
            for layer, n, _ in self._linear_uses(time_units, decoder_uses=1)
        )
