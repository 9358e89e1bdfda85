"""The automatic mode: how far a stream has drifted, read from its BN state alone, and what to do.

Shift. Per BN layer l, s_l is a divergence (ema_bn.layer_divergence) between the stream's EMA moments
and the source moments, in units of tau_l: a high
percentile of the same quantity over in-domain (source_val) frames run through the same EMA, stored
in the checkpoint by `calibrate`. The stream's shift score is the mean of s_l / tau_l over layers
(about 1 at the edge of what in-domain frames do).

Alpha, per layer and per frame:  alpha_l = clip(2 - s_l / tau_l, floor, 1), decided inside layer l from
its state just updated with the frame (ema_bn.AlphaRule), so that the frame's own statistics count at once:
decided from the state before the frame, the first frame of a new domain was normalised as the old
domain's and, after a restart, the next one with the source statistics (on continual10, four frames a
segment, 51.9 mIoU against 56.6 now: docs/results/peers.md). A layer that looks like the source keeps the
source statistics (in-domain frames are not hurt); one that has drifted twice as far as anything in-domain
uses the stream's own. One global score reacts too little (BENCHMARK.md): shifts such as contrast or noise
move a few layers very far. The floor keeps most of the source where a natural drift moves a layer (dusk: up
to ~7 tau on the dev stream, where the frame's own statistics cost more than they give); beyond `far` tau
it falls linearly to `low` at twice that (AlphaCurve): fog, contrast, blur, noise and night move layers 8 to
50 tau (experiments/results/layer-shift.md), further than the source statistics can describe.

Reach (`reach=1`): the floor of every layer falls with the stream's reach, the largest layer shift of its
last frame, as well as with the layer's own. A stream that moves some layer further than a natural drift
does is far from the source as a whole, and its other layers follow its frames more: a blur moves a few of
its first layers 9 to 22 tau, noise its middle ones up to 16, and they gain 0.5 to 2.3 mIoU on the dev
streams from their other layers following, while dusk (largest shift about 5 tau) keeps the floor everywhere
(experiments/results/auto-reach.md). The last frame's, not this one's: a layer decides before the layers
after it have seen the frame. 0 on a stream's first frame and after a restart.

Momentum: m_n = max(1 / (n + 1), m) for the n-th frame (from 0) since the last restart: the state
is the plain average of the frames seen until the EMA takes over. The source does not count as a
frame: its moments mixed into a far domain's would add a large (mu_s - mu_t)^2 term to the variance
for many frames.

Switch. The frame's own moments are recovered exactly from the old and new state
(new = (1 - m) old + m frame); their divergence from the old state, in units of kappa_l (the largest
such value in-domain), averaged over layers, is the switch score. Frames of some domains jump more
than in-domain ones (dark, noisy frames), so the score is compared with the stream's own running
level of it, never below 1: above `switch` times that the stream restarts from the source, so a new
domain is tracked at once instead of through a slow EMA. No restart within the first 1 / m frames
after one, while the average fills and the level is learnt.

Guard (`guard=N`, off by default): whether adapting pays, judged without labels. On the first frame
after a restart and every N-th after it, the frozen model (BN folded) predicts the frame too, and
the two predictions' information maximisation is compared, IM = H(mean_pixels p) - mean_pixels H(p): high
where the prediction is sure of each pixel and the classes stay diverse (a domain that the frozen model
gets wrong tends to make it sure of one or two classes, or unsure everywhere). The stream's gain is the
running mean (1/2 each) of IM(adapted) - IM(frozen) over its checks; while it is below 0 the stream is
served the frozen model's prediction on a check and the source statistics (alpha 1) in between, its EMA
state still following the frames (under the source normalisation from the second layer on), so that a
later check can find adapting pays again. A restart clears
the gain. The checks cost a frozen forward on 1 frame in N, and a branch taken on the host (eager and
compiled engines; not exported).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import ClassVar

import torch

from driftseg.adapters.component import run_network
from driftseg.adapters.ema_bn import EMA, AdaptedNet, channel_divergence, divergence_scale, layer_divergence, variance
from driftseg.models.batchnorm import fold_batchnorm

HISTORY = 32  # switch events kept in a stream's state
UNMOVED = 1e-12  # the calibration of a layer that no in-domain frame moved


def information(logits: torch.Tensor) -> torch.Tensor:
    """[B]: the information maximisation of each sample's prediction (logits [B, C, H, W]): the entropy of
    its mean class distribution over pixels minus the mean entropy of its pixels."""
    log_p = logits.float().log_softmax(1)
    p = log_p.exp()
    pixel_entropy = -(p * log_p).sum(1).mean((1, 2))
    marginal = p.mean((2, 3))
    return -(marginal * marginal.clamp_min(torch.finfo(marginal.dtype).tiny).log()).sum(1) - pixel_entropy


@dataclass(frozen=True)
class AlphaCurve:
    """alpha of a layer's shift s (in units of tau): clip(2 - s, floor(max(s, reach)), 1), where floor(x) is
    `floor` up to x = far and falls linearly to `low` at x = 2 far (far 0: `floor` for every shift); `reach`
    (broadcast against s), the stream's, 0 by default (module docstring)."""

    floor: float
    far: float = 0.0
    low: float = 0.0

    def __call__(self, shift: torch.Tensor, reach: torch.Tensor | None = None) -> torch.Tensor:
        if not self.far:
            return (2 - shift).clamp(self.floor, 1.0)
        slope = (self.floor - self.low) / self.far
        farthest = shift if reach is None else torch.maximum(shift, reach)
        floor = (2 * self.floor - self.low - slope * farthest).clamp(self.low, self.floor)
        return torch.maximum(2 - shift, floor).clamp_max(1.0)


