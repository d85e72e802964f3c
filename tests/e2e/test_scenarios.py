"""Whole scenarios through `python -m lab scenario`, as a user runs them."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.core.strategies import ADAPTIVE_STOP
from lab.metrics import token_equality
from tests.e2e.conftest import ctrl_c_as_in_a_terminal
from tests.netns.conftest import lab_lock_suspended

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def lab(*args, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def only_run_dir(base: Path) -> Path:
    dirs = [d for d in base.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary(run: Path) -> dict[str, dict]:
    with open(run / "summary.csv") as f:
        return {row["strategy"]: row for row in csv.DictReader(f)}


def leftovers() -> tuple[list[str], list[str]]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    procs = subprocess.run(["pgrep", "-af", "edge_node|cloud_node|netns.wire"], capture_output=True, text=True,
                           timeout=10).stdout
    return [l for l in ns.splitlines() if l.startswith("sdl-")], [l for l in procs.splitlines() if l.strip()]


def test_lan_synthetic_no_retransmissions(tmp_path):
    r = lab("scenario", "lan", "--models", "synthetic:fast", "--strategies", "cloud-only,fixed-k:3,edge-only",
            "--queries", "2", "--warmup", "1", "--max-new-tokens", "30", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["backend"] in ("wire", "netem")
    s = summary(run)
    assert set(s) == {"cloud-only", "fixed-k:3", "edge-only"}
    assert all(int(float(row["tcp_retrans_segs"])) == 0 for row in s.values())
    assert float(s["fixed-k:3"]["acceptance"]) > 0
    lines = (run / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 9 and sum(json.loads(l)["warmup"] for l in lines) == 3
    assert "fixed-k:3" in r.stdout and "TTFT" in r.stdout


def start_scenario(out: Path, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lab", "scenario", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_run_dir(out: Path, p: subprocess.Popen, ready, timeout_s: float = 120) -> Path:
    """The run's folder once ready(run_dir) holds; fails if the run ends or the time runs out first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and p.poll() is None:
        dirs = [d for d in out.iterdir() if d.is_dir()] if out.exists() else []
        if dirs and ready(dirs[0]):
            return dirs[0]
        time.sleep(0.2)
    pytest.fail(f"the run did not get there in time (exit {p.poll()}): {p.stderr.read()[-2000:] if p.poll() is not None else ''}")


def a_query_finished(run: Path) -> bool:
    q = run / "queries.jsonl"
    return q.exists() and q.stat().st_size > 0


def link_is_up(run: Path) -> bool:
    try:
        return "backend" in json.loads((run / "meta.json").read_text())
    except (OSError, ValueError):
        return False


