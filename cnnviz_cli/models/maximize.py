"""Feature visualization by optimization: the inputs a trained network itself finds most exciting.

For every requested channel of a layer (or every requested class of the logits) one image is optimised by
gradient ascent, all of them at once as one batch. Small inputs are taken seriously, unlike the
ImageNet-sized recipes (Olah et al., "Feature Visualization", Distill 2017), which upsample to 224 px and
jitter by 8-16 px:

* The objective of a channel is its unit at the centre of the layer's output map (a "neuron"), so the
  picture is comparable with the dataset patches of the same layer, which are receptive-field crops
  around one unit; the objective of a class is its logit.
* The image is parameterised so that it is always a valid input: grayscale pixels are ``sigmoid(p)`` in
  [0, 1]. A colour image is a Fourier spectrum scaled by 1/frequency over the decorrelated components of
  the data's colours (``ColourSpace``: centred on the run's recorded mean, scaled by its std, correlated
  like the data's pixels), each pixel kept within the data's typical spread of its mean colour, so the
  steps favour smooth colours of the kind the data has rather than clipped primaries. The network sees
  the image after the run's normalisation ((x - mean) / std).
* Robustness transforms are scaled to the input: a random shift of up to 1/28 of the side (1 px at
  28 px, 8 px at 224 px) but no more than a tenth of the unit's receptive field (measured by the
  gradient's reach) and a scale change of a few percent, redrawn every step for every image.
* Penalties, per image: total variation (summed squared differences of neighbouring pixels) and L2
  (summed squared distance from mid-grey, 0.5), both in [0, 1] pixel units; for colour images both in the
  colour space's components (the L2 one from the mean colour). The objective is divided by the spread of
  the layer's output on start images (colour: on 1/f noise as varied as the data), so the penalty
  weights mean the same on any layer of any network.
* Silent units: a ReLU-like layer is optimised on its input, and for the first steps every ``nn.ReLU``
  also passes the gradient that would make a silent unit fire (Lucid's "redirected ReLU").

Everything random comes from generators seeded with ``seed`` (each image's start from its own): the same
seed gives the same images, whichever other channels are optimised with them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnviz_cli.config import check_at_least, check_choice
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnviz_cli.models.patches import TopK
    from cnnviz_cli.progress import BatchCallback

__all__ = [
    "PARAMETERISATIONS",
    "ColourSpace",
    "MaximizeConfig",
    "Maximized",
    "dataset_top",
    "find_module",
    "maximize",
    "probe_output",
]

PARAMETERISATIONS = ("auto", "pixel", "fourier")


@dataclass(frozen=True)
class MaximizeConfig:
    """How the images are optimised. ``None`` for jitter means "scaled to the input size"."""

    steps: int = 256
    lr: float = 0.1
    seed: int = 0
    tv: float = 0.05
    l2: float = 0.002
    jitter: int | None = None
    scale: float = 0.05
    transforms: bool = True
    parameterisation: str = "auto"

    def __post_init__(self) -> None:
        check_at_least(self.steps, 1, "--steps")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}.")
        if self.seed < 0:
            raise UsageError(f"--seed must be zero or positive, got {self.seed}.")
        for name in ("tv", "l2", "scale"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise UsageError(f"The {name} setting must be zero or positive, got {value}.")
        if self.scale >= 1:
            raise UsageError(f"The scale change must be below 1 (a fraction of the size), got {self.scale}.")
        if self.jitter is not None and self.jitter < 0:
            raise UsageError(f"The jitter must be zero or positive, got {self.jitter}.")
        check_choice(self.parameterisation, PARAMETERISATIONS, "parameterisation")

    def jitter_for(self, height: int, width: int, field: int | None = None) -> int:
        """Largest shift in pixels: 1/28 of the shorter side, rounded, at least 1 (1 px at 28 px, 8 at 224),
        and at most a tenth of the unit's receptive field ``field`` (no shift for a field under 10 px).

        At 28 px a shift of 2 px already costs a fifth of the activation the images reach on the tutorial
        network's conv2 (14 px field) for no visible gain in cleanliness; TV does the smoothing. On conv1
        (5 px) a shift of 1 px left every image below the best test image, none without it.
        """
        if self.jitter is not None:
            return self.jitter
        jitter = max(1, round(min(height, width) / 28))
        return jitter if field is None else min(jitter, field // 10)


@dataclass
class Maximized:
    """The optimised images and what they reach, measured on the images as they are (no transforms).

    ``images``: (N, C, H, W) float32 pixels in [0, 1], before the run's normalisation.
    ``activations``: (N,) the objective reached: the centre unit of each channel, or each class's logit.
    ``peaks``: (N,) the channel's largest value anywhere on its image (equal to ``activations`` for classes).
    ``probabilities``: (N,) softmax probability of each class (classes only, else None).
    ``unit``: (row, column) of the centre unit in the layer's output map (None for classes).
    """

    layer: str | None
    indices: tuple[int, ...]
    images: torch.Tensor
    activations: torch.Tensor
    peaks: torch.Tensor
    probabilities: torch.Tensor | None
    unit: tuple[int, int] | None
    output_shape: tuple[int, ...]
    field: int | None = None  # how far (in pixels) the centre unit's gradient reaches; None for classes
    jitter: int = 0  # the largest shift used


class _Reached(Exception):
    """Stops a forward pass once the observed module has produced its output."""


def find_module(model: nn.Module, layer: str) -> nn.Module:
    """The submodule with dotted name ``layer`` ('conv2', 'layer3.1.conv2'); unknown names are refused."""
    names = [name for name, _ in model.named_modules() if name]
    if layer not in names:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise UsageError(f"Unknown layer '{layer}'.", f"Layers of this model: {shown}.")
    return model.get_submodule(layer)


def _rectifier(module: nn.Module) -> bool:
    """A ReLU-like activation: monotone and elementwise, with a zero (or flat) gradient below 0."""
    from torch import nn

    return isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU))


@contextlib.contextmanager
def _observe(
    model: nn.Module, layer: str | None, before_rectifier: bool = False
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function input -> output of ``layer`` (the model's output for None) that runs no further than needed.

    The hook ends the forward pass as soon as the layer has produced its output, so later layers cost
    nothing; it comes off when the block ends, also on errors. With ``before_rectifier`` and a ReLU-like
    layer, the function gives the layer's input instead: the same ranking, and a gradient where the unit
    is not firing yet (read before the layer runs, so an in-place ReLU cannot overwrite it).
    """
    if layer is None:
        yield model
        return
    module = find_module(model, layer)
    box: list[torch.Tensor] = []

    def hook(_module, inputs, output=None):
        value = inputs[0] if output is None else output
        if not hasattr(value, "dim"):
            raise UsageError(f"Layer '{layer}' does not output a tensor ({type(value).__name__}).")
        box.append(value)
        raise _Reached

    def run(x: torch.Tensor) -> torch.Tensor:
        box.clear()
        try:
            model(x)
        except _Reached:
            return box[0]
        raise UsageError(f"Layer '{layer}' is not used by the model's forward pass.")

    if before_rectifier and _rectifier(module):
        handle = module.register_forward_pre_hook(hook)
    else:
        handle = module.register_forward_hook(hook)
    try:
        yield run
    finally:
        handle.remove()


