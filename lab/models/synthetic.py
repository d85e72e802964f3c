"""Synthetic models: calibrated timing and acceptance, fake token ids, deterministic by seed.

They implement the LanguageModel/Session protocol, so the same decoding code,
nodes and protocol run over them — only the compute is replaced by waiting
the profile's time for real (the nodes are real processes; the lab measures
the network, not the model).  Each wait is also reported (`compute_ms`,
`last_compute_ms` on the session) so the simulator can use the same numbers.

Tokens: the target's greedy token at sequence position i is a hash of
(seed, i).  The draft proposes that same token when it *agrees* at i, and
(true + 1) mod V otherwise.  Agreement is decided without communication, so
edge and cloud processes agree on it:
  * i.i.d.: a hash of (seed, i) below α — acceptance is i.i.d. with rate α
    per position, the regime of E[τ] = (1 − α^(K+1)) / (1 − α);
  * trace:  a list of accept counts [n0, n1, …] read as runs of agreement
    (n0 agreeing positions, one disagreeing, n1 agreeing, …, repeating),
    counted from the first generated position; with K ≥ every n the greedy
    cycles accept exactly n0, n1, …; with smaller K, the same agreement
    pattern is cut into shorter cycles (as a real draft/target pair would).
  * per prompt: a profile measured on named prompts (`lab profile`) carries
    each prompt's own agreement string; a session whose prompt is one of them
    follows it (generated position i agrees iff digit i is 1), then the rules above.
Logits put 10.0 on the chosen token and 0 elsewhere, so at temperature 0 the
loop sees exactly this; at T > 0 the distributions are soft and acceptance
differs from α (not calibrated for sampling).  Where the profile measured the
draft's confidence (prompt_confidence: its probability of its own greedy token
at each position), the draft's peak logit is set so that its softmax gives that
probability: a confidence stop (lab/core/decoding.draft_tokens) ends blocks
where the real draft's would.

Profile (YAML): t_draft_ms (one draft forward, any length), verify_a_ms +
verify_b_ms·n (one target forward over n tokens), prefill_ms_per_token
(both models), alpha or trace, prompt_agreement, vocab, seed.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml

from lab.core import spec
from lab.models import ModelError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "embedded-cpu"


def nasd_table_path(profile: str) -> Path:
    """Where `python -m lab calibrate` puts a profile's NASD table, and where nasd looks by default:
    beside the profile's YAML — a shipped profile's (NAME) in lab/models/profiles/, a measured host
    profile's (a path) in the cache beside it, so a table is never paired with another host's times."""
    if Path(profile).suffix in (".yaml", ".yml") or "/" in profile:
        return Path(profile).with_suffix(".nasd.json")
    return PROFILE_DIR / f"{profile}.nasd.json"


def nasd_table_for(models: str, dtype: str = "float32", draft_kernels: str | None = None) -> Path | None:
    """The calibrated table for a --models value, if there is one: synthetic:NAME uses NAME's; the
    embedded pair uses its profile's — this host's when `lab profile` and `lab calibrate` have run
    here, else the shipped embedded-cpu one's."""
    kind, _, name = models.partition(":")
    if kind == "synthetic":
        path = nasd_table_path(name or DEFAULT_PROFILE)
        return path if path.is_file() else None
    if kind != "embedded":
        return None
    for candidate in (resolve_profile(DEFAULT_PROFILE, dtype, draft_kernels)[0], DEFAULT_PROFILE):
        path = nasd_table_path(candidate)
        if path.is_file():
            return path
    return None


SPIN_MS = 0.3          # the last part of each wait is spent spinning, for sub-millisecond accuracy
PEAK_LOGIT = 10.0