def stop_and_wait(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        p.wait(10)


def test_ctrl_c_leaves_nothing_and_marks_the_run(tmp_path):
    p = start_scenario(tmp_path, "wan-50ms", "--models", "synthetic:fast", "--strategies", "fixed-k:3,cloud-only",
                       "--queries", "20", "--warmup", "0", preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        run = wait_for_run_dir(tmp_path, p, a_query_finished)
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    finally:
        stop_and_wait(p)
    assert p.returncode == 130
    ns, procs = leftovers()
    assert not ns and not procs, (ns, procs)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert not (run / "summary.csv").exists()
    assert (run / "summary.partial.csv").exists()


# Two short prompts: one the target answers in a few tokens and ends with EOS, one cut by --max-new-tokens.
E2E_PROMPTS = ({"id": "sky", "prompt": "Answer with one word only: what colour is a clear daytime sky?"},
               {"id": "reverse", "prompt": "Write a Python function that reverses a string."})
E2E_STRATEGIES = ("cloud-only", "cloud-spec", "fixed-k:3", "fixed-k:5", "pipelined:3", "pipelined:5",
                  "fixed-k:12,stop=0.3,min=3", "cloud-spec:8,stop=0.5,min=3",   # confidence stops, minimum blocks
                  "nasd", "ucb-specstop")       # K (and nasd's stop) chosen each cycle, fallbacks to the cloud
E2E_MAX_NEW = 16


def transformers_greedy(prompts, max_new: int) -> dict[str, tuple[list[int], list[int]]]:
    """prompt id -> (prompt ids, new tokens) from transformers' own `generate(do_sample=False)` of the
    embedded target (fp32, the cached safetensors copy): the chat template applied by the tokenizer,
    generation ending at the target's EOS (kept) as generate ends it.  None of the project's decoding
    code runs here; the project only says where the cached copy is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.models.embedded import TARGET, converted_dir, read_source_record

    path = converted_dir(TARGET, "float32")
    assert read_source_record(TARGET, "float32") is not None, f"no complete float32 copy in {path}"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert model.generation_config.eos_token_id, "the target declares no EOS: generate would never stop"
    out = {}
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=max_new)
        out[p["id"]] = (list(ids), gen[0, len(ids):].tolist())
    return out


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    """What `timeout`, systemd and container runtimes do: SIGTERM to the run's whole process group."""
    p = start_scenario(tmp_path, "lan", "--models", "synthetic:fast", "--strategies", "fixed-k:3,cloud-only",
                       "--queries", "40", "--warmup", "0", start_new_session=True)
    try:
        run = wait_for_run_dir(tmp_path, p, a_query_finished)
        os.killpg(p.pid, signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        stop_and_wait(p)
    assert p.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err
    ns, procs = leftovers()
    assert not ns and not procs, (ns, procs)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["interrupted_by"] == "SIGTERM"
    assert not (run / "summary.csv").exists()
    assert (run / "summary.partial.csv").exists()


def test_a_run_whose_namespaces_vanish_fails(tmp_path):
    p = start_scenario(tmp_path, "lan", "--models", "synthetic:fast", "--strategies", "fixed-k:3",
                       "--queries", "40", "--warmup", "0")
    try:
        run = wait_for_run_dir(tmp_path, p, a_query_finished)
        subprocess.run(["ip", "netns", "delete", "sdl-cloud"], check=True, timeout=10)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        stopped_s = time.monotonic() - t0
    finally:
        stop_and_wait(p)
    assert p.returncode == 1, err[-2000:]
    assert "sdl-cloud vanished under the run" in err and stopped_s < 15
    ns, procs = leftovers()
    assert not ns and not procs, (ns, procs)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed"
    done = (run / "queries.jsonl").read_text().splitlines()
    assert len(done) < 40 and not any(json.loads(line)["edge_fallback"] for line in done)


def test_one_lab_at_a_time(tmp_path, lab_lock):
    """A second scenario while one runs: it refuses at once naming the live run; the first completes."""
    with lab_lock_suspended(lab_lock):
        first = start_scenario(tmp_path / "first", "wan-50ms", "--models", "synthetic:fast",
                               "--strategies", "fixed-k:3", "--queries", "30", "--warmup", "0")
        try:
            wait_for_run_dir(tmp_path / "first", first, link_is_up)
            t0 = time.monotonic()
            second = lab("scenario", "wan-50ms", "--models", "synthetic:fast", "--out", str(tmp_path / "second"),
                         timeout=60)
            refused_s = time.monotonic() - t0
            assert first.poll() is None, "the first run ended before the second was tried"
            out, err = first.communicate(timeout=300)
        finally:
            stop_and_wait(first)
    assert second.returncode == 75, second.stderr[-2000:]
    assert f"pid {first.pid}" in second.stderr and "lab scenario wan-50ms" in second.stderr
    assert "started" in second.stderr and refused_s < 20
    assert not (tmp_path / "second").exists()                     # touched nothing
    assert first.returncode == 0, err[-2000:]
    run = only_run_dir(tmp_path / "first")
    assert json.loads((run / "meta.json").read_text())["status"] == "complete"
    assert len((run / "queries.jsonl").read_text().splitlines()) == 30


@pytest.mark.models
def test_embedded_pair_lossy_equals_transformers_generate(tmp_path):
    """The real pair across 5 % loss with the default dtype and kernels (fp32), temperature 0: every measured
    query of the split strategies and of the co-located ones is token for token the target's own
    `generate(do_sample=False)` output; a query the edge finished alone fails the test; and the kernel
    retransmitted (the link's loss was real)."""
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in E2E_PROMPTS))
    out_dir = tmp_path / "results"
    n_queries = len(E2E_PROMPTS)
    r = lab("scenario", "lossy-5pct", "--models", "embedded", "--temperature", "0",     # default dtype: float32
            "--strategies", ",".join(E2E_STRATEGIES), "--queries", str(n_queries), "--warmup", "0",
            "--max-new-tokens", str(E2E_MAX_NEW), "--prompts", str(prompts_file), "--out", str(out_dir),
            timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(out_dir)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["dtype"] == "float32" and meta["cpu"]["cpu_model"]
    from lab.models.cpu import int8_runs_here
    if int8_runs_here("float32"):        # the default draft here is int8: the target's output must not move
        assert meta["edge"]["draft_kernels"].startswith("int8") and meta["cloud"]["draft_kernels"].startswith("int8")
    recs = [rec for rec in map(json.loads, (run / "queries.jsonl").read_text().splitlines()) if not rec["warmup"]]
    assert sorted(rec["strategy"] for rec in recs) == sorted(E2E_STRATEGIES * n_queries)
    fallbacks = [f"{rec['strategy']} query {rec['query_index']} ({rec['prompt_id']}): {rec['fallback_reason']}"
                 for rec in recs if rec["edge_fallback"]]
    assert not fallbacks, "finished by the draft alone, so not the target's output:\n" + "\n".join(fallbacks)

    reference = transformers_greedy(E2E_PROMPTS, E2E_MAX_NEW)
    for rec in recs:
        assert rec["prompt_tokens"] == len(reference[rec["prompt_id"]][0]), (rec["strategy"], rec["prompt_id"])
    wrong, _ = token_equality(recs, {pid: ref for pid, (_, ref) in reference.items()})
    assert not wrong, "not the target's own greedy output (transformers generate):\n" + "\n".join(wrong)
    assert any(len(ref) < E2E_MAX_NEW for _, ref in reference.values()), "no prompt ended at the target's EOS"
    assert any(sum(rec["k_per_cycle"]) > 0 for rec in recs if rec["strategy"].startswith("fixed-k"))
    # The pipelined strategies drafted ahead: blocks on the guess were sent or dropped, and all is still exact.
    assert any(o is not None for rec in recs if rec["strategy"].startswith("pipelined")
               for o in rec["optimistic_per_cycle"])
    # The confidence stops ended some blocks before their cap, edge-side and in the cloud's co-located loop
    # (each query's last block is left out: max_new_tokens may cut that one), and none before its minimum
    # block but where the tokens still to go were fewer.
    for name, cap in (("fixed-k:12,stop=0.3,min=3", 12), ("cloud-spec:8,stop=0.5,min=3", 8)):
        ks = [k for rec in recs if rec["strategy"] == name for k in [x for x in rec["k_per_cycle"] if x > 0][:-1]]
        assert ks and max(ks) <= cap and min(ks) < cap, (name, ks)
        for rec in (r for r in recs if r["strategy"] == name):
            cycles = [(k, a) for k, a in zip(rec["k_per_cycle"], rec["accepted_per_cycle"]) if k > 0]
            made = 0                                    # tokens so far (each block's last may be cut to fit)
            for k, a in cycles:
                assert k >= min(3, E2E_MAX_NEW - made), (name, rec["k_per_cycle"], rec["accepted_per_cycle"])
                made += a + 1
    # The real draft's confidence is its own: both controllers drafted with the default stop.
    for rec in recs:
        if rec["strategy"] in ("nasd", "ucb-specstop"):
            assert rec["controller"]["stop"] == ADAPTIVE_STOP, (rec["strategy"], rec["controller"])
    s = summary(run)
    assert sum(int(float(row["tcp_retrans_segs"])) for row in s.values()) > 0


GGUF_STRATEGIES = ("cloud-only", "cloud-spec", "fixed-k:3", "pipelined:3")


def llama_cpp_greedy(prompts, max_new: int) -> dict[str, list[int]]:
    """prompt id -> new tokens from llama-cpp-python's own `Llama.generate` of the embedded target's GGUF
    at temperature 0 (its greedy sampler), stopped at the target's EOS (kept): no project decoding code.
    The prompt ids come from the converted copy's tokenizer and chat template, as in transformers_greedy."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer, GenerationConfig

    from lab.models.embedded import TARGET, cache_dir, converted_dir, verified_gguf
    tok = AutoTokenizer.from_pretrained(converted_dir(TARGET, "float32"))
    eos = GenerationConfig.from_pretrained(converted_dir(TARGET, "float32")).eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    gguf = verified_gguf(TARGET, cache_dir())
    assert gguf is not None, "no verified target GGUF in the cache"
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=2, logits_all=False, verbose=False)
    out = {}
    for p in prompts:
        ids = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                      tokenize=True, return_dict=True)["input_ids"]
        new = []
        for t in llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            new.append(int(t))
            if t in eos or len(new) == max_new:
                break
        out[p["id"]] = new
    return out


def test_gguf_pair_across_loss_equals_llama_cpps_own_greedy(tmp_path):
    """The optional llama.cpp back-end (`--models embedded-gguf`, the `gguf` extra) through the lab on
    lossy-5pct: every strategy's tokens are the GGUF target's own greedy decode by llama-cpp-python."""
    from lab.models.llamacpp import INSTALL_HINT, available
    if not available():
        pytest.skip(f"the gguf extra is not installed ({INSTALL_HINT})")
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps(p) + "\n" for p in E2E_PROMPTS))
    r = lab("scenario", "lossy-5pct", "--models", "embedded-gguf", "--strategies", ",".join(GGUF_STRATEGIES),
            "--queries", str(len(E2E_PROMPTS)), "--warmup", "0", "--max-new-tokens", str(E2E_MAX_NEW),
            "--prompts", str(prompts_file), "--out", str(tmp_path / "results"), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path / "results")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["cloud"]["dtype"] == "gguf" and meta["cloud"]["target_kernels"].startswith("llama.cpp")
    recs = [rec for rec in map(json.loads, (run / "queries.jsonl").read_text().splitlines()) if not rec["warmup"]]
    assert sorted(rec["strategy"] for rec in recs) == sorted(GGUF_STRATEGIES * len(E2E_PROMPTS))
    assert not [rec for rec in recs if rec["edge_fallback"]]
    wrong, _ = token_equality(recs, llama_cpp_greedy(E2E_PROMPTS, E2E_MAX_NEW))
    assert not wrong, "not the GGUF target's own greedy output (llama-cpp-python generate):\n" + "\n".join(wrong)
    assert any(sum(rec["k_per_cycle"]) > 0 for rec in recs if rec["strategy"] == "fixed-k:3")


def test_a_link_up_topology_is_a_live_lab_until_link_down(tmp_path, lab_lock):
    """`link up` outlives its command: its relay (netem: its namespaces) owns the lab until `link down`."""
    with lab_lock_suspended(lab_lock):
        up = lab("link", "up", "lan", timeout=120)
        try:
            assert up.returncode == 0, up.stderr[-2000:]
            busy = lab("probe", "lan", timeout=60)
            assert busy.returncode == 75, busy.stderr[-2000:]
            assert "lab link up lan" in busy.stderr and "link down" in busy.stderr
            assert {"sdl-edge", "sdl-cloud"} <= {line.split()[0] for line in leftovers()[0]}   # untouched
        finally:
            down = lab("link", "down", timeout=120)
        assert down.returncode == 0, down.stderr[-2000:]
        assert leftovers() == ([], [])
        again = lab("link", "down", timeout=60)
        assert again.returncode == 0 and "nothing was up" in again.stdout


def _child_pid(parent: int, module: str) -> int:
    """The pid of `python -m module` started by `parent` (the runner starts the nodes itself)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and module.encode() in cmd:
            return int(d.name)
    pytest.fail(f"no {module} process under pid {parent}")


def test_cloud_stopped_mid_run_shows_fallbacks(tmp_path):
    """The cloud dies mid-run: the edge finishes those queries alone, and that is in plain sight — the
    terminal table's `fallbacks` column and note, summary.csv's edge_fallbacks, queries.jsonl's marks —
    and the token-equality check skips those queries, saying so."""
    from lab.core.decoding import autoregressive_generate
    from lab.models.synthetic import load_synthetic
    from lab.prompts import load_prompts

    p = start_scenario(tmp_path, "lan", "--models", "synthetic:fast", "--strategies", "fixed-k:3",
                       "--queries", "6", "--warmup", "0", "--max-new-tokens", "200", "--reply-timeout-s", "2")
    try:
        run = wait_for_run_dir(tmp_path, p, a_query_finished)
        os.kill(_child_pid(p.pid, "cloud_node"), signal.SIGKILL)
        out, err = p.communicate(timeout=120)
    finally:
        stop_and_wait(p)
    assert p.returncode == 0, err[-2000:]
    s = summary(run)
    n_fallback = int(float(s["fixed-k:3"]["edge_fallbacks"]))
    assert 1 <= n_fallback <= 5 and int(s["fixed-k:3"]["queries"]) == 6
    header, _, row = [l for l in out.splitlines() if l.startswith(("strategy", "---", "fixed-k:3"))][:3]
    assert header.split()[-1] == "fallbacks" and row.split()[-1] == str(n_fallback)
    assert f"fallbacks: fixed-k:3 {n_fallback}/6 queries finished by the draft alone" in out
    assert "FALLBACK" in out + err            # the progress bar's line (tqdm.write: stdout)
    recs = [json.loads(l) for l in (run / "queries.jsonl").read_text().splitlines()]
    fell = [r for r in recs if r["edge_fallback"]]
    assert len(fell) == n_fallback and all(r["fallback_reason"] and r["fallback_at_token"] is not None for r in fell)

    target = load_synthetic("target", "fast")
    prompts = {q["id"]: q["prompt"] for q in load_prompts(None)}
    reference = {r["prompt_id"]: autoregressive_generate(target, target.encode_prompt(prompts[r["prompt_id"]]), 200)
                 for r in recs}
    wrong, skipped = token_equality(recs, reference)
    assert not wrong, wrong
    assert len(skipped) == n_fallback and all("skipped, finished by the draft alone" in x for x in skipped)
