#!/usr/bin/python3
# check-manifests.py: parses deploy/Dockerfile, deploy/docker-compose.yml, deploy/k8s/*.yaml and
# deploy/k8s-train/*.yaml and asserts the fields the deployment relies on (probes, resources,
# draining, non-root, env names known to the server, selectors that match; for training: the
# MPIJob's process count, trainer options, shared volume, image and user). Leaves out talking to
# Docker or a cluster (neither is needed).
#
#   python3 deploy/check-manifests.py            # exit 0: all checks pass; 1: each failure printed
#   python3 deploy/check-manifests.py --self-test  # also breaks a copy of each file 1 way per check
#                                                  # group and asserts the checker notices
# Needs python3-yaml (Debian). Only the standard library otherwise.
import copy
import json
import os
import re
import shlex
import sys

try:
    import yaml
except ImportError:
    sys.exit("check-manifests: needs python3-yaml (apt-get install python3-yaml, or tools/install-deps.sh --ci)")

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEPLOY = os.path.join(ROOT, "deploy")


class Checker:
    def __init__(self):
        self.failures, self.passed = [], 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failures.append(what)
        return bool(cond)


def server_env_names():
    """REALNVP_* names bin/realnvp-server reads (from server/main.c's option table)."""
    src = open(os.path.join(ROOT, "server", "main.c")).read()
    return set(re.findall(r'"(REALNVP_[A-Z0-9_]+)"', src))


def server_metric_names():
    src = "".join(open(os.path.join(ROOT, "server", f)).read() for f in os.listdir(os.path.join(ROOT, "server"))
                  if f.endswith(".c"))
    return set(re.findall(r"\b(realnvp_[a-z0-9_]+)", src))


def trainer_options():
    """{name: type} of bin/realnvp-train's long options (train/options.c's table: {"name", O_TYPE, ...}),
    plus --help and --version, which tr_opts_parse_argv handles itself."""
    src = open(os.path.join(ROOT, "train", "options.c")).read()
    opts = dict(re.findall(r'\{"([a-z0-9-]+)",\s*O_(STR|INT|LONG|DBL|BOOL|U64)\b', src))
    for special in ("help", "version"):
        if f'"--{special}"' in src:
            opts[special] = "BOOL"
    return opts


def trainer_ckpt_name():
    m = re.search(r'#define CKPT_NAME "([^"]+)"', open(os.path.join(ROOT, "train", "trainer.h")).read())
    return m.group(1) if m else "checkpoint.safetensors"


# ---------------------------------------------------------------- Dockerfile