@dataclass(frozen=True)
class Profile:
    t_draft_ms: float
    verify_a_ms: float
    verify_b_ms: float
    prefill_ms_per_token: float
    alpha: float
    vocab: int = 1000
    seed: int = 0
    trace: tuple[int, ...] | None = None       # accept counts; overrides alpha when given
    # Per prompt (prompt_key of its synthetic encoding → "1101…", one digit per generated position:
    # does the draft agree with the target there?).  A query on a profiled prompt replays its own
    # agreement, as the real pair would on that prompt; elsewhere (and past the measured positions)
    # the trace or alpha decides.
    prompt_agreement: tuple[tuple[str, str], ...] | None = None
    # Per prompt (the same keys): how many tokens the target's greedy answer has, its EOS included,
    # where it ends within the measured continuation.  A query on that prompt ends there, as the real
    # pair's does (a one-line answer is a few cycles, not max_new_tokens); elsewhere it runs to the end.
    prompt_answer: tuple[tuple[str, int], ...] | None = None
    # Per prompt (the same keys): the draft's probability of its own greedy token at each generated
    # position, teacher-forced along the target's answer, in percent, two digits a position ("9712…";
    # 00–99, read as the middle of its percent: encode_confidence / decode_confidence).  Elsewhere
    # SyntheticModel.confidence falls back on these measurements pooled (or, without any, PEAK_LOGIT's).
    prompt_confidence: tuple[tuple[str, str], ...] | None = None
    # t_verify(n) as measured at some sizes ((n, ms), … by n), which a real CPU's need not put on the
    # line a + b·n; the line's slope carries it past them (spec.verify_ms_at).  YAML: {n: ms}.
    verify_ms_by_n: tuple[tuple[int, float], ...] | None = None
    # Forwards the draft spends on a fully accepted block's two-token catch-up: 1, or 2 for a draft whose
    # rows interact (int8), which takes them one a forward (lab/core/decoding.py feed_logits).  The
    # simulator charges t_draft for each, and the synthetic draft feeds them as the real one does.
    draft_catch_up_forwards: int = 1
    name: str = "custom"
    source: str = ""

    def verify_ms(self, n: int) -> float:
        """One target forward over n tokens (n = K + 1 for a verify of K drafts)."""
        return spec.verify_ms_at(n, self.verify_a_ms, self.verify_b_ms, self.verify_ms_by_n or ())


def encode_confidence(probs) -> str:
    """[0.973, 0.5, …] → "9750…": prompt_confidence's two-digit percents (floored, 99 at most)."""
    return "".join(f"{min(int(p * 100), 99):02d}" for p in probs)


def decode_confidence(digits: str) -> tuple[float, ...]:
    """"9750…" → (0.975, 0.505, …): each percent read as its middle."""
    return tuple((int(digits[i:i + 2]) + 0.5) / 100 for i in range(0, len(digits), 2))


def confidence_measured(profile: Profile) -> bool:
    """Whether the profile carries the draft's measured confidence (prompt_confidence, `lab profile`);
    without it a synthetic draft's probabilities are a stand-in (PEAK_LOGIT) that a stop must not read."""
    return bool(profile.prompt_confidence)


