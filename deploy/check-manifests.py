#!/usr/bin/python3
# check-manifests.py: parses deploy/Dockerfile, deploy/docker-compose.yml, deploy/k8s/*.yaml,
# deploy/k8s-train/*.yaml and deploy/kserve/*.yaml and asserts the fields the deployment relies on
# (probes, resources, draining, non-root, env names and flags known to the server, exactly one of
# --model / --model-repository, the model repository mounted read-only and really a repository,
# selectors that match; for KServe: the runtime and InferenceService agree on format, runtime and
# protocol v2, the server serves KServe's /mnt/models; for training: the MPIJob's process count,
# trainer options, shared volume, image and user). Leaves out talking to Docker or a cluster
# (neither is needed).
#
#   python3 deploy/check-manifests.py            # exit 0: all checks pass; 1: each failure printed
#   python3 deploy/check-manifests.py --self-test  # also breaks a copy of each file 1 way per check
#                                                  # group and asserts the checker notices
# Needs python3-yaml (Debian). Only the standard library otherwise. The server's flags and
# REALNVP_* names are read from server/main.c's option table, so a manifest using a flag the
# server does not have (or a misspelt variable, which the server would silently ignore) fails.
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


MODEL_ENV, REPO_ENV = "REALNVP_MODEL", "REALNVP_MODEL_REPOSITORY"
KSERVE_MODEL_DIR = "/mnt/models"   # where KServe mounts or downloads an InferenceService's storageUri


class Server:
    """bin/realnvp-server's options from server/main.c's table ({"--flag", "REALNVP_NAME", ...}):
    flags (flag -> env name), env_names, metric names."""

    def __init__(self):
        src = open(os.path.join(ROOT, "server", "main.c")).read()
        self.flags = dict(re.findall(r'\{\s*"(--[a-z0-9-]+)",\s*"(REALNVP_[A-Z0-9_]+)"', src))
        self.env_names = set(self.flags.values())
        self.metric_names = server_metric_names()


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


# ---------------------------------------------------------------- the model or model repository

def repo_models(path):
    """{name: [versions]} of a model repository folder on disk: <name>/model.safetensors is
    version 1, <name>/<N>/model.safetensors version N (N a positive integer)."""
    out = {}
    if not os.path.isdir(path):
        return out
    for name in sorted(os.listdir(path)):
        d = os.path.join(path, name)
        if not os.path.isdir(d):
            continue
        vs = [1] if os.path.isfile(os.path.join(d, "model.safetensors")) else []
        vs += [int(v) for v in os.listdir(d) if v.isdigit() and int(v) > 0
               and os.path.isfile(os.path.join(d, v, "model.safetensors"))]
        if vs:
            out[name] = sorted(set(vs))
    return out


def is_model_folder(path):
    """A folder that is one model of a repository: model.safetensors or <N>/model.safetensors."""
    return bool(path) and os.path.isdir(path) and bool(repo_models(os.path.dirname(path.rstrip("/")))
                                                       .get(os.path.basename(path.rstrip("/"))))


def parse_server_args(argv):
    """[(flag, value)] of a realnvp-server argv (--flag VALUE or --flag=VALUE; every option takes a
    value); a word that is not a flag comes back as (word, None)."""
    out, k = [], 0
    argv = [str(a) for a in argv]
    while k < len(argv):
        a = argv[k]
        if a.startswith("--") and "=" in a:
            out.append(tuple(a.split("=", 1)))
        elif a.startswith("--"):
            out.append((a, argv[k + 1] if k + 1 < len(argv) else None))
            k += 1
        else:
            out.append((a, None))
        k += 1
    return out


def effective_options(c, where, srv, image_env, env=None, args=None):
    """The options the server ends up with: the image's ENV, then the container's env (an empty
    value unsets: the server ignores empty variables), then flags (a flag wins over its variable).
    Returns {env name: value}; checks that each argument is a flag of the server with a value."""
    eff = {k: str(v) for k, v in image_env.items() if str(v) != ""}
    for k, v in (env or {}).items():
        if str(v) == "":
            eff.pop(k, None)
        else:
            eff[k] = str(v)
    for flag, v in parse_server_args(args or []):
        if c.check(flag in srv.flags, f"{where}: argument {flag} is a flag of realnvp-server (server/main.c)"):
            c.check(v is not None, f"{where}: {flag} has a value")
            eff[srv.flags[flag]] = str(v)
    return eff


