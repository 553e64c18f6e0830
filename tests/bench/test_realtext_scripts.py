"""The real-text corpus builder and the H200 real-text scripts, end to end on CPU at toy size.

A fake linux-doc .deb (an ar archive with an xz data tarball, as Debian builds them) and a fake
site-packages folder stand in for the real sources; tiny layouts stand in for the 100M ones. Catches
a renamed option or a shell slip here instead of on the GPU machine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = (ROOT / "tests" / "app" / "training" / "tiny.yaml").read_text()


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    return out


def fake_deb(path: Path, rng: random.Random) -> None:
    words = ["the", "kernel", "driver", "memory", "network", "device", "tree", "interrupt", "module", "page"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for topic in ("networking", "filesystems", "admin-guide", "translations"):
            for j in range(3):
                text = f"{topic} {j}\n" + " ".join(rng.choice(words) for _ in range(1500)) + "\n"
                data = gzip.compress(text.encode())
                info = tarfile.TarInfo(f"./usr/share/doc/linux-doc-6.1/Documentation/{topic}/f{j}.rst.gz")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("./usr/share/doc/linux-doc-6.1/html/index.html")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"<p/>"))
    path.write_bytes(_ar({"debian-binary": b"2.0\n", "data.tar.xz": buf.getvalue()}))


def fake_site(root: Path, rng: random.Random) -> Path:
    site = root / "site-packages"
    pkg = site / "toypkg"
    pkg.mkdir(parents=True)
    files = []
    for j in range(4):
        body = "\n".join(f"def f{j}_{i}(x):\n    return x * {rng.randint(0, 99)}\n" for i in range(150))
        (pkg / f"m{j}.py").write_text(body)
        files.append(f"toypkg/m{j}.py")
    info = site / "toypkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toypkg\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in [*files, "toypkg-1.0.dist-info/METADATA"]))
    return site


def test_build_corpus_from_a_deb_and_site_packages(tmp_path: Path) -> None:
    rng = random.Random(0)
    fake_deb(tmp_path / "linux-doc-6.1_1_all.deb", rng)
    site = fake_site(tmp_path, rng)
    out = tmp_path / "corpus"
    deb = tmp_path / "linux-doc-6.1_1_all.deb"
    done = subprocess.run([sys.executable, "bench/data/build_corpus.py", "--deb", str(deb), "--site", str(site),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "linux-doc").iterdir()) == ["admin-guide.txt", "filesystems.txt",
                                                                     "networking.txt"]  # no translations
    net = (out / "linux-doc" / "networking.txt").read_text()
    assert net.startswith("==> networking/f0.rst <==\nnetworking 0\n") and "==> networking/f2.rst <==" in net
    code = (out / "python" / "toypkg.txt").read_text()
    assert code.startswith("# ==> toypkg/m0.py <==\ndef f0_0(x):") and "# ==> toypkg/m3.py <==" in code
    entries = json.loads((out / "corpus.json").read_text())["documents"]
    assert {e["document"] for e in entries} == {"linux-doc/admin-guide.txt", "linux-doc/filesystems.txt",
                                               "linux-doc/networking.txt", "python/toypkg.txt"}
    only = subprocess.run([sys.executable, "bench/data/build_corpus.py", "--site", str(site), "--stdlib",
                           "--only", "toypkg", "--out", str(tmp_path / "only")],
                          cwd=ROOT, capture_output=True, text=True)
    assert only.returncode == 0, only.stderr
    kept = json.loads((tmp_path / "only" / "corpus.json").read_text())["documents"]
    assert [e["document"] for e in kept] == ["python/toypkg.txt"]  # the stdlib document left out
    unknown = subprocess.run([sys.executable, "bench/data/build_corpus.py", "--site", str(site), "--only", "numpyy",
                              "--out", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode != 0 and "--only numpyy: no such distribution here (found: toypkg)" in unknown.stderr
    bad = subprocess.run([sys.executable, "bench/data/build_corpus.py", "--deb", str(site / "toypkg" / "m0.py"),
                          "--out", str(tmp_path / "c2")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "not a .deb" in bad.stderr


def toy_setup(tmp_path: Path, **knobs: str) -> dict[str, str]:
    """The toy corpus built and tokenized by build_data.sh, tiny ramba and mamba2 layouts, and the
    scripts' environment (``knobs`` override it)."""
    rng = random.Random(1)
    deb = tmp_path / "linux-doc-6.1_1_all.deb"
    fake_deb(deb, rng)
    site = fake_site(tmp_path, rng)
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    (layouts / "ramba-100m.yaml").write_text(TINY)
    (layouts / "mamba2-100m.yaml").write_text(
        "version: 1\nname: tiny-mamba2\nmodel: {vocab_size: 96, d_model: 32, tie_embeddings: true}\n"
        "defaults:\n  mamba2: {d_state: 8, d_conv: 4, expand: 2, headdim: 16, chunk_size: 16}\nlayers: \"mamba2*2\"\n")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    runs = tmp_path / "runs"
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", DEB=str(deb), SITE=str(site), EXTRA="",
               CORPUS=str(runs / "corpus"), DATA=str(runs / "data"), RUNS=str(runs), VOCAB="300", WORKERS="1",
               VAL="0.5", SAMPLE_MB="1", LAYOUTS=str(layouts), NAMES="ramba mamba2", PK_NAMES="ramba", GPUS="1",
               SEQ="384", BATCH="2", CALIB_STEPS="0", TRAIN_TIME="120", STEPS="6", PK_TIME="120",
               PK_STEPS_MAX="2", EVAL_EVERY="3",
               EVAL_SAMPLES="2", CKPT_EVERY="5", WARMUP="2", PPL_LENGTHS="256,1k", PPL_DOCS="2",
               PK_LENGTHS="384", DEPTHS="0.5", SAMPLES="2", SEGMENT="512", OUT_DIR=str(tmp_path / "out"),
               PK_FREEZE="", PK_BATCH="2")
    env.update(knobs)
    done = subprocess.run(["bash", "bench/train/realtext/build_data.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: sizes match" in done.stdout
    return env


@pytest.mark.slow
@pytest.mark.parametrize("calib_steps", [pytest.param("0", id="equal-steps"), pytest.param("2", id="calibrated")])
def test_realtext_scripts_end_to_end_on_cpu(tmp_path: Path, calib_steps: str) -> None:
    runs = tmp_path / "runs"
    env = toy_setup(tmp_path, CALIB_STEPS=calib_steps,
                    PK_FREEZE=r"^embedding\. ^memories\.\w+\.encoder\." if calib_steps == "2" else "",
                    PK_BATCH="1" if calib_steps == "2" else "2")
    done = subprocess.run(["bash", "bench/train/realtext/run_all.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    logs = "".join(p.read_text() for p in runs.glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    out = tmp_path / "out"
    ppl = json.loads((out / "eval_ppl.json").read_text())
    assert [m["label"] for m in ppl["models"]] == ["ramba", "mamba2"] and (out / "eval_ppl.png").exists()
    assert json.loads((out / "ramba_eval_passkey_text.json").read_text())["lengths"] == [384]
    steps = json.loads((out / "ramba_train_config.json").read_text())["config"]["steps"]
    # CALIB_STEPS=0: exactly STEPS (equal tokens); otherwise the count fitted to TRAIN_TIME from the
    # calibration run's tokens/s, capped by STEPS (the calibration run is removed after fitting)
    assert steps == 6 and not (runs / "ramba.calib").exists()
    assert [json.loads(line)["step"] for line in (out / "ramba_metrics.jsonl").read_text().splitlines()][-1] == 6
    assert (runs / "ramba.pk" / "model").is_dir() and not (runs / "mamba2.pk").exists()  # PK_NAMES only
    frozen = json.loads((runs / "ramba.pk" / "train_config.json").read_text())["config"]["freeze"]
    assert frozen == ([r"^embedding\.", r"^memories\.\w+\.encoder\."] if calib_steps == "2" else [])  # PK_FREEZE
    pk_batch = json.loads((runs / "ramba.pk" / "train_config.json").read_text())["config"]["batch_size"]
    assert pk_batch == (1 if calib_steps == "2" else 2)  # PK_BATCH
    # ramba's passkey stages: the Mamba2 state reset every 512 tokens, the short stage at 1,024 tokens
    pk_cfg = json.loads((runs / "ramba.pk" / "train_config.json").read_text())["config"]
    short_cfg = json.loads((runs / "ramba.pk1024" / "train_config.json").read_text())["config"]
    assert pk_cfg["state_reset_every"] == short_cfg["state_reset_every"] == 512 and short_cfg["seq_len"] == 1024
    assert (out / "training.png").exists()
    summary = (out / "realtext.md").read_text()
    assert "| ramba |" in summary and "| mamba2 |" in summary and "**ramba**" in summary
    # a re-run (after the driver died, say) trains nothing that has ended: the LM reached its steps,
    # each passkey stage published its model
    before = (runs / "ramba.pk" / "metrics.jsonl").read_text()
    again = subprocess.run(["bash", "bench/train/realtext/lm_one.sh", "ramba"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("has ended (its model is published); not run again") == 2, again.stdout
    assert (runs / "ramba.pk" / "metrics.jsonl").read_text() == before


def test_lm_one_refuses_a_short_stage_that_leaves_no_fine_tune_time(tmp_path: Path) -> None:
    """swa-hsa's short passkey stage defaults to 100 s: a PK_TIME at or below it is refused before any
    training, naming both knobs (on the GPU machine it would have started a stage with a negative limit)."""
    env = dict(os.environ, RUNS=str(tmp_path / "runs"), PK_TIME="60")
    done = subprocess.run(["bash", "bench/train/realtext/lm_one.sh", "swa-hsa"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PK_SHORT_TIME=100 s leaves nothing of PK_TIME=60 s" in done.stderr
    assert not (tmp_path / "runs" / "swa-hsa").exists()


def test_a_killed_stage_resumes_with_what_is_left_of_its_time(tmp_path: Path) -> None:
    """lm_one.sh's ``seconds_used``: the wall time of every process of a stage so far, each process's
    "time" counting from its own start (a stage killed at 200 s, resumed and killed at 60 s used 260 s)."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i + 1, "time": t}) + "\n" for i, t in enumerate([50, 200, 20, 60])))
    script = ('source <(sed -n "/^seconds_used()/,/^}/p" bench/train/realtext/lm_one.sh); '
              f'seconds_used {metrics}; seconds_used {tmp_path / "none.jsonl"}')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["260", "0"]


@pytest.mark.slow
def test_two_lms_share_a_gpu_then_fine_tune_one_at_a_time(tmp_path: Path) -> None:
    """The plan of bench/results/h200_realtext/README.md (after run 8): both LM phases at once with PK=0,
    then, one layout at a time, its fine-tune alone (lm_one.sh again: the LM has reached its steps) and
    its evaluations (run_all.sh STAGES=eval)."""
    runs = tmp_path / "runs"
    env = toy_setup(tmp_path, PK_NAMES="ramba mamba2")
    script = ('R=bench/train/realtext L="$RUNS"\n'
              'STEPS=6 PK=0 bash $R/lm_one.sh ramba > $L/ramba.log 2>&1 &\n'
              'STEPS=4 PK=0 bash $R/lm_one.sh mamba2 > $L/mamba2.log 2>&1 &\n'
              'wait\n'
              'for n in ramba mamba2; do\n'
              '  PK_TPS=240000 bash $R/lm_one.sh $n >> $L/$n.log 2>&1 || exit 1\n'
              '  NAMES=$n STAGES=eval OUT_DIR="$OUT_DIR/$n" bash $R/run_all.sh || exit 1\n'
              'done')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in runs.glob("*.log"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    for name, steps in (("ramba", 6), ("mamba2", 4)):  # each LM its own STEPS, fine-tuned after it
        assert json.loads((runs / name / "train_config.json").read_text())["config"]["steps"] == steps
        assert (runs / f"{name}.pk" / "model").is_dir()
        log = (runs / f"{name}.log").read_text()
        assert log.index(f"=== {name} LM:") < log.index(f"=== {name} passkey fine-tune at 384 tokens")
    # the second fine-tune began after the first model's evaluation had ended (one at a time)
    out = tmp_path / "out"
    first_eval = (out / "ramba" / "ramba_eval_passkey_text.json").stat().st_mtime
    second_config = (runs / "mamba2.pk512" / "train_config.json").stat().st_mtime  # its first stage
    assert second_config >= first_eval
    for name in ("ramba", "mamba2"):
        assert [m["label"] for m in json.loads((out / name / "eval_ppl.json").read_text())["models"]] == [name]
        assert (out / name / f"{name}_eval_passkey_text.json").exists()


def test_fine_tune_steps_from_the_measured_rate_or_pk_tps(tmp_path: Path) -> None:
    """lm_one.sh's ``fit_steps``: 0.9 x budget x rate / tokens per step, the rate the LM run's quantile
    (the first 3 records left out) unless PK_TPS gives one (through FIT_TPS)."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": i + 1, "tokens_per_s": 120000.0}) + "\n" for i in range(10)))
    script = ('source <(sed -n "/^fit_steps()/,/^}/p" bench/train/realtext/lm_one.sh); SEQ=4096 BATCH=16; '
              f'fit_steps {metrics} 100 100000 0.9 16; FIT_TPS=240000 fit_steps {metrics} 100 100000 0.9 16; '
              f'FIT_TPS=240000 fit_steps {metrics} 100 200 0.9 16')
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["164", "329", "200"]  # measured; PK_TPS; capped