def load_profile(name_or_path: str | None) -> Profile:
    """A shipped profile by name (lab/models/profiles/NAME.yaml) or a YAML file by path."""
    is_path = bool(name_or_path) and (Path(name_or_path).suffix != "" or "/" in name_or_path)
    p = Path(name_or_path) if is_path else PROFILE_DIR / f"{name_or_path or DEFAULT_PROFILE}.yaml"
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError:
        raise ModelError(f"no synthetic profile {name_or_path!r} ({p}); known: {', '.join(known_profiles())}") from None
    except yaml.YAMLError as e:
        raise ModelError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ModelError(f"{p}: a profile must be a mapping")
    allowed = {f.name for f in fields(Profile)} - {"name", "source"} | {"provenance"}
    unknown = set(doc) - allowed
    if unknown:
        raise ModelError(f"{p}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    doc.pop("provenance", None)
    if doc.get("trace") is not None:
        if not isinstance(doc["trace"], list):
            raise ModelError(f"{p}: trace must be a list of accept counts")
        doc["trace"] = tuple(doc["trace"])
    if doc.get("prompt_agreement") is not None:
        if not isinstance(doc["prompt_agreement"], dict):
            raise ModelError(f"{p}: prompt_agreement must be a mapping of prompt key to a string of 0/1")
        doc["prompt_agreement"] = tuple((str(k), str(v)) for k, v in doc["prompt_agreement"].items())
    if doc.get("prompt_confidence") is not None:
        if not isinstance(doc["prompt_confidence"], dict):
            raise ModelError(f"{p}: prompt_confidence must be a mapping of prompt key to a string of two-digit percents")
        doc["prompt_confidence"] = tuple((str(k), str(v)) for k, v in doc["prompt_confidence"].items())
    if doc.get("verify_ms_by_n") is not None:
        by_n = doc["verify_ms_by_n"]
        if not isinstance(by_n, dict) or not by_n:
            raise ModelError(f"{p}: verify_ms_by_n must be a mapping of token count to milliseconds")
        try:
            doc["verify_ms_by_n"] = tuple(sorted((int(n), float(ms)) for n, ms in by_n.items()))
        except (TypeError, ValueError):
            raise ModelError(f"{p}: verify_ms_by_n must map token counts to milliseconds, got {by_n!r}") from None
    if doc.get("prompt_answer") is not None:
        if not isinstance(doc["prompt_answer"], dict):
            raise ModelError(f"{p}: prompt_answer must be a mapping of prompt key to a token count")
        doc["prompt_answer"] = tuple((str(k), v) for k, v in doc["prompt_answer"].items())
    try:
        prof = Profile(**{"name": p.stem, "source": str(p), **doc})
    except TypeError as e:
        raise ModelError(f"{p}: {e}") from None
    problem = check_profile(prof)
    if problem:
        raise ModelError(f"{p}: {problem}")
    return prof


def check_profile(prof: Profile) -> str | None:
    """What is wrong with a profile, or None."""
    for k in ("t_draft_ms", "verify_a_ms", "verify_b_ms", "prefill_ms_per_token", "alpha"):
        v = getattr(prof, k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
            return f"{k} must be a number >= 0, got {v!r}"
    if not 0 <= prof.alpha <= 1:
        return f"alpha must be between 0 and 1, got {prof.alpha}"
    if not isinstance(prof.vocab, int) or prof.vocab < 2:
        return f"vocab must be an integer >= 2, got {prof.vocab!r}"
    if not isinstance(prof.seed, int):
        return f"seed must be an integer, got {prof.seed!r}"
    if prof.trace is not None and (not prof.trace or not all(isinstance(n, int) and n >= 0 for n in prof.trace)):
        return "trace must be a non-empty list of accept counts (integers >= 0)"
    for key, bits in prof.prompt_agreement or ():
        if not bits or set(bits) - {"0", "1"}:
            return f"prompt_agreement[{key}] must be a non-empty string of 0 and 1, got {bits!r}"
    for key, digits in prof.prompt_confidence or ():
        if not digits or len(digits) % 2 or not digits.isdigit():
            return f"prompt_confidence[{key}] must be a non-empty string of two-digit percents, got {digits!r}"
    for key, n in prof.prompt_answer or ():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"prompt_answer[{key}] must be a token count >= 1, got {n!r}"
    if prof.draft_catch_up_forwards not in (1, 2) or isinstance(prof.draft_catch_up_forwards, bool):
        return f"draft_catch_up_forwards must be 1 or 2, got {prof.draft_catch_up_forwards!r}"
    by_n = prof.verify_ms_by_n or ()
    for n, ms in by_n:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            return f"verify_ms_by_n: token counts must be whole numbers >= 1, got {n!r}"
        if not isinstance(ms, (int, float)) or not ms >= 0:
            return f"verify_ms_by_n[{n}] must be milliseconds >= 0, got {ms!r}"
    if [n for n, _ in by_n] != sorted({n for n, _ in by_n}):
        return "verify_ms_by_n must list each token count once, in increasing order"
    return None


def known_profiles() -> list[str]:
    return sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))


def profile_provenance(path: str | Path) -> dict:
    """The free-form `provenance` a profile YAML carries (how it was measured), which load_profile
    leaves out; {} when it has none."""
    return (yaml.safe_load(Path(path).read_text()) or {}).get("provenance") or {}


def stale_catch_up(provenance: dict, agreement) -> str | None:
    """A profile of an int8 draft that says its catch-up takes one forward was measured before the draft
    took it one token a forward (lab/core/decoding.py feed_logits): the simulator would charge one
    forward too few after each block accepted whole."""
    if str(provenance.get("draft_kernels") or "").startswith("int8") and agreement.draft_catch_up_forwards == 1:
        return ("this profile of an int8 draft predates its one-token-a-forward catch-up (no "
                "draft_catch_up_forwards: 2): the simulator charges one forward too few after each block "
                "accepted whole (`lab profile` again)")
    return None