def probe_output(model: nn.Module, layer: str | None, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape (without batch) of ``layer``'s output for one input of ``input_shape`` (C, H, W)."""
    import torch

    device = _device_of(model)
    with torch.no_grad(), _observe(model, layer) as run:
        return tuple(run(torch.zeros((1, *input_shape), device=device)).shape[1:])


def _device_of(model: nn.Module) -> torch.device:
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _check_indices(layer: str | None, indices: Sequence[int], shape: tuple[int, ...]) -> tuple[int, ...]:
    what = "class" if layer is None else "channel"
    if layer is None and len(shape) != 1:
        raise UsageError(f"The model's output has shape {list(shape)}, not one score per class.")
    if layer is not None and len(shape) != 3:
        raise UsageError(
            f"Layer '{layer}' has no spatial output (its output per image has shape {list(shape)}).",
            "Pick a convolutional layer, or use --class for the class scores.",
        )
    count = shape[0]
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        where = "the model has" if layer is None else f"layer '{layer}' has"
        plural = "classes" if layer is None else "channels"
        raise UsageError(f"No {what} {', '.join(str(b) for b in bad)}: {where} {count} {plural} (0 to {count - 1}).")
    return tuple(dict.fromkeys(int(i) for i in indices)) if indices else tuple(range(count))


def _square_root(matrix: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, its eigenvalues' roots at
    least ``floor`` times the largest."""
    import torch

    values, vectors = torch.linalg.eigh(matrix)
    roots = values.clamp_min(0).sqrt()
    roots = roots.clamp_min(float(roots.max()) * floor)
    return vectors @ torch.diag(roots) @ vectors.T


@dataclass(frozen=True)
class ColourSpace:
    """Where the colours of a colour image are optimised: a pixel is ``mean + root @ w``, where ``root`` is
    the symmetric square root of the data's colour covariance, so the components ``w`` are decorrelated and
    in units of the data's spread: a step in ``w`` changes the colours the way the data's colours vary,
    not towards pure primaries. The data's own pixels lie at ``|w| = sqrt(C)`` on average (root mean
    square), and the optimised ones are kept within that length.
    """

    mean: torch.Tensor  # (C,) the centre: the run's recorded per-channel mean, pixels in [0, 1]
    root: torch.Tensor  # (C, C) symmetric square root of the colour covariance, invertible

    @classmethod
    def of_pixels(
        cls, pixels: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> ColourSpace:
        """The colour space of ``pixels`` (M, C) in [0, 1]: centred on ``mean`` and with each channel's
        spread ``std`` when given (the run's recorded normalisation), else the pixels' own; the correlations
        between the channels are the pixels'."""
        import torch

        pixels = pixels.double()
        channels = pixels.shape[1]
        if pixels.shape[0] < 2:  # no spread to learn from
            return cls.plain(channels, mean, std)
        covariance = torch.cov(pixels.T).reshape(channels, channels)
        centre = pixels.mean(dim=0) if mean is None else torch.as_tensor(mean, dtype=torch.float64)
        if std is not None:
            ratio = torch.as_tensor(std, dtype=torch.float64) / covariance.diagonal().sqrt().clamp_min(1e-6)
            covariance = covariance * torch.outer(ratio, ratio)
        if not float(covariance.diagonal().max()) > 1e-12:  # one flat colour
            return cls.plain(channels, mean, std)
        # A colour direction the data never varies along still gets a little room (and the root an inverse).
        return cls(centre.float(), _square_root(covariance, floor=0.03).float())

    @classmethod
    def plain(cls, channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> ColourSpace:
        """Without data: independent channels centred on ``mean`` and scaled by ``std`` when both are given
        and the mean is inside (0, 1), else on mid-grey with a spread of 0.25."""
        import torch

        centre, spread = torch.full((channels,), 0.5), torch.full((channels,), 0.25)
        if mean is not None and std is not None and all(0 < m < 1 for m in mean):
            centre = torch.as_tensor(mean, dtype=torch.float32).expand(channels).clone()
            spread = torch.as_tensor(std, dtype=torch.float32).expand(channels).clone()
        return cls(centre, torch.diag(spread))


class _Pixels:
    """Images as ``sigmoid(logits)``: every value of every step is a valid pixel. Penalties in pixel units,
    the L2 one towards mid-grey."""

    REFERENCE = 1.0  # the layer's scale is measured on the start images themselves

    def __init__(self, start: torch.Tensor):
        self.logits = start.requires_grad_()
        self.params = [self.logits]

    @staticmethod
    def start(shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        import torch

        return 0.1 * torch.randn(shape, generator=generator)

    def __call__(self) -> torch.Tensor:
        return self.logits.sigmoid()

    @staticmethod
    def penalty(images: torch.Tensor, tv: float, l2: float) -> torch.Tensor:
        return tv * _total_variation(images) + l2 * (images - 0.5).square().flatten(1).sum(1)


class _Fourier:
    """Images from a spectrum scaled by 1/frequency whose channels are the components ``w`` of a
    ``ColourSpace``; each pixel's ``w`` is squashed (its direction kept) to a length below sqrt(C), the
    data's typical one, so the colours stay among the data's. Penalties on ``w``: the L2 one pulls towards
    the data's mean colour in units of its spread."""

    # The layer's scale is measured on images whose components spread by about 1 (1/f noise as varied as
    # the data's colours), not on the nearly flat start images: measured on those, a colour image's
    # objective outweighed the penalties a hundredfold and drove its colours to the ends of their range.
    REFERENCE = 100.0
    # Total variation of ``w`` weighs this part of the tv setting: a component's unit is the data's spread,
    # several times a pixel unit (at 1, 14 of 32 conv2 channels of the shapes run fell below the best test image).
    TV_SHARE = 0.2

    def __init__(self, start: torch.Tensor, size: tuple[int, int], colours: ColourSpace):
        import torch

        h, w = size
        fy = torch.fft.fftfreq(h).reshape(-1, 1)
        fx = torch.fft.rfftfreq(w).reshape(1, -1)
        freq = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(h, w))
        # 1/f keeps low frequencies dominant; normalised so that the image's pixel spread stays near 1.
        scale = 1.0 / freq
        self.scale = (scale / scale.square().mean().sqrt()).to(start.device)
        self.spectrum = start.requires_grad_()
        self.size = size
        self.params = [self.spectrum]
        self.root = colours.root.to(start.device)
        self.whiten = torch.linalg.inv(colours.root.double()).float().to(start.device)
        self.centre = colours.mean.to(start.device).reshape(1, -1, 1, 1)
        self.radius = math.sqrt(start.shape[1])

    @staticmethod
    def start(shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
        import torch

        c, h, w = shape
        return 0.01 * torch.randn((c, h, w // 2 + 1, 2), generator=generator)

    def __call__(self) -> torch.Tensor:
        import torch

        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        components = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        length = components.norm(dim=1, keepdim=True).clamp_min(1e-6)
        components = components * (self.radius * (length / self.radius).tanh() / length)
        return (self.centre + torch.einsum("cd,ndhw->nchw", self.root, components)).clamp(0.0, 1.0)

    def penalty(self, images: torch.Tensor, tv: float, l2: float) -> torch.Tensor:
        import torch

        components = torch.einsum("cd,ndhw->nchw", self.whiten, images - self.centre)
        return tv * self.TV_SHARE * _total_variation(components) + l2 * components.square().flatten(1).sum(1)


class _Adam:
    """Adam (Kingma & Ba, 2015) with its default betas, written out: ``torch.optim`` imports torch._dynamo
    on first use, which costs more than a whole 256-step optimisation of the tutorial's conv2."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        self.steps = 0

    def step(self) -> None:
        import torch

        self.steps += 1
        b1, b2 = self.betas
        size = self.lr / (1 - b1**self.steps)
        with torch.no_grad():
            for p, (m, v) in zip(self.params, self.moments, strict=True):
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / (1 - b2**self.steps)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-size)
                p.grad = None


def _transform(
    images: torch.Tensor, jitter: int, scale: float, generator: torch.Generator, rows: torch.Tensor, count: int
) -> torch.Tensor:
    """Every image shifted by up to ``jitter`` px and scaled by 1 ± ``scale``, its own draw each.

    Draws are made for all ``count`` channels (or classes) and ``rows`` picks the optimised ones, so an
    image does not depend on which others are optimised with it.
    """
    import torch
    import torch.nn.functional as F

    n, _c, h, w = images.shape
    shifts = torch.randint(-jitter, jitter + 1, (count, 2), generator=generator)[rows].float()
    zoom = 1.0 + scale * (2 * torch.rand(count, generator=generator)[rows] - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0 / zoom
    theta[:, 1, 1] = 1.0 / zoom
    # affine_grid works in [-1, 1] coordinates (align_corners=False: one pixel is 2/size).
    theta[:, 0, 2] = shifts[:, 1] * 2.0 / w
    theta[:, 1, 2] = shifts[:, 0] * 2.0 / h
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _reach(run, reference, mean_t, std_t, unit: tuple[int, int]) -> int:
    """How many pixels (the longer side of the bounding box) the centre units' gradients reach on the
    reference start images: the receptive field as far as this network actually uses it."""
    import torch

    with torch.enable_grad():
        images = reference().detach().requires_grad_()
        output = run((images - mean_t) / std_t)
        output[:, :, unit[0], unit[1]].sum().backward()
    support = images.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(dim=1).nonzero(), support.any(dim=0).nonzero()
    if len(rows) == 0:
        return 0
    return int(max(rows.max() - rows.min(), cols.max() - cols.min())) + 1


REDIRECTED_STEPS = 16


@contextlib.contextmanager
def _redirected_relus(model: nn.Module) -> Iterator[list[bool]]:
    """While ``switch[0]`` is True, every ``nn.ReLU`` of the model also passes the gradient that would make a
    silent unit fire (as Lucid's "redirected ReLU" does): a unit that starts below zero, or a max-pool over
    silent units, would otherwise never receive a gradient. Forward values are unchanged; the modules'
    own ``forward`` comes back when the block ends."""
    import torch
    from torch import nn

    class Redirected(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_min(0)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            # grad is d(loss)/d(output): negative where a larger output lowers the loss.
            return grad * ((x > 0) | (grad < 0)).to(grad.dtype)

    switch = [True]
    patched = [m for m in model.modules() if type(m) is nn.ReLU]

    def make(module):
        original = module.forward

        def forward(x):
            return Redirected.apply(x) if switch[0] and torch.is_grad_enabled() else original(x)

        return forward

    for module in patched:
        module.forward = make(module)
    try:
        yield switch
    finally:
        for module in patched:
            del module.forward


def _total_variation(images: torch.Tensor) -> torch.Tensor:
    """Per image: sum of squared differences between vertical and horizontal neighbours."""
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).square().flatten(1).sum(1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).square().flatten(1).sum(1)
    return dy + dx


def maximize(
    model: nn.Module,
    layer: str | None,
    indices: Sequence[int] = (),
    *,
    input_shape: Sequence[int],
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    config: MaximizeConfig | None = None,
    colours: ColourSpace | None = None,
    on_step: BatchCallback | None = None,
) -> Maximized:
    """Optimise one input per channel of ``layer`` (per class of the logits when ``layer`` is None).

    ``indices``: the channels (or classes); all of them when empty. ``input_shape``: (C, H, W) of one input.
    ``mean``/``std``: the run's normalisation, one value or one per input channel. ``colours``: where the
    Fourier parameterisation optimises colours (``ColourSpace.of_pixels`` of the data); without it, each
    channel on its own within [0, 1], centred on ``mean`` and scaled by ``std``. The model is used in eval
    mode and left unchanged (its parameters receive no gradients).
    """
    import torch

    config = config or MaximizeConfig()
    c, h, w = (int(v) for v in input_shape)
    was_training = model.training
    model.eval()
    device = _device_of(model)
    shape = probe_output(model, layer, (c, h, w))
    indices = _check_indices(layer, indices, shape)
    n = len(indices)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    kind = config.parameterisation
    if kind == "auto":
        kind = "pixel" if c == 1 else "fourier"
    parameterisation = _Pixels if kind == "pixel" else _Fourier
    space = colours if colours is not None else ColourSpace.plain(c, mean, std)

    def start(index: int) -> torch.Tensor:
        # Each channel's start image has its own generator, so it is the same whatever else is optimised.
        return parameterisation.start((c, h, w), torch.Generator().manual_seed(config.seed * 1_000_003 + index))

    def make(starts: list[torch.Tensor]):
        batch = torch.stack(starts).to(device)
        return _Pixels(batch) if kind == "pixel" else _Fourier(batch, (h, w), space)

    image_of = make([start(i) for i in indices])
    # The objective is divided by the spread of the layer's output on the start images of (up to) its
    # first 8 channels: a scale of the layer, not of the channels chosen.
    reference = make([parameterisation.REFERENCE * start(i) for i in range(min(shape[0], 8))])
    generator = torch.Generator().manual_seed(config.seed)
    field = None
    scale = config.scale if config.transforms else 0.0
    rows = torch.arange(n, device=device)
    channels = torch.tensor(indices, device=device)
    unit = None if layer is None else (shape[1] // 2, shape[2] // 2)

    def objective(output: torch.Tensor) -> torch.Tensor:
        if layer is None:
            return output[rows, channels]
        return output[rows, channels, unit[0], unit[1]]

    requires_grad = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        rectifier = find_module(model, layer) if layer is not None else None
        rectifier = rectifier if rectifier is not None and _rectifier(rectifier) else None
        with _observe(model, layer, before_rectifier=True) as run, _redirected_relus(model) as redirect:
            redirect[0] = False  # the true gradients for measuring the field
            with torch.no_grad():
                spread = run((reference() - mean_t) / std_t).float().std().item()
            norm = spread if spread > 1e-8 and math.isfinite(spread) else 1.0
            if unit is not None:
                field = _reach(run, reference, mean_t, std_t, unit)
            jitter = config.jitter_for(h, w, field) if config.transforms else 0
            optimizer = _Adam(image_of.params, config.lr)
            for step in range(config.steps):
                redirect[0] = step < REDIRECTED_STEPS
                images = image_of()
                seen = _transform(images, jitter, scale, generator, channels.cpu(), shape[0]) if jitter or scale else images
                reached = objective(run((seen - mean_t) / std_t)) / norm
                penalty = image_of.penalty(images, config.tv, config.l2)
                loss = (penalty - reached).sum()
                loss.backward()
                optimizer.step()
                if on_step is not None:
                    on_step(step + 1, config.steps)
            redirect[0] = False
            with torch.no_grad():
                images = image_of().detach()
                output = run((images - mean_t) / std_t).float()
        if rectifier is not None:  # report what the layer itself outputs (its hook is off by now)
            with torch.no_grad():
                output = rectifier(output.clone())
    finally:
        for p, flag in zip(model.parameters(), requires_grad, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    activations = objective(output).cpu()
    if layer is None:
        peaks = activations.clone()
        probabilities = output.softmax(dim=1)[rows, channels].cpu()
    else:
        peaks = output[rows, channels].flatten(1).amax(dim=1).cpu()
        probabilities = None
    return Maximized(layer, indices, images.cpu(), activations, peaks, probabilities, unit, shape, field, jitter)


def dataset_top(
    model: nn.Module,
    layer: str | None,
    indices: Sequence[int],
    images: torch.Tensor,
    *,
    k: int = 1,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    batch_size: int = 512,
    on_batch: BatchCallback | None = None,
) -> TopK:
    """The ``k`` real images on which each channel (at its strongest position) or class score is highest.

    ``images``: (N, H, W) or (N, C, H, W), uint8 (0..255) or float in [0, 1], normalised here like the
    optimised ones. Returns a TopK of shape (len(indices), k), strongest first (positions are 0 for
    class scores); ``values[:, 0]`` is the largest value over all the images. Ties go to the lower index.
    """
    import torch

    from cnnviz_cli.models.patches import RunningTopK

    n = int(images.shape[0])
    if n == 0:
        raise UsageError("There are no images to compare with.")
    device = _device_of(model)
    rows = torch.tensor(list(indices), dtype=torch.int64)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
    running = RunningTopK(min(k, n))
    was_training = model.training
    model.eval()
    batches = (n + batch_size - 1) // batch_size
    try:
        with torch.inference_mode(), _observe(model, layer) as run:
            for b in range(batches):
                start = b * batch_size
                batch = images[start : start + batch_size]
                batch = batch.unsqueeze(1) if batch.dim() == 3 else batch
                batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
                output = run((batch.to(device) - mean_t) / std_t).float().cpu()[:, rows]
                running.update(output if output.dim() == 4 else output[:, :, None, None], start)
                if on_batch is not None:
                    on_batch(b + 1, batches)
    finally:
        model.train(was_training)
    return running.result()
