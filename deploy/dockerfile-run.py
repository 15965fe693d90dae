#!/usr/bin/python3
# dockerfile-run.py: builds a Dockerfile without a Docker engine: each FROM stage is a directory
# holding a fresh Debian root (made by the caller), RUN lines run in it with chroot (as USER, in
# WORKDIR, with ENV/ARG), COPY copies from the .dockerignore-filtered context or from an earlier
# stage. Writes the final stage's run settings (ENV, USER, ENTRYPOINT+CMD, HEALTHCHECK, ...) as a
# bash file for deploy/fresh-check.sh to start the "container" with. Leaves out layers, caching,
# ADD, ONBUILD, wildcards in COPY, --mount, heredocs: anything deploy/Dockerfile does not use fails.
# Builds only the stages the final stage needs (its COPY --from stages, transitively), as BuildKit
# does for the default target: deploy/Dockerfile's train stages (--target train) are skipped.
#
#   deploy/dockerfile-run.py --context DIR --dockerfile DIR/deploy/Dockerfile \
#       --root /var/tmp/rnvp-fresh/stage0 --root /var/tmp/rnvp-fresh/stage1 --settings OUT.sh
# Must run as root (chroot). Each RUN gets /proc, /dev and the host's DNS, like `docker build`.
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def die(msg):
    print(f"dockerfile-run: {msg}", file=sys.stderr)
    sys.exit(1)


def parse(text):
    """[(lineno, INSTRUCTION, args)] with continuations joined and comment lines dropped."""
    out, cur, start = [], "", 0
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#") or (not cur and not s):
            continue
        if not cur:
            start = n
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        ins, _, args = cur.partition(" ")
        out.append((start, ins.upper(), args.strip()))
        cur = ""
    return out


def subst(s, env):
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), s)


def exec_or_shell(args):
    """JSON exec form -> list; shell form -> ["/bin/sh", "-c", args]."""
    if args.startswith("["):
        try:
            v = json.loads(args)
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                return v, True
        except ValueError:
            pass
    return ["/bin/sh", "-c", args], False


# ------------------------------------------------------------------ .dockerignore

def ignore_regex(pat):
    pat = pat.strip().lstrip("/").rstrip("/")
    r, i = "", 0
    while i < len(pat):
        if pat.startswith("**/", i):
            r += "(?:.*/)?"
            i += 3
        elif pat.startswith("**", i):
            r += ".*"
            i += 2
        elif pat[i] == "*":
            r += "[^/]*"
            i += 1
        elif pat[i] == "?":
            r += "[^/]"
            i += 1
        else:
            r += re.escape(pat[i])
            i += 1
    return re.compile(r + r"\Z")


def filtered_context(ctx, out):
    """Copies ctx to out minus what .dockerignore excludes (last matching pattern wins; a pattern
    matching a directory matches everything under it). Returns (files, bytes)."""
    pats = []
    di = os.path.join(ctx, ".dockerignore")
    if os.path.exists(di):
        for line in open(di):
            s = line.strip()
            if s and not s.startswith("#"):
                neg = s.startswith("!")
                pats.append((neg, ignore_regex(s[1:] if neg else s)))

    def excluded(rel):
        parts = rel.split("/")
        ex = False
        for neg, rx in pats:
            if any(rx.match("/".join(parts[:k])) for k in range(1, len(parts) + 1)):
                ex = not neg
        return ex

    nfiles = nbytes = 0
    for dp, dns, fns in os.walk(ctx):
        rel_d = os.path.relpath(dp, ctx)
        if rel_d == ".git" or rel_d.startswith(".git/"):
            dns[:] = []
        for fn in fns:
            rel = os.path.normpath(os.path.join(rel_d, fn))
            if excluded(rel):
                continue
            dst = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(dp, fn), dst, follow_symlinks=False)
            nfiles += 1
            nbytes += os.lstat(dst).st_size
    return nfiles, nbytes


# ------------------------------------------------------------------ stages

def needed_stages(ins):
    """({indices of the stages the final stage needs, itself included}, [each stage's name]): the
    dependencies are COPY --from=STAGE and FROM STAGE, followed transitively."""
    names, deps = [], []
    for _, i, args in ins:
        if i == "FROM":
            toks = args.split()
            names.append(toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else str(len(names)))
            deps.append(set())
            if toks[0] in names[:-1]:
                deps[-1].add(names.index(toks[0]))
        elif i == "COPY" and names:
            for t in args.split():
                if t.startswith("--from=") and t[7:] in names[:-1]:
                    deps[-1].add(names.index(t[7:]))
    need, todo = set(), [len(names) - 1] if names else []
    while todo:
        k = todo.pop()
        if k not in need:
            need.add(k)
            todo += deps[k]
    return need, names