def save_profile(profile: Profile, path: Path, provenance: dict | None = None) -> None:
    """Write a profile YAML that load_profile reads back (provenance: free-form, e.g. how it was measured)."""
    problem = check_profile(profile)
    if problem:
        raise ModelError(f"refusing to save a bad profile: {problem}")
    d = {k: v for k, v in asdict(profile).items() if k not in ("name", "source")}
    if d["trace"] is None:
        del d["trace"]
    else:
        d["trace"] = list(d["trace"])
    for key in ("prompt_agreement", "prompt_answer", "prompt_confidence", "verify_ms_by_n"):
        if d[key] is None:
            del d[key]
        else:
            d[key] = dict(d[key])
    if provenance:
        d["provenance"] = provenance
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def spend(ms: float) -> float:
    """Take `ms` of wall time for real: sleep most of it, spin the last SPIN_MS (error ≈ tens of µs on
    an idle core).  Returns the time actually taken, in ms."""
    start = time.perf_counter()
    end = start + ms / 1000
    if ms > SPIN_MS:
        time.sleep((ms - SPIN_MS) / 1000)
    while time.perf_counter() < end:
        pass
    return (time.perf_counter() - start) * 1000


def _h(seed: int, pos: int, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{pos}:{salt}".encode(), digest_size=8).digest(), "big")


def encode_words(prompt: str, vocab: int) -> list[int]:
    """A synthetic model's prompt encoding: a start token, then one id per word (no chat template)."""
    words = prompt.split() or ["<empty>"]
    return [1] + [_h(0, i, w) % vocab for i, w in enumerate(words)]


def prompt_key(token_ids) -> str:
    """A prompt's identity in prompt_agreement: a hash of its synthetic encoding, which the edge, the
    cloud and the simulator each compute from what they have (the ids, or the text via encode_words)."""
    return hashlib.blake2b(",".join(map(str, token_ids)).encode(), digest_size=6).hexdigest()


def _trace_bits(trace: tuple[int, ...]) -> tuple[bool, ...]:
    """[2, 0, 3] → agree agree DISAGREE | DISAGREE | agree agree agree DISAGREE."""
    bits: list[bool] = []
    for n in trace:
        bits += [True] * n + [False]
    return tuple(bits)


class SyntheticSession:
    """One sequence: only its length matters (tokens are a function of position)."""

    def __init__(self, model: "SyntheticModel"):
        self.m = model
        self.length = 0
        self.origin = 0                   # prompt length: generated positions count from here (traces)
        self.key = ""                     # prompt_key of the prompt (per-prompt agreement)
        self._prefix: list[int] | None = None     # a prompt short of its last token (prefill)
        self.compute_ms = 0.0             # wall time spent in this session's forwards, as measured
        self.last_compute_ms = 0.0        # … in the last call
        self.rows_interact = model.rows_interact

    def _spend(self, ms: float) -> None:
        self.last_compute_ms = spend(ms)
        self.compute_ms += self.last_compute_ms

    def _logits(self, pos: int) -> np.ndarray:
        row = np.zeros(self.m.vocab_size, dtype=np.float32)
        row[self.m.token_at(pos, self.origin, self.key)] = self.m.peak_logit(pos, self.origin, self.key)
        return row

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        if self.length:
            raise ModelError("prefill on a non-empty session")
        if not token_ids:
            raise ModelError("prefill needs at least one token")
        self._spend(self.m.profile.prefill_ms_per_token * len(token_ids))
        self.length = self.origin = len(token_ids)
        self.key = prompt_key(token_ids) if self.m.per_prompt or self.m.answer or self.m.sure else ""
        # The target's cache holds the prompt but its last token (lab/core/decoding.py TargetState), which
        # comes with the first extend: if that completes a profiled prompt, the session is that prompt's.
        self._prefix = list(token_ids) if self.key and self.key not in self.m.answer else None
        return self._logits(self.length)

    def extend(self, token_ids: list[int]) -> np.ndarray:
        n = len(token_ids)
        if self.length == 0:
            raise ModelError("extend before prefill")
        if n == 0:
            return np.zeros((0, self.m.vocab_size), dtype=np.float32)
        self._spend(self.m.forward_ms(n))
        if self._prefix is not None:
            whole, self._prefix = prompt_key(self._prefix + [int(token_ids[0])]), None
            if whole in self.m.answer:
                self.key, self.origin = whole, self.origin + 1
        start = self.length
        self.length += n
        return np.stack([self._logits(start + i + 1) for i in range(n)])     # [n, V]

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ModelError(f"rollback to {length} outside 0..{self.length}")
        self.length = length


class SyntheticModel:
    """role "target": greedy token at position i is h(seed, i); role "draft": the same where it agrees."""

    def __init__(self, role: str, profile: Profile):
        if role not in ("draft", "target"):
            raise ModelError(f"synthetic role must be draft or target, got {role!r}")
        self.role, self.profile = role, profile
        self.model_id = f"synthetic:{profile.name}:{role}"
        self.vocab_size = profile.vocab
        self.tokenizer_hash = f"synthetic-vocab-{profile.vocab}"
        self._bits = _trace_bits(profile.trace) if profile.trace else None
        self.per_prompt = {k: tuple(c == "1" for c in v) for k, v in profile.prompt_agreement or ()}
        self.answer = dict(profile.prompt_answer or ())
        self.sure = {k: decode_confidence(v) for k, v in profile.prompt_confidence or ()} if role == "draft" else {}
        self.sure_pooled = self._pooled_confidence()
        self.confidence_measured = confidence_measured(profile)
        # a draft profiled as taking its catch-up one token a forward (an int8 draft) feeds the same way
        self.rows_interact = role == "draft" and profile.draft_catch_up_forwards > 1
        # The last id is the EOS that ends a profiled answer (prompt_answer); other tokens never draw it.
        self.eos_token_ids: tuple[int, ...] = (self.vocab_size - 1,) if self.answer else ()

    def forward_ms(self, n: int) -> float:
        """The compute time one extend() of n tokens takes (and reports)."""
        return self.profile.t_draft_ms if self.role == "draft" else self.profile.verify_ms(n)

    def agrees(self, pos: int, origin: int = 0, key: str = "") -> bool:
        """Does the draft propose the target's token at sequence position pos (prompt length origin,
        prompt_key key)?"""
        own = self.per_prompt.get(key)
        if own is not None and 0 <= pos - origin < len(own):
            return own[pos - origin]
        if self._bits is not None:
            return self._bits[(pos - origin) % len(self._bits)]
        return (_h(self.profile.seed, pos, "accept") % 1_000_000) / 1_000_000 < self.profile.alpha

    def _pooled_confidence(self) -> tuple[float, float] | None:
        """(mean confidence where the draft agreed, where it did not) over every measured position of
        the profile's prompts: what an unmeasured position gets, by its own agreement — so a prompt or
        a position the profile did not measure still stops where the real draft tends to."""
        hit, miss = [], []
        for key, sure in self.sure.items():
            for a, c in zip(self.per_prompt.get(key, ()), sure):
                (hit if a else miss).append(c)
        if not hit and not miss:
            return None

        def mean(xs: list[float], instead: list[float]) -> float:      # a class never seen: the other's
            return sum(xs) / len(xs) if xs else sum(instead) / len(instead)
        return mean(hit, miss), mean(miss, hit)

    def confidence(self, pos: int, origin: int = 0, key: str = "") -> float:
        """The draft's probability of the token it proposes at sequence position pos: the profile's
        measurement there; else, for a profile that measured some, the pooled measurement for a position
        that agrees or not (_pooled_confidence); else what the softmax of a PEAK_LOGIT row gives.  The
        logits are built from this, so a confidence stop reads the same in a synthetic node and the
        simulator."""
        own = self.sure.get(key)
        if own is not None and 0 <= pos - origin < len(own):
            c = own[pos - origin]
        elif self.sure_pooled is not None:
            c = self.sure_pooled[0] if self.agrees(pos, origin, key) else self.sure_pooled[1]
        else:
            return 1.0 / (1.0 + (self.vocab_size - 1) * math.exp(-PEAK_LOGIT))
        return max(c, 2.0 / self.vocab_size)       # twice the uniform share: the token stays the argmax

    def peak_logit(self, pos: int, origin: int = 0, key: str = "") -> float:
        """The chosen token's logit (the others are 0) whose softmax is confidence(pos): PEAK_LOGIT for a
        profile without measured confidence (its rows as they always were)."""
        if not self.sure:
            return PEAK_LOGIT
        c = self.confidence(pos, origin, key)
        return math.log(c / (1.0 - c) * (self.vocab_size - 1)) if c < 1 else PEAK_LOGIT

    def ends_at(self, pos: int, origin: int = 0, key: str = "") -> bool:
        """Is the target's token at sequence position pos its answer's EOS (prompt_answer)?"""
        n = self.answer.get(key)
        return n is not None and pos - origin == n - 1

    def token_at(self, pos: int, origin: int = 0, key: str = "") -> int:
        span = self.vocab_size - len(self.eos_token_ids)
        true = self.eos_token_ids[0] if self.ends_at(pos, origin, key) else _h(self.profile.seed, pos, "token") % span
        if self.role == "target" or self.agrees(pos, origin, key):
            return true
        return (true + 1) % span

    def new_session(self) -> SyntheticSession:
        return SyntheticSession(self)

    def encode_prompt(self, prompt: str, template: str = "chat") -> list[int]:
        # No chat template to apply: raw and chat prompts encode alike.
        return encode_words(prompt, self.vocab_size)

    def decode(self, token_ids: list[int]) -> str:
        return " ".join(f"<{t}>" for t in token_ids)

    def describe(self) -> dict:
        d = {"model_id": self.model_id, **asdict(self.profile)}
        if d["trace"] is not None:
            d["trace"] = list(d["trace"])
        for key in ("prompt_agreement", "prompt_answer", "prompt_confidence"):
            if d[key] is not None:
                d[key] = dict(d[key])
        return d


def load_synthetic(role: str, profile: str | None = None) -> SyntheticModel:
    return SyntheticModel(role, load_profile(profile))


# ------------------------------------------------------------------ this host's measured profile
# The shipped embedded-cpu.yaml was measured on one CPU; on another the compute times can be 3-10x
# off (docs/MEASUREMENTS.md).  `lab profile` writes this host's own profile to the cache, keyed by
# CPU model/flags, ISA cap and dtype (lab/models/cpu.py host_key), and `embedded-cpu` means that
# one whenever it exists.
HOST_PROFILE_OF = {"embedded-cpu": "embedded"}      # shipped profile name → the real pair it stands for


def host_profile_dir() -> Path:
    from lab.models.embedded import cache_dir
    return cache_dir().parent / "profiles"


def host_profile_path(models: str = "embedded", dtype: str = "float32", draft_kernels: str | None = None) -> Path:
    """Where `lab profile` keeps this host's profile of `models` in `dtype` with the draft's kernels
    (default: the draft's default here): an int8 draft's t_draft and acceptance are not packed fp32's."""
    import re

    from lab.models.cpu import host_key
    from lab.models.kinds import kernels_of
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", models).strip("-")[:60]
    kernels = kernels_of(models, "draft", dtype, draft_kernels)
    if kernels is None:                     # llama.cpp: the GGUF's own block types, no torch dtype or kernels
        return host_profile_dir() / f"{slug}--{host_key('gguf')}.yaml"
    return host_profile_dir() / f"{slug}--{host_key(dtype)}--draft-{kernels}.yaml"


def resolve_profile(name: str | None, dtype: str = "float32", draft_kernels: str | None = None) -> tuple[str, str]:
    """(profile to load, a line saying which one): `embedded-cpu` becomes this host's measured
    profile of the embedded pair (in `dtype`, with the draft's kernels) when there is one; anything
    else is used as given."""
    name = name or DEFAULT_PROFILE
    models = HOST_PROFILE_OF.get(name)
    if models is None:
        return name, f"profile {name}"
    host = host_profile_path(models, dtype, draft_kernels)
    if host.exists():
        stale = stale_catch_up(profile_provenance(host), load_profile(str(host)))
        return str(host), (f"profile {name}: this host's, measured by `lab profile` ({host})"
                           + (f"\n  note: {stale}" if stale else ""))
    return name, (f"profile {name}: the shipped one (measured on another CPU; no profile of this host, "
                  f"{host.name}, in {host.parent} — run `python -m lab profile` to measure one)")