def model_source(c, where, eff):
    """(env name, path) of the one model source among REALNVP_MODEL and REALNVP_MODEL_REPOSITORY
    (the server takes exactly one), or (None, "")."""
    given = [k for k in (MODEL_ENV, REPO_ENV) if eff.get(k)]
    c.check(len(given) == 1, f"{where}: exactly one of REALNVP_MODEL / --model and REALNVP_MODEL_REPOSITORY / "
                             f"--model-repository (the image's ENV counts too; got {given or 'neither'})")
    if len(given) != 1:
        return None, ""
    if given[0] == REPO_ENV:
        c.check(not eff.get("REALNVP_MODEL_NAME"), f"{where}: no REALNVP_MODEL_NAME / --model-name with a repository "
                                                   f"(a model's name is its folder's; the server refuses it)")
    return given[0], eff[given[0]].rstrip("/") or "/"


def covers(mount_path, path):
    """Whether a volume mounted at mount_path holds path (the path itself or below it)."""
    mp = mount_path.rstrip("/")
    return path == mp or path.startswith(mp + "/")


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
    for k in env:
        if k.startswith("REALNVP_"):
            c.check(k in env_names, f"Dockerfile: ENV {k} is not an option of realnvp-server")
    copies = [a for i, a in rt if i == "COPY"]
    kind, path = model_source(c, "Dockerfile", env)
    c.check(covers("/models", path), f"Dockerfile: the model source ({path}) is /models or below it")
    # a COPY from the build context (not --from=) of a model folder: to <repository>/<name>/, or
    # to the folder of REALNVP_MODEL
    ctx_copies = [a.split() for a in copies if not a.startswith("--from")]
    if kind == REPO_ENV:
        ok = [t for t in ctx_copies if os.path.dirname(t[-1].rstrip("/")) == path and is_model_folder(os.path.join(ROOT, t[0]))]
        c.check(ok, f"Dockerfile: a model folder of the build context (<name>/[<N>/]model.safetensors) is COPYed "
                    f"into the repository {path} as {path}/<name>/")
    elif kind == MODEL_ENV:
        c.check(any(t[-1].rstrip("/") == os.path.dirname(path) for t in ctx_copies),
                f"Dockerfile: the model directory {os.path.dirname(path)} is COPYed into the runtime image")
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
    return {"uid": int(uid) if uid.isdigit() else None, "env": env, "healthcheck": hc_cmd, "copies": copies,
            "model": (kind, path)}


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


def check_compose(c, doc, srv, df):
    env_names = srv.env_names
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
    cmd = s.get("command") or []
    eff = effective_options(c, "compose", srv, df["env"], env, shlex.split(cmd) if isinstance(cmd, str) else cmd)
    c.check(eff.get("REALNVP_HOST") == "0.0.0.0", "compose: listens on 0.0.0.0 in the container")
    kind, model = model_source(c, "compose", eff)
    port = eff.get("REALNVP_PORT", "8080")
    mounts = []
    for v in s.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            mounts.append({"source": parts[0], "target": parts[1], "read_only": len(parts) > 2 and "ro" in parts[2].split(",")})
        else:
            mounts.append(v)
    mm = [m for m in mounts if kind and covers(m["target"], model)]
    if c.check(mm, f"compose: a mounted models folder holds the {'repository' if kind == REPO_ENV else 'model'} ({model})"):
        c.check(all(m.get("read_only") for m in mm), "compose: the models folder is mounted read-only")
        src = os.path.normpath(os.path.join(DEPLOY, mm[-1]["source"]))
        c.check(src == os.path.join(ROOT, "models"), f"compose: the mounted folder is the repository's models/ ({src})")
        if kind == REPO_ENV:
            inside = os.path.normpath(os.path.join(src, os.path.relpath(model, mm[-1]["target"])))
            found = repo_models(inside)
            c.check(found, f"compose: {model} is a model repository (<name>/[<N>/]model.safetensors; "
                           f"{os.path.relpath(inside, ROOT)}/ holds {found or 'no model'})")
    hc = s.get("healthcheck") or {}
    test = hc.get("test") or []
    test_s = " ".join(test) if isinstance(test, list) else str(test)
    c.check("healthz" in test_s or (df["healthcheck"] and df["healthcheck"][0] in test_s),
            f"compose: healthcheck runs /healthz or the image's check ({test_s})")
    c.check(all(k in hc for k in ("interval", "timeout", "retries")), "compose: healthcheck interval, timeout, retries")
    ports = [str(p) for p in s.get("ports") or []]
    c.check(any(p.split(":")[-1].split("/")[0] == port for p in ports), f"compose: publishes container port {port}")
    grace = duration_s(s.get("stop_grace_period", "10s"))
    drain = int(eff.get("REALNVP_DRAIN_TIMEOUT_S", 30))
    c.check(grace is not None and grace > drain, f"compose: stop_grace_period ({grace}s) > drain timeout ({drain}s)")
    c.check(s.get("stop_signal", "SIGTERM") == "SIGTERM", "compose: stop_signal SIGTERM")
    threads = eff.get("REALNVP_COMPUTE_THREADS")
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