def parse_dockerfile(text):
    """[(instruction, args)] with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        ins, _, args = cur.partition(" ")
        out.append((ins.upper(), args.strip()))
        cur = ""
    return out


def dockerfile_env(args):
    """ENV a=b c=d (or the legacy ENV a b) -> dict."""
    if "=" not in args.split()[0]:
        k, _, v = args.partition(" ")
        return {k: v.strip()}
    return dict(tok.split("=", 1) for tok in shlex.split(args))


def check_dockerfile(c, text, env_names):
    ins = parse_dockerfile(text)
    froms = [a for i, a in ins if i == "FROM"]
    c.check(len(froms) >= 2, "Dockerfile: multi-stage (two or more FROM)")
    final_from = froms[-1].split()[0] if froms else ""
    c.check(final_from == "debian:bookworm-slim", f"Dockerfile: runtime stage FROM debian:bookworm-slim, not {final_from!r}")
    last = max((k for k, (i, _) in enumerate(ins) if i == "FROM"), default=0)
    rt = ins[last:]
    env = {}
    for i, a in rt:
        if i == "ENV":
            env.update(dockerfile_env(a))
    users = [a for i, a in rt if i == "USER"]
    uid = users[-1].split(":")[0] if users else "0"
    c.check(uid.isdigit() and int(uid) != 0, f"Dockerfile: runtime USER numeric and non-root (got {uid!r})")
    c.check(any(i == "EXPOSE" and "8080" in a.split() for i, a in rt), "Dockerfile: EXPOSE 8080")
    c.check(env.get("REALNVP_HOST") == "0.0.0.0", "Dockerfile: ENV REALNVP_HOST=0.0.0.0")
    c.check(env.get("REALNVP_PORT") == "8080", "Dockerfile: ENV REALNVP_PORT=8080")
    c.check(env.get("REALNVP_MODEL", "").startswith("/models/"), "Dockerfile: ENV REALNVP_MODEL under /models/")
    for k in env:
        if k.startswith("REALNVP_"):
            c.check(k in env_names, f"Dockerfile: ENV {k} is not an option of realnvp-server")
    copies = [a for i, a in rt if i == "COPY"]
    model_dir = os.path.dirname(env.get("REALNVP_MODEL", "/x/y"))
    c.check(any(a.split()[-1].rstrip("/") == model_dir for a in copies),
            f"Dockerfile: the model directory {model_dir} is COPYed into the runtime image")
    hc = [a for i, a in rt if i == "HEALTHCHECK"]
    hc_cmd = None
    if c.check(hc and " CMD " in f" {hc[-1]} ", "Dockerfile: HEALTHCHECK ... CMD in the runtime stage"):
        cmd = hc[-1].split(" CMD ", 1)[1] if " CMD " in hc[-1] else hc[-1].split("CMD ", 1)[1]
        try:
            hc_cmd = json.loads(cmd)
        except ValueError:
            hc_cmd = shlex.split(cmd)
        copied_to = {a.split()[-1] for a in copies}
        c.check(hc_cmd and (hc_cmd[0] in copied_to or "healthz" in " ".join(hc_cmd)),
                f"Dockerfile: HEALTHCHECK runs a program COPYed into the image or names /healthz ({hc_cmd})")
        hsrc = os.path.join(DEPLOY, "healthcheck.sh")
        c.check(os.path.exists(hsrc) and "/healthz" in open(hsrc).read(), "deploy/healthcheck.sh requests /healthz")
    ep = [a for i, a in rt if i == "ENTRYPOINT"]
    ep_json = None
    if c.check(ep, "Dockerfile: ENTRYPOINT in the runtime stage"):
        try:
            ep_json = json.loads(ep[-1])
        except ValueError:
            pass
        c.check(isinstance(ep_json, list), "Dockerfile: ENTRYPOINT in exec (JSON) form, so SIGTERM reaches the server")
        c.check(isinstance(ep_json, list) and ep_json and ep_json[0].endswith("realnvp-server"),
                "Dockerfile: ENTRYPOINT runs realnvp-server itself (no shell in between)")
    bstage = ins[:last]
    c.check(any(i == "RUN" and "make" in a for i, a in bstage), "Dockerfile: build stage runs make")
    c.check(any(i == "RUN" and "-dev" in a for i, a in bstage), "Dockerfile: build stage installs -dev packages")
    c.check(not any(i == "RUN" and re.search(r"\S+-dev\b", a) for i, a in rt), "Dockerfile: no -dev packages at run time")
    return {"uid": int(uid) if uid.isdigit() else None, "env": env, "healthcheck": hc_cmd, "copies": copies}


def dockerfile_stages(text):
    """[(name, [(instruction, args)])] per FROM (name: the AS name, else the stage's index)."""
    stages = []
    for i, a in parse_dockerfile(text):
        if i == "FROM":
            toks = a.split()
            stages.append((toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else str(len(stages)), []))
        elif stages:
            stages[-1][1].append((i, a))
    return stages


def dockerfile_train_stage(c, text):
    """The `train` stage's user (USER and the useradd that creates it), home, sshd config and what
    it copies: {"uid", "user", "home", "run", "copies"} (None when there is no such stage)."""
    st = dict(dockerfile_stages(text)).get("train")
    if not c.check(st is not None, "Dockerfile: a stage named train (docker build --target train)"):
        return None
    users = [a for i, a in st if i == "USER"]
    uid = users[-1].split(":")[0] if users else "0"
    run = " && ".join(a for i, a in st if i == "RUN")
    made = {}
    for cmd in re.split(r"&&|;|\|\|", run):
        toks = shlex.split(cmd) if cmd.strip() else []
        if toks and toks[0] == "useradd":
            u, home = toks[-1], None
            for k, t in enumerate(toks[:-1]):
                if t in ("--uid", "-u"):
                    made.setdefault(u, {})["uid"] = toks[k + 1]
                elif t in ("--home-dir", "-d"):
                    home = toks[k + 1]
            made.setdefault(u, {})["home"] = home or f"/home/{u}"
    user = next((u for u, v in made.items() if v.get("uid") == uid), None)
    c.check(uid.isdigit() and int(uid) != 0, f"Dockerfile train: USER numeric and non-root (got {uid!r})")
    c.check(user is not None, f"Dockerfile train: USER {uid} is created by a useradd --uid {uid} in the stage")
    copies = [a for i, a in st if i == "COPY"]
    c.check(any("realnvp-train" in a and a.split()[-1].rstrip("/") in ("/usr/local/bin", "/usr/local/bin/realnvp-train")
                for a in copies), "Dockerfile train: realnvp-train is COPYed into /usr/local/bin")
    c.check(re.search(r"\bopenmpi-bin\b", run) and re.search(r"\bopenssh-server\b", run),
            "Dockerfile train: installs openmpi-bin and openssh-server")
    c.check(not re.search(r"\S+-dev\b", run), "Dockerfile train: no -dev packages in the train image")
    builds = " ".join(a for _, stg in dockerfile_stages(text) for i, a in stg if i == "RUN")
    c.check("MPI: yes" in builds, "Dockerfile: a train build stage checks bin/realnvp-train --version says MPI: yes")
    return {"uid": int(uid) if uid.isdigit() else None, "user": user,
            "home": (made.get(user) or {}).get("home"), "run": run, "copies": copies}


def check_dockerignore(c, text):
    pats = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")]
    c.check(".git" in pats or (pats and pats[0] == "*"), ".dockerignore: excludes .git (or everything by default)")
    if pats and pats[0] == "*":
        for need in ("Makefile", "include/", "core/", "cli/", "server/", "train/", "deploy/healthcheck.sh"):
            c.check(f"!{need}" in pats, f".dockerignore: allowlist keeps {need}")
        c.check(any(p.startswith("!models") for p in pats), ".dockerignore: allowlist keeps the model")
    else:
        for bad in ("build", "bin"):
            c.check(bad in pats or bad + "/" in pats, f".dockerignore: excludes {bad}/")


# ---------------------------------------------------------------- compose

def duration_s(v):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(v))
    if not m or not any(m.groups()):
        return None
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def check_compose(c, doc, env_names, df):
    svcs = doc.get("services") or {}
    if not c.check(len(svcs) >= 1, "compose: at least one service"):
        return
    name, s = next(iter(svcs.items()))
    b = s.get("build") or {}
    ctx = os.path.normpath(os.path.join(DEPLOY, b.get("context", ".")))
    c.check(ctx == ROOT, f"compose: build context is the repository root (got {ctx})")
    c.check(os.path.exists(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))), "compose: build.dockerfile exists")
    c.check(s.get("restart") in ("always", "unless-stopped", "on-failure"), f"compose: restart policy ({s.get('restart')})")
    env = s.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    env = {k: str(v) for k, v in env.items()}
    for k in env:
        c.check(k in env_names, f"compose: environment {k} is not an option of realnvp-server")
    c.check(env.get("REALNVP_HOST", df["env"].get("REALNVP_HOST")) == "0.0.0.0", "compose: listens on 0.0.0.0 in the container")
    model = env.get("REALNVP_MODEL", df["env"].get("REALNVP_MODEL", ""))
    port = env.get("REALNVP_PORT", df["env"].get("REALNVP_PORT", "8080"))
    mounts = []
    for v in s.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            mounts.append({"source": parts[0], "target": parts[1], "read_only": len(parts) > 2 and "ro" in parts[2].split(",")})
        else:
            mounts.append(v)
    mm = [m for m in mounts if model.startswith(m["target"].rstrip("/") + "/")]
    if c.check(mm, f"compose: a mounted models folder contains REALNVP_MODEL ({model})"):
        c.check(mm[0].get("read_only"), "compose: the models folder is mounted read-only")
        src = os.path.normpath(os.path.join(DEPLOY, mm[0]["source"]))
        c.check(src == os.path.join(ROOT, "models"), f"compose: the mounted folder is the repository's models/ ({src})")
    hc = s.get("healthcheck") or {}
    test = hc.get("test") or []
    test_s = " ".join(test) if isinstance(test, list) else str(test)
    c.check("healthz" in test_s or (df["healthcheck"] and df["healthcheck"][0] in test_s),
            f"compose: healthcheck runs /healthz or the image's check ({test_s})")
    c.check(all(k in hc for k in ("interval", "timeout", "retries")), "compose: healthcheck interval, timeout, retries")
    ports = [str(p) for p in s.get("ports") or []]
    c.check(any(p.split(":")[-1].split("/")[0] == port for p in ports), f"compose: publishes container port {port}")
    grace = duration_s(s.get("stop_grace_period", "10s"))
    drain = int(env.get("REALNVP_DRAIN_TIMEOUT_S", df["env"].get("REALNVP_DRAIN_TIMEOUT_S", 30)))
    c.check(grace is not None and grace > drain, f"compose: stop_grace_period ({grace}s) > drain timeout ({drain}s)")
    c.check(s.get("stop_signal", "SIGTERM") == "SIGTERM", "compose: stop_signal SIGTERM")
    threads = env.get("REALNVP_COMPUTE_THREADS")
    cpus = (((s.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("cpus")
    if threads and cpus:
        c.check(int(threads) <= float(cpus), f"compose: REALNVP_COMPUTE_THREADS ({threads}) <= cpus limit ({cpus})")


# ---------------------------------------------------------------- Kubernetes

def cpu_q(v):
    v = str(v)
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def mem_q(v):
    v = str(v)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for u, f in units.items():
        if v.endswith(u):
            return float(v[: -len(u)]) * f
    return float(v)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(c, docs, env_names, metric_names, df, files):
    by_kind = {}
    for d in docs:
        if d:
            by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"):
        c.check(len(by_kind.get(kind, [])) == 1, f"k8s: exactly one {kind}")
    deps, svcs, hpas = by_kind.get("Deployment", []), by_kind.get("Service", []), by_kind.get("HorizontalPodAutoscaler", [])
    if not deps:
        return
    d = deps[0]
    c.check(d.get("apiVersion") == "apps/v1", "k8s Deployment: apiVersion apps/v1")
    spec = d.get("spec") or {}
    tmpl = spec.get("template") or {}
    plabels = (tmpl.get("metadata") or {}).get("labels") or {}
    c.check(matches((spec.get("selector") or {}).get("matchLabels"), plabels), "k8s Deployment: selector matches pod labels")
    pod = tmpl.get("spec") or {}
    ctrs = pod.get("containers") or []
    if not c.check(len(ctrs) == 1, "k8s Deployment: one container"):
        return
    k = ctrs[0]
    env = {e["name"]: str(e.get("value")) for e in k.get("env") or []}
    for n in env:
        c.check(n in env_names, f"k8s Deployment: env {n} is not an option of realnvp-server")
    eff = dict(df["env"], **env)
    port = int(eff.get("REALNVP_PORT", 8080))
    cports = {p.get("name"): p.get("containerPort") for p in k.get("ports") or []}
    c.check(port in cports.values(), f"k8s Deployment: containerPort {port} (= REALNVP_PORT)")
    c.check(eff.get("REALNVP_HOST") == "0.0.0.0", "k8s Deployment: the server listens on 0.0.0.0")

    def probe_ok(p, path):
        g = (p or {}).get("httpGet") or {}
        pp = g.get("port")
        return g.get("path") == path and (pp == port or cports.get(pp) == port)

    c.check(probe_ok(k.get("readinessProbe"), "/readyz"), "k8s Deployment: readinessProbe httpGet /readyz on the server's port")
    c.check(probe_ok(k.get("livenessProbe"), "/healthz"), "k8s Deployment: livenessProbe httpGet /healthz on the server's port")
    res = k.get("resources") or {}
    rq, lim = res.get("requests") or {}, res.get("limits") or {}
    for r in ("cpu", "memory"):
        if c.check(r in rq and r in lim, f"k8s Deployment: {r} request and limit"):
            q = cpu_q if r == "cpu" else mem_q
            c.check(q(rq[r]) <= q(lim[r]), f"k8s Deployment: {r} request <= limit")
    if "memory" in rq:
        c.check(mem_q(rq["memory"]) >= 40 * 2**20, "k8s Deployment: memory request covers the measured peak RSS (36 MB)")
    if "REALNVP_COMPUTE_THREADS" in eff and "cpu" in lim:
        c.check(int(eff["REALNVP_COMPUTE_THREADS"]) <= max(1, cpu_q(lim["cpu"])),
                "k8s Deployment: REALNVP_COMPUTE_THREADS <= cpu limit")
    else:
        c.check(False, "k8s Deployment: REALNVP_COMPUTE_THREADS set (default is every host CPU)")
    grace = pod.get("terminationGracePeriodSeconds")
    pre = (((k.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    c.check(len(pre) == 2 and pre[0] in ("sleep", "/bin/sleep") and pre[1].isdigit() and int(pre[1]) > 0,
            f"k8s Deployment: preStop exec sleep N ({pre})")
    drain = int(eff.get("REALNVP_DRAIN_TIMEOUT_S", 30))
    pre_s = int(pre[1]) if len(pre) == 2 and pre[1].isdigit() else 0
    c.check(isinstance(grace, int) and grace > pre_s + drain,
            f"k8s Deployment: terminationGracePeriodSeconds ({grace}) > preStop ({pre_s}) + drain ({drain})")
    sc = dict(pod.get("securityContext") or {}, **(k.get("securityContext") or {}))
    c.check(sc.get("runAsNonRoot") is True, "k8s Deployment: runAsNonRoot")
    c.check(sc.get("runAsUser") in (None, df["uid"]), f"k8s Deployment: runAsUser matches the image's USER ({df['uid']})")
    c.check(sc.get("allowPrivilegeEscalation") is False, "k8s Deployment: allowPrivilegeEscalation false")
    model = eff.get("REALNVP_MODEL", "")
    mounts = [m for m in k.get("volumeMounts") or [] if model.startswith(m["mountPath"].rstrip("/") + "/")]
    baked = any(a.split()[-1].rstrip("/") == os.path.dirname(model) for a in df["copies"])
    c.check((mounts and mounts[0].get("readOnly") is True) or (not mounts and baked),
            f"k8s Deployment: the model ({model}) is baked into the image or on a read-only volume")
    vols = {v["name"] for v in pod.get("volumes") or []}
    for m in k.get("volumeMounts") or []:
        c.check(m["name"] in vols, f"k8s Deployment: volumeMount {m['name']} has a volume")

    for s in svcs:
        sp = s.get("spec") or {}
        c.check(matches(sp.get("selector"), plabels), "k8s Service: selector matches the Deployment's pods")
        for p in sp.get("ports") or []:
            t = p.get("targetPort", p.get("port"))
            c.check(t == port or cports.get(t) == port, f"k8s Service: targetPort {t} is the server's port")
    for h in hpas:
        hs = h.get("spec") or {}
        ref = hs.get("scaleTargetRef") or {}
        c.check(h.get("apiVersion") == "autoscaling/v2", "k8s HPA: autoscaling/v2")
        c.check(ref.get("kind") == "Deployment" and ref.get("name") == d["metadata"]["name"], "k8s HPA: targets the Deployment")
        c.check(1 <= hs.get("minReplicas", 1) <= hs.get("maxReplicas", 0), "k8s HPA: 1 <= minReplicas <= maxReplicas")
        ms = hs.get("metrics") or []
        cpu = [m for m in ms if m.get("type") == "Resource" and m["resource"]["name"] == "cpu"]
        if cpu:
            c.check("cpu" in rq, "k8s HPA: CPU utilization needs a CPU request")
        pods = [m["pods"]["metric"]["name"] for m in ms if m.get("type") == "Pods"]
        c.check("realnvp_queue_depth" in pods, "k8s HPA: scales on realnvp_queue_depth")
        for n in pods:
            c.check(n in metric_names, f"k8s HPA: metric {n} is exported by the server's /metrics")
    for p in by_kind.get("PodDisruptionBudget", []):
        c.check(matches(((p.get("spec") or {}).get("selector") or {}).get("matchLabels"), plabels),
                "k8s PodDisruptionBudget: selector matches the Deployment's pods")
    for kz in by_kind.get("Kustomization", []):
        listed = set(kz.get("resources") or [])
        c.check(listed == set(files) - {"kustomization.yaml"}, f"k8s kustomization: lists every manifest ({sorted(listed)})")


# ---------------------------------------------------------------- Kubernetes: training (MPIJob)

SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash", "/usr/bin/bash")


def launcher_script(ctr):
    """The launcher container's command as shell text: the -c script of a shell, else the argv."""
    argv = [str(x) for x in (ctr.get("command") or []) + (ctr.get("args") or [])]
    if argv and argv[0] in SHELLS and "-c" in argv[1:]:
        k = argv.index("-c")
        return argv[k + 1] if k + 1 < len(argv) else ""
    return shlex.join(argv)


def shell_tokens(script):
    """The script's words (comments dropped, line continuations joined, `;`/`&&` split off), with
    $NAME and ${NAME} replaced by the script's simple assignments NAME=value."""
    lex = shlex.shlex(script.replace("\\\n", " "), posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    lex.commenters = "#"
    toks, vars_ = list(lex), {}
    for t in toks:
        m = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", t)
        if m:
            vars_[m.group(1)] = m.group(2)
    sub = lambda t: re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: vars_.get(m.group(1), m.group(0)), t)  # noqa: E731
    return [sub(t) for t in toks]


def mpirun_parts(toks):
    """(mpirun's own options, the program, index of mpirun) of the first `mpirun ... realnvp-train`."""
    for k, t in enumerate(toks):
        if os.path.basename(t) in ("mpirun", "mpiexec"):
            for j in range(k + 1, len(toks)):
                if os.path.basename(toks[j]) == "realnvp-train":
                    return toks[k + 1:j], toks[j], k
                if toks[j] in (";", "&&", "||", "|"):
                    break
            return toks[k + 1:], None, k
    return [], None, None


def mpirun_np(opts):
    for k, t in enumerate(opts):
        if t in ("-n", "-np", "--n", "--np", "-c") and k + 1 < len(opts):
            return opts[k + 1]
        m = re.fullmatch(r"--?n(?:p)?=(\S+)", t)
        if m:
            return m.group(1)
    return None


def trainer_args(toks, mpi_opts, topts):
    """[(option, value or None)] of every --option in the script outside mpirun's own options."""
    skip = set()
    _, _, k = mpirun_parts(toks)
    if k is not None:
        skip = set(range(k + 1, k + 1 + len(mpi_opts)))
    out, j = [], 0
    while j < len(toks):
        t = toks[j]
        if j in skip or not t.startswith("--") or t == "--":
            j += 1
            continue
        name, eq, val = t[2:].partition("=")
        typ = topts.get(name) or (topts.get(name[3:]) if name.startswith("no-") else None)
        if not eq and typ and typ != "BOOL" and j + 1 < len(toks):
            val = toks[j + 1]
            j += 1
        out.append((name, val if (eq or (typ and typ != "BOOL")) else None))
        j += 1
    return out


def pod_spec(job, role):
    return ((((job.get("spec") or {}).get("mpiReplicaSpecs") or {}).get(role) or {}).get("template") or {}).get("spec") or {}


def mount_for(path, ctr, pod):
    """(mount, volume's claimName) of the container's volumeMount holding path (the deepest)."""
    best = None
    for m in ctr.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    if best is None:
        return None, None
    vol = next((v for v in pod.get("volumes") or [] if v.get("name") == best.get("name")), {})
    return best, ((vol.get("persistentVolumeClaim") or {}).get("claimName"))


def check_k8s_train(c, docs, files, topts, tdf, ckpt_name):
    if not c.check(files, "k8s-train: deploy/k8s-train/ holds the training manifests"):
        return
    jobs = [d for d in docs if d and d.get("kind") == "MPIJob"]
    if not c.check(len(jobs) == 1, f"k8s-train: exactly one MPIJob (found {len(jobs)})"):
        return
    job = jobs[0]
    spec = job.get("spec") or {}
    c.check(job.get("apiVersion") == "kubeflow.org/v2beta1", f"k8s-train MPIJob: apiVersion kubeflow.org/v2beta1 ({job.get('apiVersion')})")
    c.check(spec.get("mpiImplementation", "OpenMPI") == "OpenMPI", "k8s-train MPIJob: mpiImplementation OpenMPI (the image's MPI)")
    slots = spec.get("slotsPerWorker", 1)
    c.check(isinstance(slots, int) and slots >= 1, f"k8s-train MPIJob: slotsPerWorker a positive integer ({slots})")
    rp = spec.get("runPolicy") or {}
    c.check(rp.get("cleanPodPolicy") in ("Running", "All"), f"k8s-train MPIJob: runPolicy.cleanPodPolicy Running or All ({rp.get('cleanPodPolicy')})")
    c.check(isinstance(rp.get("backoffLimit"), int) and rp["backoffLimit"] >= 0, "k8s-train MPIJob: runPolicy.backoffLimit set")
    home = (tdf or {}).get("home")
    c.check(tdf is not None and spec.get("sshAuthMountPath") == f"{home}/.ssh",
            f"k8s-train MPIJob: sshAuthMountPath ({spec.get('sshAuthMountPath')}) is the image user's ~/.ssh ({home}/.ssh)")
    reps = spec.get("mpiReplicaSpecs") or {}
    la, wo = reps.get("Launcher") or {}, reps.get("Worker") or {}
    c.check(la.get("replicas", 1) == 1, f"k8s-train MPIJob: Launcher replicas 1 ({la.get('replicas')})")
    nw = wo.get("replicas", 0)
    if not c.check(isinstance(nw, int) and nw >= 1, f"k8s-train MPIJob: Worker replicas >= 1 ({nw})"):
        return
    lpod, wpod = pod_spec(job, "Launcher"), pod_spec(job, "Worker")
    lc, wc = lpod.get("containers") or [], wpod.get("containers") or []
    if not (c.check(len(lc) == 1, "k8s-train MPIJob: one Launcher container")
            and c.check(len(wc) == 1, "k8s-train MPIJob: one Worker container")):
        return
    lc, wc = lc[0], wc[0]

    # the image: the same everywhere, the Dockerfile's train target
    images = {k.get("image") for p in (lpod, wpod) for k in (p.get("containers") or []) + (p.get("initContainers") or [])}
    c.check(len(images) == 1, f"k8s-train MPIJob: every container runs the same training image ({sorted(map(str, images))})")
    # the user: non-root, the one the image creates
    for role, pod, k in (("Launcher", lpod, lc), ("Worker", wpod, wc)):
        sc = dict(pod.get("securityContext") or {}, **(k.get("securityContext") or {}))
        uid = sc.get("runAsUser")
        c.check(isinstance(uid, int) and uid != 0 and tdf is not None and uid == tdf["uid"],
                f"k8s-train {role}: runAsUser ({uid}) non-root and the train image's user ({(tdf or {}).get('uid')})")
        c.check(sc.get("runAsNonRoot") is True, f"k8s-train {role}: runAsNonRoot")

    # the workers: sshd in the foreground with the image's config
    wargv = [str(x) for x in (wc.get("command") or []) + (wc.get("args") or [])]
    c.check(wargv and os.path.basename(wargv[0]) == "sshd" and any(a.startswith("-") and "D" in a for a in wargv[1:]),
            f"k8s-train Worker: runs sshd in the foreground (-D) ({' '.join(wargv)})")
    cfg = wargv[wargv.index("-f") + 1] if "-f" in wargv[:-1] else None
    c.check(cfg is not None and tdf is not None and cfg in tdf["run"],
            f"k8s-train Worker: sshd -f {cfg}: a config the train image writes")
    res = wc.get("resources") or {}
    rq, lim = res.get("requests") or {}, res.get("limits") or {}
    for r in ("cpu", "memory"):
        if c.check(r in rq and r in lim, f"k8s-train Worker: {r} request and limit"):
            q = cpu_q if r == "cpu" else mem_q
            c.check(q(rq[r]) <= q(lim[r]), f"k8s-train Worker: {r} request <= limit")

    # the launcher: mpirun -n (Worker replicas x slotsPerWorker) ... realnvp-train OPTIONS
    script = launcher_script(lc)
    toks = shell_tokens(script)
    mopts, prog, _ = mpirun_parts(toks)
    if not c.check(prog is not None, "k8s-train Launcher: runs mpirun ... realnvp-train"):
        return
    c.check(prog in ("realnvp-train", "/usr/local/bin/realnvp-train"), f"k8s-train Launcher: the trainer the image installs ({prog})")
    np_ = mpirun_np(mopts)
    nproc = nw * slots
    c.check(np_ is not None and str(np_).isdigit() and int(np_) == nproc,
            f"k8s-train Launcher: mpirun -n ({np_}) = Worker replicas x slotsPerWorker ({nw} x {slots})")
    targs = trainer_args(toks, mopts, topts)
    for name, _ in targs:
        c.check(name in topts or (name.startswith("no-") and topts.get(name[3:]) == "BOOL"),
                f"k8s-train Launcher: --{name} is an option of realnvp-train (train/options.c)")
    vals = {}
    for name, v in targs:
        vals.setdefault(name, v)
    batch, threads = vals.get("batch", "64"), vals.get("threads")
    if c.check(str(batch).isdigit(), f"k8s-train Launcher: --batch an integer ({batch})"):
        c.check(int(batch) >= nproc and int(batch) % nproc == 0,
                f"k8s-train Launcher: --batch {batch} (global) divisible by the {nproc} processes")
    if c.check(threads is not None and str(threads).isdigit() and int(threads) >= 1,
               f"k8s-train Launcher: --threads set ({threads}; the default counts the node's cores, not the pod's)"):
        c.check("cpu" in lim and int(threads) * slots <= max(1, cpu_q(lim["cpu"])),
                f"k8s-train Launcher: --threads {threads} x {slots} slots <= the Worker's cpu limit ({lim.get('cpu')})")
        if int(threads) > 1:
            c.check(any(t == "--bind-to" and j + 1 < len(mopts) and mopts[j + 1] == "none" for j, t in enumerate(mopts))
                    or "--bind-to=none" in mopts, "k8s-train Launcher: mpirun --bind-to none (else each rank's threads share one core)")
    if "resume" in vals:
        c.check(ckpt_name in script, f"k8s-train Launcher: --resume only when {ckpt_name} exists (a first start has none)")

    # the volumes: --out on a ReadWriteMany claim of this folder, mounted alike in launcher and workers
    pvcs = {(d.get("metadata") or {}).get("name"): d for d in docs if d and d.get("kind") == "PersistentVolumeClaim"}
    for opt, rw in (("out", True), ("data", False)):
        path = vals.get(opt)
        if not c.check(path and str(path).startswith("/"), f"k8s-train Launcher: --{opt} an absolute path ({path})"):
            continue
        lm, lclaim = mount_for(path, lc, lpod)
        wm, wclaim = mount_for(path, wc, wpod)
        c.check(lm is not None and wm is not None, f"k8s-train: --{opt} {path} is on a volume mounted in the launcher and the workers")
        if lm is None or wm is None:
            continue
        pvc = pvcs.get(wclaim) or {}
        modes = (pvc.get("spec") or {}).get("accessModes") or []
        c.check(wclaim in pvcs, f"k8s-train: --{opt} {path} is on a PersistentVolumeClaim defined in deploy/k8s-train/ ({wclaim})")
        c.check("ReadWriteMany" in modes or (not rw and "ReadOnlyMany" in modes),
                f"k8s-train: the claim under --{opt} ({wclaim}) is {'ReadWriteMany' if rw else 'shared (ReadWriteMany or ReadOnlyMany)'} ({modes})")
        c.check(lclaim == wclaim and lm.get("mountPath") == wm.get("mountPath") and lm.get("subPath") == wm.get("subPath"),
                f"k8s-train: --{opt} {path}: the launcher and the workers mount the same claim and subPath there")
        if rw:
            c.check(not wm.get("readOnly"), f"k8s-train Worker: --out {path} is not mounted read-only (rank 0 writes there)")
    for role, pod, k in (("Launcher", lpod, lc), ("Worker", wpod, wc)):
        vols = {v["name"] for v in pod.get("volumes") or []}
        for m in k.get("volumeMounts") or []:
            c.check(m["name"] in vols, f"k8s-train {role}: volumeMount {m['name']} has a volume")


# ---------------------------------------------------------------- main

def load_all():
    k8s_dir = os.path.join(DEPLOY, "k8s")
    files = sorted(f for f in os.listdir(k8s_dir) if f.endswith((".yaml", ".yml")))
    docs = []
    for f in files:
        docs += list(yaml.safe_load_all(open(os.path.join(k8s_dir, f))))
    tr_dir = os.path.join(DEPLOY, "k8s-train")
    tr_files = sorted(f for f in os.listdir(tr_dir) if f.endswith((".yaml", ".yml"))) if os.path.isdir(tr_dir) else []
    tr_docs = []
    for f in tr_files:
        tr_docs += list(yaml.safe_load_all(open(os.path.join(tr_dir, f))))
    return {
        "dockerfile": open(os.path.join(DEPLOY, "Dockerfile")).read(),
        "dockerignore": open(os.path.join(ROOT, ".dockerignore")).read(),
        "compose": yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml"))),
        "k8s": docs, "k8s_files": files,
        "k8s_train": tr_docs, "k8s_train_files": tr_files,
        "trainer_options": trainer_options(), "ckpt_name": trainer_ckpt_name(),
    }


def run(m, env_names, metric_names):
    c = Checker()
    df = check_dockerfile(c, m["dockerfile"], env_names)
    tdf = dockerfile_train_stage(c, m["dockerfile"])
    check_dockerignore(c, m["dockerignore"])
    check_compose(c, m["compose"], env_names, df)
    check_k8s(c, m["k8s"], env_names, metric_names, df, m["k8s_files"])
    check_k8s_train(c, m["k8s_train"], m["k8s_train_files"], m["trainer_options"], tdf, m["ckpt_name"])
    return c


def dep(m):
    return next(d for d in m["k8s"] if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]


def self_test(m, env_names, metric_names):
    """Each mutation must make run() report at least one failure."""
    def ctr(x):
        return dep(x)["containers"][0]

    def svc(x):
        return next(d for d in x["k8s"] if d and d["kind"] == "Service")

    def hpa(x):
        return next(d for d in x["k8s"] if d and d["kind"] == "HorizontalPodAutoscaler")

    def job(x):
        return next(d for d in x["k8s_train"] if d and d.get("kind") == "MPIJob")

    def trpod(x, role):
        return job(x)["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]

    def largs(x, old, new):
        k = trpod(x, "Launcher")["containers"][0]
        assert old in k["args"][-1], old
        k["args"][-1] = k["args"][-1].replace(old, new)

    def pvc(x):
        return next(d for d in x["k8s_train"] if d and d.get("kind") == "PersistentVolumeClaim")

    muts = {
        "Dockerfile shell-form ENTRYPOINT": lambda x: x.update(dockerfile=x["dockerfile"].replace(
            'ENTRYPOINT ["/usr/local/bin/realnvp-server"]', "ENTRYPOINT /usr/local/bin/realnvp-server")),
        "Dockerfile USER root": lambda x: x.update(dockerfile=x["dockerfile"].replace("USER 10001:10001", "USER root")),
        "Dockerfile without HEALTHCHECK": lambda x: x.update(dockerfile=re.sub(r"\nHEALTHCHECK[^\n]*", "", x["dockerfile"])),
        "Dockerfile listens on 127.0.0.1": lambda x: x.update(dockerfile=x["dockerfile"].replace("REALNVP_HOST=0.0.0.0", "REALNVP_HOST=127.0.0.1")),
        "compose misspelt env": lambda x: x["compose"]["services"]["realnvp"]["environment"].update(REALNVP_MAXBATCH="8"),
        "compose rw models": lambda x: x["compose"]["services"]["realnvp"].update(volumes=["../models:/models"]),
        "compose no restart": lambda x: x["compose"]["services"]["realnvp"].pop("restart"),
        "compose short grace": lambda x: x["compose"]["services"]["realnvp"].update(stop_grace_period="10s"),
        "k8s readiness on /healthz": lambda x: ctr(x)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "k8s no liveness": lambda x: ctr(x).pop("livenessProbe"),
        "k8s no memory limit": lambda x: ctr(x)["resources"]["limits"].pop("memory"),
        "k8s request > limit": lambda x: ctr(x)["resources"]["requests"].update(cpu="4"),
        "k8s short grace": lambda x: dep(x).update(terminationGracePeriodSeconds=20),
        "k8s no preStop": lambda x: ctr(x).pop("lifecycle"),
        "k8s root": lambda x: dep(x)["securityContext"].update(runAsNonRoot=False),
        "k8s service selector": lambda x: svc(x)["spec"]["selector"].update({"app.kubernetes.io/name": "other"}),
        "k8s service port": lambda x: svc(x)["spec"]["ports"][0].update(targetPort=9090),
        "k8s HPA target": lambda x: hpa(x)["spec"]["scaleTargetRef"].update(name="other"),
        "k8s HPA unknown metric": lambda x: hpa(x)["spec"]["metrics"][0]["pods"]["metric"].update(name="realnvp_queue_len"),
        "k8s rw model volume": lambda x: ctr(x)["volumeMounts"].append({"name": "tmp", "mountPath": "/models"}),
        "Dockerfile without a train stage": lambda x: x.update(dockerfile=x["dockerfile"].replace(" AS train\n", " AS trainer\n")),
        "Dockerfile train USER root": lambda x: x.update(dockerfile=x["dockerfile"].replace("USER 1000:1000", "USER 0:0")),
        ".dockerignore without train/": lambda x: x.update(dockerignore=x["dockerignore"].replace("!train/\n", "")),
        "mpijob apiVersion v1": lambda x: job(x).update(apiVersion="kubeflow.org/v1"),
        "mpijob -n differs from workers": lambda x: job(x)["spec"]["mpiReplicaSpecs"]["Worker"].update(replicas=3),
        "mpijob 2 slots per worker": lambda x: job(x)["spec"].update(slotsPerWorker=2),
        "mpijob 2 launchers": lambda x: job(x)["spec"]["mpiReplicaSpecs"]["Launcher"].update(replicas=2),
        "mpijob unknown trainer option": lambda x: largs(x, "--warmup 200", "--warm-up 200"),
        "mpijob --batch not divisible": lambda x: largs(x, "--batch 64", "--batch 66"),
        "mpijob --threads > cpu limit": lambda x: largs(x, "--threads 2", "--threads 4"),
        "mpijob no --threads": lambda x: largs(x, "--threads 2", ""),
        "mpijob bound to a core": lambda x: largs(x, "--bind-to none", "--bind-to core"),
        "mpijob --out not on the PVC": lambda x: largs(x, "OUT=/runs/fmnist", "OUT=/tmp/fmnist"),
        "mpijob --resume always": lambda x: largs(x, "checkpoint.safetensors", "ckpt"),
        "mpijob PVC ReadWriteOnce": lambda x: pvc(x)["spec"].update(accessModes=["ReadWriteOnce"]),
        "mpijob --out not mounted on workers": lambda x: trpod(x, "Worker")["containers"][0]["volumeMounts"].pop(0),
        "mpijob root user": lambda x: trpod(x, "Worker")["securityContext"].update(runAsUser=0),
        "mpijob other uid": lambda x: trpod(x, "Launcher")["securityContext"].update(runAsUser=1001),
        "mpijob two images": lambda x: trpod(x, "Worker")["containers"][0].update(image="realnvp:latest"),
        "mpijob workers without sshd": lambda x: trpod(x, "Worker")["containers"][0].update(command=["sleep"], args=["infinity"]),
        "mpijob worker without cpu limit": lambda x: trpod(x, "Worker")["containers"][0]["resources"]["limits"].pop("cpu"),
        "mpijob ssh keys elsewhere": lambda x: job(x)["spec"].update(sshAuthMountPath="/root/.ssh"),
    }
    bad = 0
    for name, f in muts.items():
        x = copy.deepcopy(m)
        f(x)
        c = run(x, env_names, metric_names)
        ok = len(c.failures) > 0
        bad += not ok
        print(f"  self-test {'ok  ' if ok else 'MISS'} {name}: {c.failures[0] if ok else 'no failure reported'}")
    return bad


def main():
    env_names, metric_names = server_env_names(), server_metric_names()
    if not env_names:
        print("check-manifests: found no REALNVP_* options in server/main.c", file=sys.stderr)
        return 1
    m = load_all()
    c = run(m, env_names, metric_names)
    for f in c.failures:
        print(f"FAIL {f}")
    print(f"check-manifests: {c.passed} checks passed, {len(c.failures)} failed "
          f"(Dockerfile, .dockerignore, docker-compose.yml, k8s/{', k8s/'.join(m['k8s_files'])}, "
          f"k8s-train/{', k8s-train/'.join(m['k8s_train_files'])})")
    rc = 1 if c.failures else 0
    if "--self-test" in sys.argv[1:]:
        bad = self_test(m, env_names, metric_names)
        print(f"check-manifests: self-test: {bad} mutation(s) not caught")
        rc = rc or (1 if bad else 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