class Stage:
    def __init__(self, root, name, args):
        self.root, self.name = root, name
        self.env = {}
        self.args = dict(args)
        self.user = "0:0"
        self.workdir = "/"
        self.entrypoint, self.cmd, self.healthcheck = [], [], None
        self.expose, self.stopsignal = [], "SIGTERM"

    def vars(self):
        return {**self.args, **self.env}


def resolve_user(root, spec):
    """USER name[:group] or uid[:gid] -> "uid:gid" using the stage's /etc/passwd and /etc/group."""
    u, _, g = spec.partition(":")

    def lookup(path, name):
        for line in open(os.path.join(root, path)):
            f = line.split(":")
            if f[0] == name:
                return f
        die(f"USER {spec}: {name} not in {path}")

    if u.isdigit():
        uid, dgid = u, None
        for line in open(os.path.join(root, "etc/passwd")):
            f = line.split(":")
            if f[2] == u:
                dgid = f[3]
    else:
        f = lookup("etc/passwd", u)
        uid, dgid = f[2], f[3]
    gid = g if g.isdigit() else (lookup("etc/group", g)[2] if g else dgid)
    return f"{uid}:{gid if gid is not None else uid}"


def run_in(stage, argv, log_prefix):
    """Runs argv in the stage root like a RUN step: private mount namespace with /proc, /dev, DNS."""
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if stage.user.startswith("0:") else "/", "HOSTNAME": "buildkitsandbox"}
    env.update(stage.vars())
    r = stage.root
    shutil.copy("/etc/resolv.conf", os.path.join(r, "etc/resolv.conf"))
    inner = (f"mount -t proc proc {shlex.quote(r)}/proc && mount --rbind /dev {shlex.quote(r)}/dev && "
             f"exec chroot --userspec={stage.user} {shlex.quote(r)} "
             f"/usr/bin/env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in env.items())} "
             f"/bin/sh -c 'cd \"$0\" && exec \"$@\"' {shlex.quote(stage.workdir)} "
             + " ".join(shlex.quote(a) for a in argv))
    t0 = time.time()
    p = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", inner])
    print(f"{log_prefix} exit {p.returncode} ({time.time() - t0:.1f} s)", flush=True)
    if p.returncode:
        die(f"RUN failed with exit status {p.returncode}")