def check_k8s(c, docs, srv, df, files):
    env_names, metric_names = srv.env_names, srv.metric_names
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
    env = {e["name"]: str(e.get("value", "")) for e in k.get("env") or []}
    for n in env:
        c.check(n in env_names, f"k8s Deployment: env {n} is not an option of realnvp-server")
    eff = effective_options(c, "k8s Deployment", srv, df["env"], env, k.get("args"))
    c.check(not k.get("command"), "k8s Deployment: no command: the image's ENTRYPOINT (realnvp-server as PID 1) runs")
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
    kind, model = model_source(c, "k8s Deployment", eff)
    mounts = [m for m in k.get("volumeMounts") or [] if kind and covers(m["mountPath"], model)]
    baked = (kind, model) == df["model"]
    c.check((mounts and all(m.get("readOnly") is True for m in mounts)) or (not mounts and baked),
            f"k8s Deployment: the {'repository' if kind == REPO_ENV else 'model'} ({model}) is the image's own "
            f"or on read-only volumes ({[(m['name'], m.get('readOnly', False)) for m in mounts]})")
    paths = [m["mountPath"].rstrip("/") for m in k.get("volumeMounts") or []]
    c.check(len(paths) == len(set(paths)), f"k8s Deployment: no two volumes mounted at one path ({paths})")
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    for m in k.get("volumeMounts") or []:
        c.check(m["name"] in vols, f"k8s Deployment: volumeMount {m['name']} has a volume")

    # the claims: defined here, shared between nodes when the pods spread over several
    pvcs = {(p.get("metadata") or {}).get("name"): p for p in by_kind.get("PersistentVolumeClaim", [])}
    for p in pvcs.values():
        ps = p.get("spec") or {}
        c.check(ps.get("accessModes"), f"k8s PersistentVolumeClaim {p['metadata']['name']}: accessModes")
        c.check(((ps.get("resources") or {}).get("requests") or {}).get("storage"),
                f"k8s PersistentVolumeClaim {p['metadata']['name']}: a storage request")
    writers = {m["name"] for ic in pod.get("initContainers") or [] for m in ic.get("volumeMounts") or []
               if not m.get("readOnly")}
    for name, v in vols.items():
        claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is None:
            continue
        if not c.check(claim in pvcs, f"k8s Deployment: volume {name}'s claim {claim} is defined in deploy/k8s/"):
            continue
        modes = (pvcs[claim].get("spec") or {}).get("accessModes") or []
        shared = {"ReadWriteMany"} | ({"ReadOnlyMany"} if name not in writers else set())
        c.check(spec.get("replicas", 1) <= 1 or shared & set(modes),
                f"k8s PersistentVolumeClaim {claim}: {' or '.join(sorted(shared))}, since {spec.get('replicas')} pods on "
                f"different nodes mount it{' and an initContainer writes to it' if name in writers else ''} ({modes})")

    # initContainers (the repository's seed): the server's image, non-root, volumes that exist, and
    # what they copy from the image is a model the Dockerfile puts there
    for ic in pod.get("initContainers") or []:
        n = ic.get("name")
        c.check(ic.get("image") == k.get("image"), f"k8s Deployment: initContainer {n} runs the server's image "
                                                   f"({ic.get('image')} vs {k.get('image')})")
        isc = dict(pod.get("securityContext") or {}, **(ic.get("securityContext") or {}))
        c.check(isc.get("runAsNonRoot") is True and isc.get("runAsUser") in (None, df["uid"]),
                f"k8s Deployment: initContainer {n} runs as the image's non-root user")
        c.check(isc.get("allowPrivilegeEscalation") is False, f"k8s Deployment: initContainer {n}: allowPrivilegeEscalation false")
        ires = ic.get("resources") or {}
        c.check((ires.get("limits") or {}).get("memory") and (ires.get("limits") or {}).get("cpu"),
                f"k8s Deployment: initContainer {n} has cpu and memory limits")
        for m in ic.get("volumeMounts") or []:
            c.check(m["name"] in vols, f"k8s Deployment: initContainer {n}'s volumeMount {m['name']} has a volume")
        script = " ".join(str(x) for x in (ic.get("command") or []) + (ic.get("args") or []))
        dests = [a.split()[-1].rstrip("/") for a in df["copies"] if not a.startswith("--from")]
        for used in set(re.findall(r"(?<![\w/])(/models/[\w.-]+(?:/[\w.-]+)*)", script)):
            c.check(any(covers(d, used) for d in dests), f"k8s Deployment: initContainer {n} reads {used}, which the "
                                                         f"Dockerfile COPYs into the image ({dests})")
            c.check(not any(covers(m["mountPath"], used) for m in ic.get("volumeMounts") or []),
                    f"k8s Deployment: initContainer {n} reads {used} from the image, not from a volume mounted over it")

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