@dataclass(frozen=True)
class ShiftAlpha:
    """auto's ema_bn.AlphaRule: a layer's alpha from the shift of its state just updated with the frame (its
    layer_divergence from the source over tau), with what it takes from the source and tau computed once
    per layer (`of`); `reach` [B], each stream's (AlphaCurve); the streams in `hold` ([B] bool) keep the source
    statistics (alpha 1)."""

    # per channel of every layer: the source mean, log(var + f), 1 / var_s and f (ema_bn.channel_divergence), [4, N]:
    # one tensor, sliced per layer inside the forward, so that a compiled graph takes one input for it, not four per
    # layer (each a guard, a size check and a Python call in the compiled wrapper)
    source: torch.Tensor
    bounds: list[tuple[int, int]]  # per layer, its channels' (start, end) in `source`
    inverse_tau: list[float]
    curve: AlphaCurve
    reach: torch.Tensor | None = None
    hold: torch.Tensor | None = None

    @classmethod
    def of(cls, adapted: AdaptedNet, tau: torch.Tensor, curve: AlphaCurve) -> ShiftAlpha:
        mean, sq = adapted.source
        inverse_var_s, f = divergence_scale(adapted.source)
        bounds = [(end - size, end) for end, size in zip(accumulate(adapted.sizes), adapted.sizes)]
        return cls(torch.stack([mean, torch.log(variance(mean, sq) + f), inverse_var_s, f]), bounds, (1 / tau).tolist(),
                   curve)

    def __call__(self, layer: int, mean: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        start, end = self.bounds[layer]
        shift = channel_divergence(mean, sq, *self.source[:, start:end]).mean(1) * self.inverse_tau[layer]
        alpha = self.curve(shift, self.reach)
        return alpha if self.hold is None else alpha.masked_fill(self.hold, 1.0)


def momentum_schedule(since_reset: torch.Tensor, floor: float) -> torch.Tensor:
    return (1.0 / (since_reset.float() + 1)).clamp_min(floor)


def frame_moments(old: torch.Tensor, new: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
    """The frame's own moments [B, 2, N], recovered from an EMA step new = (1 - m) old + m frame."""
    m = momentum[:, None, None]
    return (new - (1 - m) * old) / m


@dataclass
class ShiftCalibration:
    """What in-domain frames look like to the shift and switch scores, per BN layer."""

    tau: torch.Tensor  # [L] percentile of the state's divergence from the source
    kappa: torch.Tensor  # [L] largest divergence of a frame from the state before it
    momentum: float
    split: str
    frames: int

    def to_dict(self) -> dict:
        return {"tau": self.tau.tolist(), "kappa": self.kappa.tolist(), "momentum": self.momentum,
                "split": self.split, "frames": self.frames}

    @classmethod
    def from_dict(cls, d: dict, layers: int) -> ShiftCalibration:
        """The calibration of the first `layers` BN layers (those a network adapts)."""
        try:
            cal = cls(torch.tensor(d["tau"], dtype=torch.float32), torch.tensor(d["kappa"], dtype=torch.float32),
                      float(d["momentum"]), str(d["split"]), int(d["frames"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed shift calibration in the checkpoint: {e!r}") from None
        for name in ("tau", "kappa"):
            value = getattr(cal, name)
            if value.ndim == 1 and len(value) > layers:
                value = value[:layers]
                setattr(cal, name, value)
            if value.shape != (layers,) or not bool((value > 0).all()) or not bool(torch.isfinite(value).all()):
                raise ValueError(f"shift calibration {name} should be {layers} positive finite values, "
                                 f"got shape {list(value.shape)}")
        return cal


@torch.no_grad()
def calibrate(adapted: AdaptedNet, frames: Iterable[torch.Tensor], momentum: float, split: str,
              percentile: float = 90.0) -> ShiftCalibration:
    """Run in-domain frames ([1, 3, H, W] each, at the network's input size) through the frozen
    normalisation (alpha 1) with the automatic mode's momentum schedule, and record how far the
    state drifts from the source (tau, at `percentile`) and how far a frame sits from the state
    before it (kappa, the maximum)."""
    source = adapted.source_state()
    state = source[None].clone()
    shifts, jumps = [], []
    for n, frame in enumerate(frames):
        m = momentum_schedule(torch.tensor([n]), momentum).to(state.device)
        _, new = adapted(frame.to(state.device), state, m, torch.ones(1, device=state.device))
        shifts.append(layer_divergence(new, source, source, adapted.sizes)[0])
        if n:  # the first frame is measured against the source, not against a state of its stream
            jumps.append(layer_divergence(frame_moments(state, new, m), state, source, adapted.sizes)[0])
        state = new
    if len(jumps) < 2:
        raise ValueError(f"calibration needs at least 3 frames of {split}, got {len(shifts)}")
    # a layer the forward never reaches (an unused part of the network: smp keeps the encoder stages past
    # its depth) never moves from the source: a floor keeps its scores 0 instead of 0 / 0
    tau = torch.quantile(torch.stack(shifts), percentile / 100, dim=0).clamp_min(UNMOVED)
    kappa = torch.stack(jumps).amax(0).clamp_min(UNMOVED)
    return ShiftCalibration(tau.cpu(), kappa.cpu(), momentum, split, len(shifts))


@dataclass
class AutoState:
    """One stream's automatic-mode state: frames since its last restart, the shift score, reach (its largest
    layer shift) and per-layer alpha of its last frame, the switch score and its running level, and the frames
    at which it saw a domain switch (the last HISTORY)."""

    alpha: torch.Tensor  # [L]
    since_reset: int = 0
    score: float = 0.0
    reach: float = 0.0
    switch_score: float = 0.0
    switch_level: float = 0.0
    switches: list[int] = field(default_factory=list)

    @classmethod
    def initial(cls, layers: int, device: torch.device | str | None = None) -> AutoState:
        return cls(alpha=torch.ones(layers, device=device))

    def reset(self) -> None:
        self.alpha = torch.ones_like(self.alpha)
        self.since_reset, self.switches = 0, []
        self.score = self.reach = self.switch_score = self.switch_level = 0.0

    def state_dict(self) -> dict:
        return {"alpha": self.alpha.clone(), "since_reset": self.since_reset, "score": self.score, "reach": self.reach,
                "switch_score": self.switch_score, "switch_level": self.switch_level, "switches": list(self.switches)}

    def load_state_dict(self, d: dict) -> None:
        alpha = d.get("alpha")
        if not isinstance(alpha, torch.Tensor) or alpha.shape != self.alpha.shape:
            got = list(alpha.shape) if isinstance(alpha, torch.Tensor) else type(alpha).__name__
            raise ValueError(f"auto alpha must be a tensor of shape {list(self.alpha.shape)}, got {got}")
        if not bool(((alpha >= 0) & (alpha <= 1)).all()):
            raise ValueError("auto alpha must lie in [0, 1]")
        since, switches = d.get("since_reset"), d.get("switches")
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError(f"auto since_reset must be a non-negative int, got {since!r}")
        if not isinstance(switches, list) or not all(isinstance(s, int) for s in switches):
            raise ValueError("auto switches must be a list of frame numbers")
        # a state saved before streams kept their reach has none: 0, as after a restart
        scores = [d.get("score"), d.get("reach", 0.0), d.get("switch_score"), d.get("switch_level")]
        if not all(isinstance(s, float) and s == s and abs(s) != float("inf") for s in scores) or scores[1] < 0:
            raise ValueError(f"auto score, reach (>= 0), switch_score and switch_level must be finite floats, got {scores}")
        self.alpha, self.since_reset, self.switches = alpha.to(self.alpha).clone(), since, switches[-HISTORY:]
        self.score, self.reach, self.switch_score, self.switch_level = scores


@dataclass
class GuardState:
    """A guarded stream's gain: the running IM(adapted) - IM(frozen) of its checks since its last restart
    (NaN before the first)."""

    gain: float = float("nan")

    def reset(self) -> None:
        self.gain = float("nan")

    def state_dict(self) -> dict:
        return {"gain": self.gain}

    def load_state_dict(self, d: dict) -> None:
        gain = d.get("gain")
        if not isinstance(gain, float) or abs(gain) == float("inf"):
            raise ValueError(f"guard gain must be a float (NaN before the first check), got {gain!r}")
        self.gain = gain


@dataclass(frozen=True)
class AutoConfig:
    m: float = 0.1  # the EMA's momentum once the average has filled
    floor: float = 0.0  # the lowest alpha a layer gets, up to a shift of `far` tau
    far: float = 0.0  # beyond this shift (in tau) the floor falls, to `low` at twice it; 0: it never does
    low: float = 0.0
    reach: int = 0  # 1: the floor falls with the stream's reach too (its largest layer shift); needs far
    switch: float = 2.0  # restart when a frame jumps this many times the stream's running level
    layers: int = 0  # BN layers adapted, the first ones; 0: all
    stride: int = 1  # frame statistics from every stride-th pixel and row (ema_bn.AdaptedNet)
    guard: int = 0  # check whether adapting pays on every guard-th frame against the frozen model; 0: off
    # not a parameter: the momentum schedule starts every stream at m = 1, where a lag collapses (EMAConfig)
    lag: ClassVar[int] = 0

    def __post_init__(self):
        if not 0.0 <= self.m <= 1.0:
            raise ValueError(f"auto m must be in [0, 1], got {self.m}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"auto floor must be in [0, 1], got {self.floor}")
        if self.far and not (self.far >= 1 and 0.0 <= self.low <= self.floor):
            raise ValueError(f"auto far must be 0 (off) or >= 1 tau, with low in [0, floor]; got far={self.far}, "
                             f"low={self.low}, floor={self.floor}")
        if self.reach not in (0, 1) or (self.reach and not self.far):
            raise ValueError(f"auto reach must be 0 (off) or 1 (the floor falls with the stream's largest layer "
                             f"shift), and 1 needs far > 0; got reach={self.reach}, far={self.far}")
        if not self.switch > 0:
            raise ValueError(f"auto switch must be > 0, got {self.switch}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0 (0: all BN layers), got {self.layers}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1 (1: every pixel), got {self.stride}")
        if self.guard < 0:
            raise ValueError(f"auto guard must be >= 0 frames (0: off), got {self.guard}")


class Auto(EMA):
    """`auto`: EMA AdaBN with the per-layer alpha of the shift score and restarts at domain switches.
    A stream's parts: its NormState ("norm") and AutoState ("auto"); in the batch, "stats", and "alpha"
    [B, L], "since", "level", "score", "reach", "switch_score", "frames" [B], "switches" [B, HISTORY]."""

    name, Config = "auto", AutoConfig

    @classmethod
    def export_refusal_of(cls, config):
        return "its guard decides on the host which frames to check" if config.guard else super().export_refusal_of(config)

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        if "shift" not in ckpt.extra:
            raise ValueError("auto needs the checkpoint's shift calibration: run `driftseg calibrate --checkpoint FILE`")
        self.calibration = ShiftCalibration.from_dict(ckpt.extra["shift"], len(self.module.norms))
        self.tau, self.kappa = self.calibration.tau.to(device), self.calibration.kappa.to(device)
        self.rule = ShiftAlpha.of(self.module, self.tau, AlphaCurve(config.floor, config.far, config.low))
        self.frozen = fold_batchnorm(model).to(device) if config.guard else None

    def new_state(self):
        guard = {"guard": GuardState()} if self.config.guard else {}
        return {**super().new_state(), "auto": AutoState.initial(len(self.module.norms), self.device), **guard}

    def stack(self, states):
        autos = [s.parts["auto"] for s in states]
        # "alpha", the last frame's, is not read by the step (each layer decides its own): carried so that the
        # state kept on the device (adapters/pool.py) has it
        batch = {**super().stack(states), "alpha": torch.stack([a.alpha for a in autos]),
                 "since": torch.tensor([a.since_reset for a in autos], device=self.device),
                 "level": torch.tensor([a.switch_level for a in autos], device=self.device),
                 "score": torch.tensor([a.score for a in autos], device=self.device),
                 "reach": torch.tensor([a.reach for a in autos], device=self.device),
                 "switch_score": torch.tensor([a.switch_score for a in autos], device=self.device),
                 # the frames seen and the last HISTORY switches, -1 before the first: the history is kept
                 # on the device, so that a restart is never read back to the host during a step
                 "frames": torch.tensor([s.frames for s in states], device=self.device),
                 "switches": torch.tensor([[-1] * (HISTORY - len(a.switches)) + a.switches for a in autos],
                                          dtype=torch.long, device=self.device)}
        if self.config.guard:  # checks on the first frame after a restart, then every guard-th
            batch["gain"] = torch.tensor([s.parts["guard"].gain for s in states], device=self.device)
            batch["check"] = torch.tensor([a.since_reset % self.config.guard == 0 for a in autos], device=self.device)
        return batch

    def forward(self, images, batch, out, scratch):
        """The frame normalised with the alpha each layer decides (ShiftAlpha), the shift score and the switch
        test, all as tensors: a stream that switches restarts from the source."""
        b, old, since, cfg = images.shape[0], batch["stats"], batch["since"], self.config
        momentum = momentum_schedule(since, cfg.m)
        reach = batch["reach"] if cfg.reach else None
        rule = replace(self.rule, reach=reach) if cfg.reach else self.rule
        if cfg.guard:
            logits, stats = self.guarded(images, batch, momentum, rule, out, scratch)
        else:
            logits, stats = self.module(images, old, momentum, rule, scratch)
        # the shift (new state against the source) and the jump (this frame against the old state) in one call
        divergence = layer_divergence(torch.cat([stats, frame_moments(old, stats, momentum)]),
                                      torch.cat([self.source.expand_as(old), old]), self.source, self.module.sizes)
        shift, jump = divergence[:b] / self.tau, (divergence[b:] / self.kappa).mean(1)
        warm = round(1 / max(cfg.m, 1e-3))  # no second restart before the EMA has filled
        restart = (since >= warm) & (jump > cfg.switch * batch["level"].clamp_min(1.0))
        out["restart"] = restart
        out["stats"] = torch.where(restart[:, None, None], self.source, stats)
        out["alpha"] = self.rule.curve(shift, None if reach is None else reach[:, None])  # what the layers decided
        out["reach"] = torch.where(restart, 0.0, shift.amax(1))
        out["since"] = torch.where(restart, 0, since + 1)
        out["level"] = torch.where(restart, 0.0, torch.lerp(batch["level"], jump, momentum))
        out["score"], out["switch_score"] = shift.mean(1), jump
        out["frames"] = frames = batch["frames"] + 1
        appended = torch.cat([batch["switches"][:, 1:], frames[:, None]], 1)
        out["switches"] = torch.where(restart[:, None], appended, batch["switches"])
        if cfg.guard:
            out["gain"] = torch.where(restart, float("nan"), out["gain"])
        return logits

    def guarded(self, images, batch, momentum, rule, out, scratch):
        """The adapted network's (logits, new stats) where the stream's gain says adapting pays, the frozen
        model's prediction (or the source statistics) where it does not; the checks due update the gain
        into out["gain"] (module docstring)."""
        gain, check = batch["gain"], batch["check"]
        if not bool(check.any()):  # between checks: one forward, the source statistics where it does not pay
            out["gain"] = gain
            return self.module(images, batch["stats"], momentum, replace(rule, hold=gain < 0), scratch)
        logits, stats = self.module(images, batch["stats"], momentum, rule, scratch)
        frozen_scratch = dict.fromkeys(scratch)
        frozen = run_network(self.frozen, images, frozen_scratch)
        d = information(logits) - information(frozen)
        out["gain"] = gain = torch.where(check, torch.where(gain.isnan(), d, torch.lerp(gain, d, 0.5)), gain)
        adapted = ~(gain < 0)[:, None, None, None]
        for key, value in frozen_scratch.items():
            scratch[key] = torch.where(adapted, scratch[key], value)
        return torch.where(adapted, logits, frozen), stats

    def scatter(self, old, new, out):
        super().scatter(old, new, out)
        # one read back to the host for every stream's scalars and switch history (float64: frame numbers exact)
        scalars = [out["score"], out["reach"], out["switch_score"], out["level"], out["since"]]
        scalars += [out["gain"]] if self.config.guard else []
        host = torch.stack([t.double() for t in scalars] + list(out["switches"].double().T), 1).tolist()
        for s, prev, alpha, row in zip(new, old, out["alpha"], host):
            (score, reach, jump, level, since, *gain), switches = row[:len(scalars)], row[len(scalars):]
            s.parts["auto"] = replace(prev.parts["auto"], alpha=alpha, since_reset=int(since), score=score, reach=reach,
                                      switch_score=jump, switch_level=level,
                                      switches=[int(f) for f in switches if f >= 0])
            if gain:
                s.parts["guard"] = GuardState(gain[0])

    def describe(self, state):
        auto = state.parts["auto"]
        guard = {}
        if self.config.guard:
            gain = state.parts["guard"].gain
            guard = {"guard_gain": None if gain != gain else gain}
        return {"since_reset": auto.since_reset, "reach": auto.reach, "switches": list(auto.switches),
                "layers": self.layer_views(state, alpha=auto.alpha, tau=self.tau), **guard}

    def shift(self, state):
        auto = state.parts["auto"]
        return float(auto.score), float(auto.alpha.float().mean())
