#!/usr/bin/python3
# check-manifests.py: parses deploy/Dockerfile, deploy/docker-compose.yml and deploy/k8s/*.yaml and
# asserts the fields the deployment relies on (probes, resources, draining, non-root, env names known
# to the server, selectors that match). Leaves out talking to Docker or a cluster (neither is needed).
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


def check_dockerignore(c, text):
    pats = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")]
    c.check(".git" in pats or (pats and pats[0] == "*"), ".dockerignore: excludes .git (or everything by default)")
    if pats and pats[0] == "*":
        for need in ("Makefile", "include/", "core/", "cli/", "server/", "deploy/healthcheck.sh"):
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


# ---------------------------------------------------------------- main

def load_all():
    k8s_dir = os.path.join(DEPLOY, "k8s")
    files = sorted(f for f in os.listdir(k8s_dir) if f.endswith((".yaml", ".yml")))
    docs = []
    for f in files:
        docs += list(yaml.safe_load_all(open(os.path.join(k8s_dir, f))))
    return {
        "dockerfile": open(os.path.join(DEPLOY, "Dockerfile")).read(),
        "dockerignore": open(os.path.join(ROOT, ".dockerignore")).read(),
        "compose": yaml.safe_load(open(os.path.join(DEPLOY, "docker-compose.yml"))),
        "k8s": docs, "k8s_files": files,
    }


def run(m, env_names, metric_names):
    c = Checker()
    df = check_dockerfile(c, m["dockerfile"], env_names)
    check_dockerignore(c, m["dockerignore"])
    check_compose(c, m["compose"], env_names, df)
    check_k8s(c, m["k8s"], env_names, metric_names, df, m["k8s_files"])
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
          f"(Dockerfile, .dockerignore, docker-compose.yml, k8s/{', k8s/'.join(m['k8s_files'])})")
    rc = 1 if c.failures else 0
    if "--self-test" in sys.argv[1:]:
        bad = self_test(m, env_names, metric_names)
        print(f"check-manifests: self-test: {bad} mutation(s) not caught")
        rc = rc or (1 if bad else 0)
    return rc


if __name__ == "__main__":
    sys.exit(main())
