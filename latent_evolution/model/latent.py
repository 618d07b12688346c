"""The latent evolution model: encoder, residual evolver, decoder, stimulus encoder.

Prediction `x_hat[t+tu] = dec(evolve^tu(enc(x[t])))`, one evolver step per 20 ms frame:
`z <- z + evolver(cat[z, stim_enc(s[t])])`. The loss parts are returned separately
(evolve, reconstruction, L1) so reports never mix them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latent_evolution.config.schema import MLPConfig, ModelConfig, StimulusEncoderConfig

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
    """Hidden blocks of nn.Linear -> [BatchNorm1d] -> activation, then a final Linear
    (`head`); `features(x)` is what the head reads."""

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

    @property
    def head(self) -> nn.Module:
        return self[-1]

    def input_readers(self) -> list[nn.Module]:
        """The layers whose input is the module's input alone."""
        return [self[0]]

    def features(self, x: Tensor) -> Tensor:
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


class SkipMLP(nn.Module):
    """The lab's input-skip MLP (NeuralGraph's `MLPWithSkips`), parameter for parameter and
    with its parameter names: every hidden layer and the output layer read their own input
    concatenated with a linear projection (no activation) of the module's input x, so each
    layer sees x directly. No hidden layer: one Linear (`output_layer`). No batch norm.

    hidden_0 = act(linear_layers[0](cat[x, input_projections[0](x)]))
    hidden_i = act(linear_layers[i](cat[hidden_{i-1}, input_projections[i](x)]))
    out = output_layer(cat[hidden_last, input_projection_final(x)])
    """

    def __init__(
        self, in_dims: int, hidden_dims: int, out_dims: int, num_hidden_layers: int, activation: str
    ):
        super().__init__()
        self.num_hidden_layers = num_hidden_layers
        if num_hidden_layers == 0:
            self.output_layer = nn.Linear(in_dims, out_dims)
            return
        self.input_projections = nn.ModuleList(
            nn.Linear(in_dims, hidden_dims) for _ in range(num_hidden_layers)
        )
        self.linear_layers = nn.ModuleList(
            nn.Linear((in_dims if i == 0 else hidden_dims) + hidden_dims, hidden_dims)
            for i in range(num_hidden_layers)
        )
        self.activations = nn.ModuleList(
            ACTIVATION_LAYERS[activation]() for _ in range(num_hidden_layers)
        )
        self.input_projection_final = nn.Linear(in_dims, hidden_dims)
        self.output_layer = nn.Linear(2 * hidden_dims, out_dims)

    @property
    def head(self) -> nn.Module:
        return self.output_layer

    def input_readers(self) -> list[nn.Module]:
        """The layers whose input is the module's input alone (linear_layers[0] reads it
        beside a projection, which needs the gradient)."""
        if self.num_hidden_layers == 0:
            return [self.output_layer]
        return [*self.input_projections, self.input_projection_final]

    def features(self, x: Tensor) -> Tensor:
        """What output_layer reads: cat[last hidden, input_projection_final(x)] (x if none)."""
        if self.num_hidden_layers == 0:
            return x
        hidden = x
        layers = zip(self.input_projections, self.linear_layers, self.activations, strict=True)
        for projection, linear, activation in layers:
            hidden = activation(linear(torch.cat([hidden, projection(x)], dim=-1)))
        return torch.cat([hidden, self.input_projection_final(x)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_layer(self.features(x))


def build_mlp(
    in_dims: int,
    out_dims: int,
    part: MLPConfig | StimulusEncoderConfig,
    default_activation: str,
    use_batch_norm: bool = False,
) -> MLP | SkipMLP:
    """One module of the model as its config describes it (model.<module>.*)."""
    activation = part.activation or default_activation
    if part.input_skips:
        return SkipMLP(in_dims, part.hidden_dims, out_dims, part.num_hidden_layers, activation)
    return MLP(
        in_dims, part.hidden_dims, out_dims, part.num_hidden_layers, activation, use_batch_norm
    )


def head_errors(head: nn.Module, hidden: Tensor, targets: list[Tensor], loss: str) -> list[Tensor]:
    """[error(block, target)] in fp32 over the blocks of rows of head(hidden) matching targets."""
    blocks = head(hidden).float().split([len(target) for target in targets])
    return [LOSS_FUNCTIONS[loss](b, t) for b, t in zip(blocks, targets, strict=True)]


def l1_penalty(module: nn.Module) -> Tensor:
    """Sum over the module's parameter tensors of mean(|p|)."""
    return torch.stack([p.abs().mean() for p in module.parameters()]).sum()


def from_lab_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state_dict of the lab's LatentModel (NeuralGraph's latent.py) in our names: the lab
    wraps the evolver's MLP in an `Evolver` module (`evolver.evolver.*`); every other name,
    the skip MLPs' included, is the same."""
    prefix = "evolver.evolver."
    return {
        ("evolver." + k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()
    }


class LatentModel(nn.Module):
    def __init__(self, cfg: ModelConfig, n_neurons: int, n_input: int, time_units: int = 1):
        """time_units: the observation interval, which model.stimulus_frequency=held holds
        over and interpolated interpolates across."""
        super().__init__()
        self.time_units, self.stimulus_frequency = time_units, cfg.stimulus_frequency
        # interpolated: a sample's stimulus runs to its last target frame (frame t+F), whose
        # stimulus the evolver interpolates towards over the last tu frames
        self.target_stimulus = cfg.stimulus_frequency == "interpolated"

        def block(part: MLPConfig, d_in: int, d_out: int) -> MLP | SkipMLP:
            return build_mlp(d_in, d_out, part, cfg.activation, cfg.use_batch_norm)

        self.encoder = block(cfg.encoder, n_neurons, cfg.latent_dims)
        self.decoder = block(cfg.decoder, cfg.latent_dims, n_neurons)
        stim_dims = 0
        self.stimulus_encoder: MLP | SkipMLP | None = None
        if cfg.use_stimulus:
            s = cfg.stimulus_encoder
            # never batch-normed: the stimulus is sparse and its statistics shift per sequence
            self.stimulus_encoder = build_mlp(n_input, s.output_dims, s, cfg.activation)
            stim_dims = s.output_dims
        self.evolver = block(cfg.evolver, cfg.latent_dims + stim_dims, cfg.latent_dims)
        if cfg.zero_init_evolver:  # z + 0 = z at step 0: the constant model in latent space
            nn.init.zeros_(self.evolver.head.weight)
            nn.init.zeros_(self.evolver.head.bias)
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
        """stim (B, k, n_input) -> (B, k, S) in one batched pass; None without a stimulus.
        stimulus_frequency=none: the encoding of no stimulus (zeros)."""
        if self.stimulus_encoder is None:
            return None
        if self.stimulus_frequency == "none":
            stim = torch.zeros_like(stim)
        b, k = stim.shape[:2]
        return self.stimulus_encoder(stim.reshape(-1, stim.shape[-1])).view(b, k, -1)

    def encode(self, x: Tensor) -> Tensor:
        """The rollout's state at its start frame x (B, N): the latent."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """The frame a rollout state predicts."""
        return self.decoder(z)

    def evolver_update(self, z: Tensor, s_enc: Tensor | None) -> Tensor:
        """The evolver's update dz of one 20 ms frame: evolver(cat[z, s_enc])."""
        return self.evolver(torch.cat([z, s_enc], dim=-1) if s_enc is not None else z)

    def evolve_step(self, z: Tensor, s_enc: Tensor | None) -> Tensor:
        """One 20 ms frame: z + evolver(cat[z, s_enc]) for latents z (B, L), s_enc (B, S)."""
        return z + self.evolver_update(z, s_enc)

    def held(self, stim: Tensor) -> Tensor:
        """stim (B, k, n_input) of frames t..t+k-1 as the evolver sees it: under
        stimulus_frequency=held each frame gets the stimulus of the last multiple of tu."""
        if self.stimulus_frequency != "held":
            return stim
        frames = torch.arange(stim.shape[1], device=stim.device)
        return stim[:, (frames // self.time_units) * self.time_units]

    def between_multiples(self, at_multiples: Tensor) -> Tensor:
        """stimulus_frequency=interpolated: the encoded stimulus (B, M + 1, S) at the multiples
        t, t+tu, .., t+M tu -> what the evolver sees at frames t..t+M tu-1, (B, M tu, S).

        Frame t+m tu+k (0 <= k < tu) sees lerp(e_m, e_m+1, k / tu): the line between the
        encodings at the two multiples around it, in the encoder's output space (as the lab's
        stimulus_utils); at a multiple, its own encoding."""
        tu = self.time_units
        weights = torch.arange(tu, device=at_multiples.device).to(at_multiples.dtype) / tu
        lo, hi = at_multiples[:, :-1, None], at_multiples[:, 1:, None]  # (B, M, 1, S)
        return torch.lerp(lo, hi, weights[:, None]).flatten(1, 2)  # (B, M, tu, S) -> frames

    def evolver_stimulus(self, stim: Tensor) -> Tensor | None:
        """The encoded stimulus each evolver step of a sample sees, (B, F, S), in one pass;
        None without a stimulus. stim: (B, F, n_input) of frames t..t+F-1; under
        stimulus_frequency=interpolated (B, F + 1, n_input), to the target frame t+F (F a
        multiple of tu), of which only the multiples' stimulus is encoded."""
        if not self.target_stimulus:
            return self.encode_stimulus(self.held(stim))
        at_multiples = self.encode_stimulus(stim[:, :: self.time_units])
        return self.between_multiples(at_multiples) if at_multiples is not None else None

    def rollout(self, z: Tensor, stim: Tensor) -> Tensor:
        """Evolve latents z (B, L) through stim (B, k, n_input) (k + 1 frames under
        stimulus_frequency=interpolated: evolver_stimulus); returns (B, k, L)."""
        s_enc = self.evolver_stimulus(stim)  # all k frames at once instead of k small passes
        states = []
        for k in range(stim.shape[1] - self.target_stimulus):
            z = self.evolve_step(z, s_enc[:, k] if s_enc is not None else None)
            states.append(z)
        return torch.stack(states, dim=1)

    def forward(self, x_t: Tensor, stim: Tensor) -> Tensor:
        """Predict frame t+k from x_t (B, N) and the stimulus of frames t..t+k-1 (B, k, n_input)
        (to t+k under stimulus_frequency=interpolated)."""
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
        hidden = self.decoder.features(torch.cat(latents))
        return self.head_errors(self.decoder.head, hidden, targets, loss)

    def loss_parts(
        self,
        x_t: Tensor,
        stim: Tensor,
        targets: Tensor,
        ahead: tuple[int, ...],
        loss: str = "mse",
        tv_weight: float = 0.0,
        observed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(evolve, reconstruction, regularization) losses, each a 0-d tensor in fp32.

        observed: (K, N) 1 where target frame ahead[i] of neuron n is observed, else 0
        (staggered acquisition): the evolve loss is the mean error over observed entries only.

        stim: (B, F, n_input), the stimulus of frames t..t+F-1 with F = ahead[-1] (to t+F
        under stimulus_frequency=interpolated: evolver_stimulus); targets:
        (B, K, N), frames t+a for each a of `ahead` (K = len(ahead), ascending). The latent is
        evolved F frames, one evolver step per frame, and decoded only at those K frames; the
        evolve loss is the mean error over them (each frame weighs the same).
        loss names the error of the first two terms (LOSS_FUNCTIONS). regularization: the
        weighted L1 terms plus tv_weight x the total variation of the latent path per frame,
        mean |dz| over frames, samples and latent dimensions (dz: the evolver's update).
        """
        z0 = self.encoder(x_t)
        s_enc = self.evolver_stimulus(stim)  # all F frames in one pass
        kept, variation, z = [], [], z0
        for k in range(ahead[-1]):  # ahead is a Python tuple: the loop unrolls when compiled
            dz = self.evolver_update(z, s_enc[:, k] if s_enc is not None else None)
            z = z + dz
            if tv_weight > 0:
                variation.append(dz.float().abs().mean())
            if k + 1 in ahead:
                kept.append(z)
        b, n_kept = x_t.shape[0], len(kept)
        evolved = torch.stack(kept, dim=1).reshape(b * n_kept, -1) if n_kept > 1 else kept[0]
        frames = targets.reshape(b * n_kept, -1)
        if observed is None:
            evolve, recon = self.decoded_errors([evolved, z0], [frames, x_t], loss)
        else:  # unobserved entries get no error, so no gradient
            pred = self.decoder(evolved).float().view(b, n_kept, -1)
            errors = LOSS_FUNCTIONS[loss](pred, targets, reduction="none") * observed
            evolve = errors.sum() / (b * observed.sum())
            recon = LOSS_FUNCTIONS[loss](self.decoder(z0).float(), x_t)
        reg = evolve.new_zeros(())
        for name, weight in self.l1_weights.items():
            if weight > 0:
                reg = reg + weight * l1_penalty(getattr(self, name)).float()
        if variation:
            reg = reg + tv_weight * torch.stack(variation).mean()
        return evolve, recon, reg

    # ---------------------------------------------------------------- FLOPs

    def _linear_uses(self, frames: int, decoder_uses: int) -> list:
        """(linear layer, uses per sample, whether its input needs a gradient) for each layer
        of a sample evolved `frames` frames."""
        uses = {
            "encoder": 1,
            "decoder": decoder_uses,
            "evolver": frames,
            # interpolated: only the multiples t, t+tu, .., t+frames (evolver_stimulus)
            "stimulus_encoder": frames // self.time_units + 1 if self.target_stimulus else frames,
        }
        rows = []
        for name, n in uses.items():
            module = getattr(self, name)
            if module is None:
                continue
            # the encoders' layers that read the data itself need no input gradient
            reads_data = module.input_readers() if name in ("encoder", "stimulus_encoder") else []
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    rows.append((layer, n, not any(layer is r for r in reads_data)))
        return rows

    def train_step_flops(self, batch_size: int, ahead: tuple[int, ...]) -> int:
        """Matmul FLOPs of one training step, forward and backward (as FlopCounterMode counts).

        Forward is 2*in*out per sample per use; backward adds 2*in*out for the weight
        gradient and, where the input needs one, 2*in*out for the input gradient. The
        evolver and stimulus encoder run once per frame (ahead[-1] frames), the decoder for
        the reconstruction and at each frame of `ahead`.
        """
        decoder_uses = 1 + len(ahead)
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n * (3 if input_grad else 2)
            for layer, n, input_grad in self._linear_uses(ahead[-1], decoder_uses)
        )

    def eval_flops(self, batch_size: int, time_units: int) -> int:
        """Matmul FLOPs of predicting frame t+tu for batch_size start frames (forward only)."""
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n
            for layer, n, _ in self._linear_uses(time_units, decoder_uses=1)
        )


class StimulusOnlyModel(nn.Module):
    """The null model (model.kind=stimulus_only): activity predicted from the stimulus alone.

    x_hat[t] = predictor(cat[stim_enc(s[t-W]), .., stim_enc(s[t-1])]) over a window of
    W = model.stimulus_window frames (frame t-1 holds the stimulus driving t); no encoder, no
    latent state, no reconstruction. The stimulus encoder is model.stimulus_encoder, the
    predictor an MLP shaped by model.decoder (hidden dims, layers, skips, activation), so the
    parameter count is comparable with the latent model's. Frames before a sample's (or a
    rollout's) start frame count as no stimulus (zeros). Its methods are LatentModel's, so
    training, the final losses and the rollout judge it like any run.
    """

    def __init__(self, cfg: ModelConfig, n_neurons: int, n_input: int):
        super().__init__()
        s = cfg.stimulus_encoder
        self.window, self.stim_dims = cfg.stimulus_window, s.output_dims
        self.stimulus_encoder = build_mlp(n_input, s.output_dims, s, cfg.activation)
        self.decoder = build_mlp(
            self.window * s.output_dims, n_neurons, cfg.decoder, cfg.activation
        )
        self.batch_norm, self.target_stimulus = False, False  # every frame's stimulus
        self.head_errors = head_errors  # as LatentModel's: cpu_kernels may fuse it
        self.l1_weights = {"decoder": cfg.decoder.l1_weight}

    def encode_stimulus(self, stim: Tensor) -> Tensor:
        b, k = stim.shape[:2]
        return self.stimulus_encoder(stim.reshape(-1, stim.shape[-1])).view(b, k, -1)

    def _windows(self, s_enc: Tensor, frames: tuple[int, ...]) -> Tensor:
        """(B * len(frames), W * S): the encoded stimulus of the W frames before each frame t+a
        of `frames`, zeros before the sample's start."""
        padded = torch.cat([s_enc.new_zeros(s_enc.shape[0], self.window, self.stim_dims), s_enc], 1)
        rows = [padded[:, a : a + self.window].flatten(1) for a in frames]
        return torch.stack(rows, dim=1).flatten(0, 1)

    def forward(self, x_t: Tensor, stim: Tensor) -> Tensor:
        """The frame after stim's k frames; x_t is not read."""
        return self.decoder(self._windows(self.encode_stimulus(stim), (stim.shape[1],)))

    # the rollout's state: the encoded stimulus of the last W frames
    def encode(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.window, self.stim_dims)

    def evolve_step(self, window: Tensor, s_enc: Tensor | None) -> Tensor:
        return torch.cat([window[:, 1:], s_enc.unsqueeze(1)], dim=1)

    def decode(self, window: Tensor) -> Tensor:
        return self.decoder(window.flatten(1))

    def loss_parts(
        self,
        x_t: Tensor,
        stim: Tensor,
        targets: Tensor,
        ahead: tuple[int, ...],
        loss: str = "mse",
        tv_weight: float = 0.0,
        observed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(prediction, 0, weighted L1) losses as LatentModel.loss_parts' (no reconstruction,
        no latent path: tv_weight has nothing to weigh; observed as there)."""
        hidden = self.decoder.features(self._windows(self.encode_stimulus(stim), ahead))
        if observed is None:
            [evolve] = self.head_errors(self.decoder.head, hidden, [targets.flatten(0, 1)], loss)
        else:
            pred = self.decoder.head(hidden).float().view_as(targets)
            errors = LOSS_FUNCTIONS[loss](pred, targets, reduction="none") * observed
            evolve = errors.sum() / (targets.shape[0] * observed.sum())
        reg = evolve.new_zeros(())
        if self.l1_weights["decoder"] > 0:
            reg = reg + self.l1_weights["decoder"] * l1_penalty(self.decoder).float()
        return evolve, evolve.new_zeros(()), reg

    def _uses(self, frames: int, predictions: int) -> list:
        rows = []
        for name, n in (("stimulus_encoder", frames), ("decoder", predictions)):
            module = getattr(self, name)
            readers = module.input_readers() if name == "stimulus_encoder" else []
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    rows.append((layer, n, not any(layer is r for r in readers)))
        return rows

    def train_step_flops(self, batch_size: int, ahead: tuple[int, ...]) -> int:
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n * (3 if grad else 2)
            for layer, n, grad in self._uses(ahead[-1], len(ahead))
        )

    def eval_flops(self, batch_size: int, time_units: int) -> int:
        return sum(
            2 * layer.in_features * layer.out_features * batch_size * n
            for layer, n, _ in self._uses(time_units, 1)
        )


def build_model(
    cfg: ModelConfig, n_neurons: int, n_input: int, time_units: int = 1
) -> LatentModel | StimulusOnlyModel:
    """The model model.kind names (time_units: training.time_units)."""
    if cfg.kind == "stimulus_only":
        return StimulusOnlyModel(cfg, n_neurons, n_input)
    return LatentModel(cfg, n_neurons, n_input, time_units)