# ---------------------------------------------------------------- KServe (ServingRuntime, InferenceService)

KSERVE_SCHEMES = ("pvc", "s3", "gs", "https", "http", "hdfs", "webhdfs", "oci", "hf")


def check_kserve(c, docs, files, srv, df, k8s_docs, readme):
    if not c.check(files, "kserve: deploy/kserve/ holds the ServingRuntime and InferenceService"):
        return
    rts = [d for d in docs if d and d.get("kind") == "ServingRuntime"]
    isvcs = [d for d in docs if d and d.get("kind") == "InferenceService"]
    if not (c.check(len(rts) == 1, f"kserve: exactly one ServingRuntime (found {len(rts)})")
            and c.check(len(isvcs) >= 1, "kserve: at least one InferenceService")):
        return
    rt = rts[0]
    rs = rt.get("spec") or {}
    rname = (rt.get("metadata") or {}).get("name")
    c.check(rt.get("apiVersion") == "serving.kserve.io/v1alpha1", f"kserve ServingRuntime: apiVersion serving.kserve.io/v1alpha1 ({rt.get('apiVersion')})")
    fmts = rs.get("supportedModelFormats") or []
    c.check(fmts and all(f.get("name") for f in fmts), "kserve ServingRuntime: supportedModelFormats with names")
    protos = rs.get("protocolVersions") or []
    c.check("v2" in protos, f"kserve ServingRuntime: protocolVersions has v2, the Open Inference Protocol over REST ({protos})")
    c.check(not [p for p in protos if p not in ("v2",)],
            f"kserve ServingRuntime: only v2 (the server has no v1 API and no gRPC) ({protos})")
    c.check(not rs.get("multiModel"), "kserve ServingRuntime: not multiModel (that is ModelMesh's, with its own adapter)")
    ctrs = rs.get("containers") or []
    if not c.check(len(ctrs) == 1, "kserve ServingRuntime: one container"):
        return
    k = ctrs[0]
    c.check(k.get("name") == "kserve-container", f"kserve ServingRuntime: the container is named kserve-container ({k.get('name')})")
    dep = next((d for d in k8s_docs if d and d.get("kind") == "Deployment"), None)
    dep_img = (((((dep or {}).get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or [{}])[0].get("image", "")
    base = lambda i: str(i).rsplit("/", 1)[-1].split("@")[0].split(":")[0]  # noqa: E731
    c.check(base(k.get("image")) == base(dep_img), f"kserve ServingRuntime: the image is deploy/Dockerfile's, as in "
                                                     f"deploy/k8s/ ({k.get('image')} vs {dep_img})")
    c.check(not k.get("command"), "kserve ServingRuntime: no command: the image's ENTRYPOINT (realnvp-server) runs, args are its flags")
    env = {e["name"]: str(e.get("value", "")) for e in k.get("env") or []}
    for n in env:
        c.check(n in srv.env_names, f"kserve ServingRuntime: env {n} is not an option of realnvp-server")
    eff = effective_options(c, "kserve ServingRuntime", srv, df["env"], env, k.get("args"))
    kind, model = model_source(c, "kserve ServingRuntime", eff)
    c.check(kind == REPO_ENV and model == KSERVE_MODEL_DIR,
            f"kserve ServingRuntime: the server serves {KSERVE_MODEL_DIR} (the storageUri) as a model repository "
            f"(--model-repository {KSERVE_MODEL_DIR}; got {kind} {model})")
    c.check(not any(covers(m.get("mountPath", "/"), KSERVE_MODEL_DIR) for m in k.get("volumeMounts") or []),
            f"kserve ServingRuntime: nothing of its own mounted over {KSERVE_MODEL_DIR} (KServe mounts the storageUri there)")
    c.check(eff.get("REALNVP_HOST") == "0.0.0.0", "kserve ServingRuntime: the server listens on 0.0.0.0")
    port = int(eff.get("REALNVP_PORT", 8080))
    cports = [p.get("containerPort") for p in k.get("ports") or []]
    c.check(cports == [port], f"kserve ServingRuntime: one containerPort, the server's port {port} ({cports})")

    def probe_port_ok(p):
        pp = ((p or {}).get("httpGet") or {}).get("port")
        return pp is None or pp == port

    rp = k.get("readinessProbe") or {}
    c.check(((rp.get("httpGet") or {}).get("path")) == "/v2/health/ready" and probe_port_ok(rp),
            "kserve ServingRuntime: readinessProbe httpGet /v2/health/ready on the server's port")
    lp = k.get("livenessProbe")
    if lp is not None:
        c.check(((lp.get("httpGet") or {}).get("path")) in ("/v2/health/live", "/healthz") and probe_port_ok(lp),
                "kserve ServingRuntime: livenessProbe httpGet /v2/health/live (or /healthz) on the server's port")
    ann = rs.get("annotations") or {}
    if "prometheus.kserve.io/port" in ann:
        c.check(str(ann["prometheus.kserve.io/port"]) == str(port), "kserve ServingRuntime: prometheus.kserve.io/port is the server's port")
        c.check(ann.get("prometheus.kserve.io/path", "/metrics") == "/metrics", "kserve ServingRuntime: prometheus.kserve.io/path /metrics")
    res = k.get("resources") or {}
    rq, lim = res.get("requests") or {}, res.get("limits") or {}
    for r in ("cpu", "memory"):
        if c.check(r in rq and r in lim, f"kserve ServingRuntime: {r} request and limit"):
            q = cpu_q if r == "cpu" else mem_q
            c.check(q(rq[r]) <= q(lim[r]), f"kserve ServingRuntime: {r} request <= limit")
    if "memory" in rq:
        c.check(mem_q(rq["memory"]) >= 40 * 2**20, "kserve ServingRuntime: memory request covers the measured peak RSS (36 MB)")
    c.check("REALNVP_COMPUTE_THREADS" in eff and "cpu" in lim and int(eff["REALNVP_COMPUTE_THREADS"]) <= max(1, cpu_q(lim["cpu"])),
            "kserve ServingRuntime: REALNVP_COMPUTE_THREADS set and <= the cpu limit (the default is every host CPU)")
    sc = k.get("securityContext") or {}
    c.check(sc.get("runAsNonRoot") is True, "kserve ServingRuntime: runAsNonRoot")
    c.check(sc.get("runAsUser") in (None, df["uid"]), f"kserve ServingRuntime: runAsUser matches the image's USER ({df['uid']})")
    c.check(sc.get("allowPrivilegeEscalation") is False, "kserve ServingRuntime: allowPrivilegeEscalation false")

    claims = {(d.get("metadata") or {}).get("name") for d in k8s_docs if d and d.get("kind") == "PersistentVolumeClaim"}
    for isvc in isvcs:
        nm = (isvc.get("metadata") or {}).get("name")
        w = f"kserve InferenceService {nm}"
        c.check(isvc.get("apiVersion") == "serving.kserve.io/v1beta1", f"{w}: apiVersion serving.kserve.io/v1beta1 ({isvc.get('apiVersion')})")
        m = ((isvc.get("spec") or {}).get("predictor") or {}).get("model")
        if not c.check(isinstance(m, dict), f"{w}: spec.predictor.model (the ServingRuntime form)"):
            continue
        mf = m.get("modelFormat") or {}
        # KServe's match: the runtime named (or, without one, a format with autoSelect) has the format's
        # name, and its version too when the InferenceService gives one
        runtime = m.get("runtime")
        c.check(runtime in (None, rname), f"{w}: runtime {runtime} is the ServingRuntime {rname}")
        cands = [f for f in fmts if runtime is not None or f.get("autoSelect")]
        c.check(any(f.get("name") == mf.get("name") and ("version" not in mf or str(f.get("version")) == str(mf["version"]))
                    for f in cands),
                f"{w}: modelFormat {mf} is one the runtime supports ({[(f.get('name'), f.get('version')) for f in cands]})")
        pv = m.get("protocolVersion", "v1")
        c.check(pv in protos, f"{w}: protocolVersion {pv} (KServe's default is v1) is one the runtime offers ({protos})")
        uri = str(m.get("storageUri", ""))
        scheme = uri.split("://", 1)[0] if "://" in uri else ""
        c.check(scheme in KSERVE_SCHEMES, f"{w}: storageUri {uri!r} has a scheme KServe's storage knows ({', '.join(KSERVE_SCHEMES)})")
        c.check(not uri.rstrip("/").endswith(".safetensors"),
                f"{w}: storageUri is a repository folder (<name>/<N>/model.safetensors inside), not a file ({uri})")
        if scheme == "pvc":
            claim = uri[len("pvc://"):].split("/", 1)[0]
            c.check(claim in claims, f"{w}: storageUri's claim {claim} is defined in deploy/k8s/ ({sorted(claims)})")
        c.check(f"/v2/models/{nm}/infer" in readme, f"{w}: deploy/kserve/README.md shows the call /v2/models/{nm}/infer")


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
    ks_dir = os.path.join(DEPLOY, "kserve")
    ks_files = sorted(f for f in os.listdir(ks_dir) if f.endswith((".yaml", ".yml"))) if os.path.isdir(ks_dir) else []
    ks_docs = []
    for f in ks_files:
        ks_docs += list(yaml.safe_load_all(open(os.path.join(ks_dir, f))))
    ks_readme = os.path.join(ks_dir, "README.md")
    return {
        "kserve": ks_docs, "kserve_files": ks_files,
        "kserve_readme": open(ks_readme).read() if os.path.exists(ks_readme) else "",
        "dockerfile": open(os.path.join(DEPLOY, "Dockerfile")).read(),
        "dockerignore": open(os.path.join(ROOT, ".dockerignore")).read(),
        "compose": yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml"))),
        "k8s": docs, "k8s_files": files,
        "k8s_train": tr_docs, "k8s_train_files": tr_files,
        "trainer_options": trainer_options(), "ckpt_name": trainer_ckpt_name(),
    }


def run(m, srv):
    c = Checker()
    df = check_dockerfile(c, m["dockerfile"], srv.env_names)
    tdf = dockerfile_train_stage(c, m["dockerfile"])
    check_dockerignore(c, m["dockerignore"])
    check_compose(c, m["compose"], srv, df)
    check_k8s(c, m["k8s"], srv, df, m["k8s_files"])
    check_kserve(c, m["kserve"], m["kserve_files"], srv, df, m["k8s"], m["kserve_readme"])
    check_k8s_train(c, m["k8s_train"], m["k8s_train_files"], m["trainer_options"], tdf, m["ckpt_name"])
    return c


def dep(m):
    return next(d for d in m["k8s"] if d and d["kind"] == "Deployment")["spec"]["template"]["spec"]


def self_test(m, srv):
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

    def repo_pvc(x):
        return next(d for d in x["k8s"] if d and d.get("kind") == "PersistentVolumeClaim")

    def seed(x):
        return dep(x)["initContainers"][0]

    def compose_env(x):
        return x["compose"]["services"]["realnvp"]["environment"]

    def rt(x):
        return next(d for d in x["kserve"] if d and d.get("kind") == "ServingRuntime")

    def rtc(x):
        return rt(x)["spec"]["containers"][0]

    def rtargs(x, old, new):
        a = rtc(x)["args"]
        assert old in a, old
        a[a.index(old)] = new

    def isvc(x):
        return next(d for d in x["kserve"] if d and d.get("kind") == "InferenceService")["spec"]["predictor"]["model"]

    def env_list_set(lst, name, value):
        for e in lst:
            if e["name"] == name:
                e["value"] = value
                return
        lst.append({"name": name, "value": value})

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
        # the model repository (issue 15)
        "Dockerfile REALNVP_MODEL beside the repository": lambda x: x.update(dockerfile=x["dockerfile"].replace(
            "ENV REALNVP_MODEL_REPOSITORY=/models \\", "ENV REALNVP_MODEL=/models/fashion-mnist/model.safetensors REALNVP_MODEL_REPOSITORY=/models \\")),
        "Dockerfile repository without a model": lambda x: x.update(dockerfile=x["dockerfile"].replace(
            "COPY models/fashion-mnist/ /models/fashion-mnist/", "COPY models/fashion-mnist/ /opt/fashion-mnist/")),
        "Dockerfile copies a non-model folder": lambda x: x.update(dockerfile=x["dockerfile"].replace(
            "COPY models/fashion-mnist/ /models/fashion-mnist/", "COPY docs/ /models/fashion-mnist/")),
        "compose REALNVP_MODEL too (the image's repository stays)": lambda x: compose_env(x).update(
            REALNVP_MODEL="/models/fashion-mnist/model.safetensors"),
        "compose repository outside the mount": lambda x: compose_env(x).update(REALNVP_MODEL_REPOSITORY="/srv/models"),
        "compose mounts a folder that is no repository": lambda x: x["compose"]["services"]["realnvp"].update(
            volumes=["../deploy:/models:ro"]),
        "compose --model-name with a repository": lambda x: compose_env(x).update(REALNVP_MODEL_NAME="fmnist"),
        "k8s REALNVP_MODEL beside the repository": lambda x: ctr(x)["env"].append(
            {"name": "REALNVP_MODEL", "value": "/models/fashion-mnist/model.safetensors"}),
        "k8s unknown flag in args": lambda x: ctr(x).update(args=["--model-repo", "/models"]),
        "k8s repository claim ReadWriteOnce": lambda x: repo_pvc(x)["spec"].update(accessModes=["ReadWriteOnce"]),
        "k8s repository claim ReadOnlyMany but seeded": lambda x: repo_pvc(x)["spec"].update(accessModes=["ReadOnlyMany"]),
        "k8s repository claim not defined": lambda x: next(v for v in dep(x)["volumes"] if v["name"] == "models")[
            "persistentVolumeClaim"].update(claimName="models"),
        "k8s repository mounted writable": lambda x: next(m for m in ctr(x)["volumeMounts"] if m["name"] == "models").pop("readOnly"),
        "k8s seed with another image": lambda x: seed(x).update(image="busybox:1.36"),
        "k8s seed as root": lambda x: seed(x)["securityContext"].update(runAsUser=0),
        "k8s seed reads the volume, not the image": lambda x: seed(x)["volumeMounts"][0].update(mountPath="/models"),
        "k8s seed copies a model the image lacks": lambda x: seed(x)["args"].__setitem__(
            0, seed(x)["args"][0].replace("/models/fashion-mnist/model.safetensors", "/models/mnist/model.safetensors")),
        "k8s kustomization without the claim": lambda x: next(d for d in x["k8s"] if d and d.get("kind") == "Kustomization")[
            "resources"].remove("model-repository-pvc.yaml"),
        # KServe
        "kserve ServingRuntime apiVersion v1beta1": lambda x: rt(x).update(apiVersion="serving.kserve.io/v1beta1"),
        "kserve runtime without v2": lambda x: rt(x)["spec"].update(protocolVersions=["v1"]),
        "kserve runtime claims grpc-v2": lambda x: rt(x)["spec"]["protocolVersions"].append("grpc-v2"),
        "kserve runtime unknown flag": lambda x: rtargs(x, "--model-repository", "--model-repo"),
        "kserve runtime repository elsewhere": lambda x: rtargs(x, "/mnt/models", "/models"),
        "kserve runtime --model too": lambda x: rtc(x)["args"].extend(["--model", "/mnt/models/fashion-mnist/1/model.safetensors"]),
        "kserve runtime REALNVP_MODEL too": lambda x: env_list_set(rtc(x)["env"], "REALNVP_MODEL", "/mnt/models/m.safetensors"),
        "kserve runtime listens on 127.0.0.1": lambda x: rtargs(x, "0.0.0.0", "127.0.0.1"),
        "kserve runtime port differs": lambda x: rtc(x)["ports"][0].update(containerPort=9000),
        "kserve runtime readiness on live": lambda x: rtc(x)["readinessProbe"]["httpGet"].update(path="/v2/health/live"),
        "kserve runtime readiness on another port": lambda x: rtc(x)["readinessProbe"]["httpGet"].update(port=9090),
        "kserve runtime other container name": lambda x: rtc(x).update(name="realnvp"),
        "kserve runtime other image": lambda x: rtc(x).update(image="nvcr.io/nvidia/tritonserver:24.01-py3"),
        "kserve runtime command overrides the ENTRYPOINT": lambda x: rtc(x).update(command=["sh", "-c"]),
        "kserve runtime root": lambda x: rtc(x)["securityContext"].update(runAsUser=0),
        "kserve runtime without a cpu limit": lambda x: rtc(x)["resources"]["limits"].pop("cpu"),
        "kserve runtime threads > cpu limit": lambda x: env_list_set(rtc(x)["env"], "REALNVP_COMPUTE_THREADS", "8"),
        "kserve runtime metrics port": lambda x: rt(x)["spec"]["annotations"].update({"prometheus.kserve.io/port": "9090"}),
        "kserve InferenceService v1alpha1": lambda x: next(d for d in x["kserve"] if d and d.get("kind") == "InferenceService").update(
            apiVersion="serving.kserve.io/v1alpha1"),
        "kserve InferenceService protocol v1 (the default)": lambda x: isvc(x).pop("protocolVersion"),
        "kserve InferenceService other format": lambda x: isvc(x)["modelFormat"].update(name="onnx"),
        "kserve InferenceService other format version": lambda x: isvc(x)["modelFormat"].update(version="2"),
        "kserve InferenceService other runtime": lambda x: isvc(x).update(runtime="kserve-tritonserver"),
        "kserve InferenceService unknown claim": lambda x: isvc(x).update(storageUri="pvc://models"),
        "kserve InferenceService storageUri a file": lambda x: isvc(x).update(
            storageUri="pvc://realnvp-models/fashion-mnist/1/model.safetensors"),
        "kserve InferenceService storageUri no scheme": lambda x: isvc(x).update(storageUri="/mnt/models"),
        "kserve README without the infer call": lambda x: x.update(kserve_readme=x["kserve_readme"].replace(
            "/v2/models/fashion-mnist/infer", "/v2/models/x/infer")),
    }
    bad = 0
    for name, f in muts.items():
        x = copy.deepcopy(m)
        f(x)
        c = run(x, srv)
        ok = len(c.failures) > 0
        bad += not ok
        print(f"  self-test {'ok  ' if ok else 'MISS'} {name}: {c.failures[0] if ok else 'no failure reported'}")
    return bad


def main():
    srv = Server()
    if not srv.env_names:
        print("check-manifests: found no REALNVP_* options in server/main.c", file=sys.stderr)
        return 1
    m = load_all()
    c = run(m, srv)
    for f in c.failures:
        print(f"FAIL {f}")
    print(f"check-manifests: {c.passed} checks passed, {len(c.failures)} failed "
          f"(Dockerfile, .dockerignore, docker-compose.yml, k8s/{', k8s/'.join(m['k8s_files'])}, "
          f"kserve/{', kserve/'.join(m['kserve_files'])}, "
          f"k8s-train/{', k8s-train/'.join(m['k8s_train_files'])})")
    rc = 1 if c.failures else 0
    if "--self-test" in sys.argv[1:]:
        bad = self_test(m, srv)
        print(f"check-manifests: self-test: {bad} mutation(s) not caught")
        rc = rc or (1 if bad else 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