def copy_into(srcs, dest, stage, src_root, chown):
    """COPY semantics: a directory's contents go into dest; files into dest/ or onto dest."""
    vars_ = stage.vars()
    dest = subst(dest, vars_)
    if not dest.startswith("/"):
        dest = os.path.join(stage.workdir, dest)
    to_dir = dest.endswith("/") or dest in (".", "/") or len(srcs) > 1 or stage.workdir == dest
    dst_abs = os.path.join(stage.root, dest.lstrip("/"))
    for s in srcs:
        s = subst(s, vars_)
        if any(ch in s for ch in "*?["):
            die(f"COPY {s}: wildcards are not supported here")
        sp = os.path.normpath(os.path.join(src_root, s.lstrip("/")))
        if not os.path.lexists(sp):
            die(f"COPY {s}: not found in {'the build context' if src_root.endswith('context') else src_root} "
                "(excluded by .dockerignore, or missing from the clone?)")
        if os.path.isdir(sp) and not os.path.islink(sp):
            os.makedirs(dst_abs, exist_ok=True)
            subprocess.run(["cp", "-a", sp + "/.", dst_abs + "/"], check=True)
            targets = [os.path.join(dst_abs, x) for x in os.listdir(sp)]
        else:
            tgt = os.path.join(dst_abs, os.path.basename(sp)) if to_dir else dst_abs
            os.makedirs(os.path.dirname(tgt), exist_ok=True)
            subprocess.run(["cp", "-a", sp, tgt], check=True)
            targets = [tgt]
        owner = chown or "0:0"
        for t in targets:
            subprocess.run(["chown", "-R", "-h", owner, t], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--context", required=True)
    ap.add_argument("--dockerfile", required=True)
    ap.add_argument("--root", action="append", required=True,
                    help="one fresh root per stage the final stage needs, in order")
    ap.add_argument("--settings", required=True, help="bash file to write the final stage's run settings to")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("must run as root (chroot)")
    ins = parse(open(a.dockerfile).read())
    needed, names = needed_stages(ins)
    if len(needed) != len(a.root):
        die(f"{a.dockerfile}: the final stage needs {len(needed)} stages "
            f"({', '.join(names[k] for k in sorted(needed))}); give one --root each (got {len(a.root)})")

    tmp = tempfile.mkdtemp(prefix="rnvp-context-")
    ctx = os.path.join(tmp, "context")
    os.makedirs(ctx)
    nfiles, nbytes = filtered_context(a.context, ctx)
    print(f"dockerfile-run: build context after .dockerignore: {nfiles} files, {nbytes / 1e6:.2f} MB", flush=True)

    global_args, stages, st = {}, [], None
    t_all = time.time()
    k_from, skipping = -1, False
    for ln, i, args in ins:
        where = f"dockerfile-run: {os.path.basename(a.dockerfile)}:{ln} {i}"
        if i == "FROM":
            k_from += 1
            skipping = k_from not in needed
            if skipping:
                print(f"{where} {args}  -> skipped (the final stage does not need it)", flush=True)
                continue
            if args.split()[0] in names:
                die(f"{where} {args}: FROM an earlier stage is not supported here")
            st = Stage(a.root[len(stages)], names[k_from], global_args)
            stages.append(st)
            print(f"{where} {args}  -> fresh root {st.root}", flush=True)
            continue
        if skipping:
            continue
        if st is None:
            if i == "ARG":
                k, _, v = args.partition("=")
                global_args[k] = v
                continue
            die(f"{where}: before the first FROM")
        if i == "ARG":
            k, _, v = args.partition("=")
            st.args[k] = subst(v, st.vars()) if v else global_args.get(k, "")
        elif i == "ENV":
            toks = shlex.split(args)
            if "=" not in toks[0]:
                st.env[toks[0]] = subst(" ".join(toks[1:]), st.vars())
            else:
                for t in toks:
                    k, _, v = t.partition("=")
                    st.env[k] = subst(v, st.vars())
        elif i == "WORKDIR":
            w = subst(args, st.vars())
            st.workdir = w if w.startswith("/") else os.path.join(st.workdir, w)
            os.makedirs(os.path.join(st.root, st.workdir.lstrip("/")), exist_ok=True)
        elif i == "USER":
            st.user = resolve_user(st.root, subst(args, st.vars()))
        elif i == "RUN":
            argv, _ = exec_or_shell(args)
            print(f"{where} {args[:110]}{'...' if len(args) > 110 else ''}", flush=True)
            run_in(st, argv, f"{where}:")
        elif i == "COPY":
            toks = shlex.split(args)
            frm = chown = None
            while toks and toks[0].startswith("--"):
                f = toks.pop(0)
                if f.startswith("--from="):
                    frm = f[7:]
                elif f.startswith("--chown="):
                    chown = f[8:]
                else:
                    die(f"{where}: unsupported flag {f}")
            if frm is not None:
                src = next((s for s in stages if s.name == frm), None)
                if src is None or src is st:
                    die(f"{where}: no earlier stage {frm}")
                src_root = src.root
            else:
                src_root = ctx
            print(f"{where} {args}", flush=True)
            copy_into(toks[:-1], toks[-1], st, src_root, chown)
        elif i == "ENTRYPOINT":
            st.entrypoint = exec_or_shell(args)[0]
        elif i == "CMD":
            st.cmd = exec_or_shell(args)[0]
        elif i == "HEALTHCHECK":
            opts, _, cmd = args.partition("CMD ")
            hc = {"cmd": exec_or_shell(cmd.strip())[0]}
            for o in opts.split():
                k, _, v = o.lstrip("-").partition("=")
                hc[k.replace("-", "_")] = v
            st.healthcheck = hc
        elif i == "EXPOSE":
            st.expose += args.split()
        elif i == "STOPSIGNAL":
            st.stopsignal = args
        elif i in ("LABEL", "MAINTAINER"):
            pass
        else:
            die(f"{where}: not supported by this emulator")
    fin = stages[-1]
    secs = lambda v, d: float(v[:-1]) if v and v.endswith("s") else d  # noqa: E731
    hc = fin.healthcheck or {}
    with open(a.settings, "w") as f:
        f.write("# written by deploy/dockerfile-run.py: the image's run settings\n")
        f.write(f"IMG_ROOT={shlex.quote(fin.root)}\n")
        f.write(f"IMG_USER={shlex.quote(fin.user)}\n")
        f.write(f"IMG_WORKDIR={shlex.quote(fin.workdir)}\n")
        env = {"PATH": DEFAULT_PATH, "HOME": "/", **fin.env}
        f.write("IMG_ENV=(" + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + ")\n")
        f.write("IMG_CMD=(" + " ".join(shlex.quote(x) for x in fin.entrypoint + fin.cmd) + ")\n")
        f.write("IMG_HEALTHCHECK=(" + " ".join(shlex.quote(x) for x in hc.get("cmd", [])) + ")\n")
        f.write(f"IMG_HC_START_PERIOD={secs(hc.get('start_period'), 0):g}\n")
        f.write(f"IMG_HC_TIMEOUT={secs(hc.get('timeout'), 30):g}\n")
        f.write(f"IMG_EXPOSE={shlex.quote(' '.join(fin.expose))}\n")
        f.write(f"IMG_STOPSIGNAL={shlex.quote(fin.stopsignal)}\n")
        f.write(f"IMG_BUILD_SECONDS={time.time() - t_all:.0f}\n")
    shutil.rmtree(tmp)
    print(f"dockerfile-run: built {len(stages)} stages in {time.time() - t_all:.0f} s; run settings in {a.settings}")


if __name__ == "__main__":
    main()
