#!/usr/bin/env python3
"""Structural check of the deployment files (make check-deploy, run by make test).

docker-compose.yml, deploy/swarm/stack.yml and deploy/kubernetes/ cannot
all run here (no Kubernetes), so this checks that they say what the README
promises, the same way in each: every process has the options it needs
(keys, checkpoint folder, the coordinator's address), only its role's
secret key with the other roles' public keys, OPENBLAS_THREAD_TIMEOUT, a
health check and a restart policy, a grace period for its drain or
checkpoint; Kubernetes has the StatefulSet, Deployment + Service, Job and
ReadWriteMany claim, with selectors and names that match (and, where
kubectl runs, `kubectl kustomize` renders them). The systemd units
of deploy/systemd get the same checks and, where systemd-analyze runs,
`systemd-analyze verify` (with ExecStart pointed at BUILD/bin when built).
Prints one line per problem and exits 1, or a summary and exits 0.

    python3 tests/tools/check_deploy.py [--build BUILD]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES = ("coordinator", "server", "worker")
PROGRAM = {"coordinator": "moe-coordinator", "server": "moe-server", "worker": "moe-worker"}
problems = []


def problem(where, what):
    problems.append("%s: %s" % (where, what))


def want_secrets(role):
    """The secret files a role gets: its key, the others' public keys (and the token)."""
    files = {role + ".key"} | {r + ".pub" for r in ROLES if r != role}
    if role == "coordinator":
        files.add("http-token")
    return files


def check_command(where, role, words):
    """The options every process of ROLE needs, in --opt VALUE or --opt=VALUE form."""
    text = " ".join(words)
    if PROGRAM[role] not in text:
        problem(where, "does not run %s" % PROGRAM[role])
    needs = ["--keys", "--checkpoint-dir", "--experts"]
    needs += {"coordinator": ["--coordinator", "--http", "--http-token-file", "--min-servers"],
              "server": ["--coordinator", "--bind", "--advertise"],
              "worker": ["--coordinator"]}[role]
    for opt in needs:
        if not re.search(re.escape(opt) + r"[ =]", text):
            problem(where, "%s lacks %s" % (PROGRAM[role], opt))
    if "--insecure" in text:
        problem(where, "runs --insecure")


def role_of(name):
    for r in ROLES:
        if r in name:
            return r
    return None


def env_dict(env):
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return env or {}


def check_compose(path, swarm):
    """docker-compose.yml (swarm False) or the swarm stack (True)."""
    doc = yaml.safe_load(open(os.path.join(TOP, path)))
    services = doc.get("services", {})
    if set(services) != set(ROLES):
        problem(path, "services are %s, not coordinator, server, worker" % sorted(services))
    for name, s in services.items():
        role = role_of(name)
        where = "%s: %s" % (path, name)
        if not role:
            continue
        cmd = s.get("command", "")
        check_command(where, role, cmd if isinstance(cmd, list) else [cmd])
        if "OPENBLAS_THREAD_TIMEOUT" not in env_dict(s.get("environment")):
            problem(where, "OPENBLAS_THREAD_TIMEOUT is not set")
        hc = s.get("healthcheck", {}).get("test", [])
        if "moe-healthcheck" not in " ".join(hc) or role not in hc:
            problem(where, "no health check of its role (moe-healthcheck %s)" % role)
        deploy = s.get("deploy", {})
        restart = deploy.get("restart_policy", {}).get("condition") if swarm else s.get("restart")
        if restart != "on-failure":
            problem(where, "restart policy is %r, not on-failure" % restart)
        if swarm and deploy.get("endpoint_mode") != "dnsrr":
            problem(where, "endpoint_mode is not dnsrr")
        if s.get("stop_signal") != "SIGTERM" or not s.get("stop_grace_period"):
            problem(where, "needs stop_signal SIGTERM and a stop_grace_period")
        names = {x if isinstance(x, str) else x.get("target", x.get("source"))
                 for x in s.get("secrets", [])}
        if names != want_secrets(role):
            problem(where, "secrets %s, not %s" % (sorted(names), sorted(want_secrets(role))))
        vols = " ".join(v if isinstance(v, str) else v.get("target", "") for v in s.get("volumes", []))
        if "/moe/run" not in vols:
            problem(where, "does not mount the shared checkpoint volume on /moe/run")
    for name, sec in doc.get("secrets", {}).items():
        if "file" not in sec:
            problem(path, "secret %s has no file" % name)
    replicas = services.get("server", {}).get("deploy", {}).get("replicas")
    if replicas != 2:
        problem(path, "the servers start %r replicas, not 2" % replicas)


def k8s_objects():
    d = os.path.join(TOP, "deploy/kubernetes")
    objs = {}
    kust = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
    files = sorted(f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml")
    if sorted(kust.get("resources", [])) != files:
        problem("deploy/kubernetes/kustomization.yaml",
                "resources %s are not the folder's files %s" % (kust.get("resources"), files))
    for f in files:
        for o in yaml.safe_load_all(open(os.path.join(d, f))):
            if o:
                objs[(o["kind"], o["metadata"]["name"])] = (f, o)
    return objs


def check_pod(where, role, spec, claim):
    c = spec["containers"][0]
    check_command(where, role, c.get("command", []) + c.get("args", []))
    env = {e["name"] for e in c.get("env", [])}
    if "OPENBLAS_THREAD_TIMEOUT" not in env:
        problem(where, "OPENBLAS_THREAD_TIMEOUT is not set")
    sc = spec.get("securityContext", {})
    if not sc.get("runAsNonRoot") or c.get("securityContext", {}).get("allowPrivilegeEscalation", True):
        problem(where, "must run as non-root without privilege escalation")
    if not spec.get("terminationGracePeriodSeconds"):
        problem(where, "no terminationGracePeriodSeconds for its drain or checkpoint")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    run = vols.get(mounts.get("/moe/run"), {})
    if run.get("persistentVolumeClaim", {}).get("claimName") != claim:
        problem(where, "does not mount the claim %s on /moe/run" % claim)
    keys = [v for v in vols.values() if "secret" in v]
    items = {i["path"] for k in keys for i in k["secret"].get("items", [])}
    if items != want_secrets(role):
        problem(where, "secret files %s, not %s" % (sorted(items), sorted(want_secrets(role))))
    if role != "worker" and not c.get("livenessProbe"):
        problem(where, "no liveness probe")


def check_kubernetes():
    objs = k8s_objects()
    claims = [o for (k, _), (_, o) in objs.items() if k == "PersistentVolumeClaim"]
    if len(claims) != 1 or "ReadWriteMany" not in claims[0]["spec"].get("accessModes", []):
        problem("deploy/kubernetes", "needs one ReadWriteMany PersistentVolumeClaim for the checkpoints")
        return
    claim = claims[0]["metadata"]["name"]
    kinds = {"coordinator": "Deployment", "server": "StatefulSet", "worker": "Job"}
    for role, kind in kinds.items():
        found = [(f, o) for (k, _), (f, o) in objs.items() if k == kind]
        if len(found) != 1:
            problem("deploy/kubernetes", "needs one %s for the %s" % (kind, role))
            continue
        f, o = found[0]
        where = "deploy/kubernetes/%s: %s %s" % (f, kind, o["metadata"]["name"])
        tmpl = o["spec"]["template"]
        check_pod(where, role, tmpl["spec"], claim)
        labels = tmpl["metadata"].get("labels", {})
        sel = o["spec"].get("selector", {}).get("matchLabels", labels)
        if any(labels.get(k) != v for k, v in sel.items()):
            problem(where, "its selector does not match its pods' labels")
        if kind == "Job":
            continue
        svc_name = o["spec"].get("serviceName") if kind == "StatefulSet" else None
        svcs = [s for (k, n), (_, s) in objs.items() if k == "Service" and
                all(labels.get(a) == b for a, b in s["spec"].get("selector", {}).items())]
        if not svcs:
            problem(where, "no Service selects its pods")
        if svc_name and not any(s["metadata"]["name"] == svc_name and
                                s["spec"].get("clusterIP") == "None" for s in svcs):
            problem(where, "serviceName %s is not a headless Service of its pods" % svc_name)
        if kind == "StatefulSet":
            text = " ".join(tmpl["spec"]["containers"][0]["command"])
            if svc_name and (".%s:" % svc_name) not in text:
                problem(where, "does not advertise its stable name POD.%s" % svc_name)
    coord_svcs = [n for (k, n) in objs if k == "Service" and "coordinator" in n]
    for (k, n), (f, o) in objs.items():
        if k in ("StatefulSet", "Job"):
            text = " ".join(o["spec"]["template"]["spec"]["containers"][0]["command"])
            if not any("tcp://%s:5550" % s in text for s in coord_svcs):
                problem("deploy/kubernetes/%s" % f, "does not reach the coordinator's Service")


def render_kustomization():
    """kubectl kustomize (where kubectl runs): the folder renders to the same objects."""
    if not shutil.which("kubectl"):
        return "kubectl not found: the kustomization not rendered"
    r = subprocess.run(["kubectl", "kustomize", os.path.join(TOP, "deploy/kubernetes")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        problem("kubectl kustomize deploy/kubernetes", r.stderr.strip()[:300])
        return ""
    rendered = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(r.stdout) if o}
    if rendered != set(k8s_objects()):
        problem("kubectl kustomize deploy/kubernetes", "renders %s" % sorted(rendered))
    return "kubectl kustomize renders %d objects" % len(rendered)


def unit_entries(path):
    """[Section] -> list of (key, value), continuation lines joined."""
    out, sec, buf = {}, None, ""
    for line in open(path):
        line = line.rstrip("\n")
        if buf:
            line = buf + line.lstrip()
            buf = ""
        if line.endswith("\\"):
            buf = line[:-1] + " "
            continue
        if not line.strip() or line.lstrip().startswith(("#", ";")):
            continue
        if line.startswith("["):
            sec = line.strip("[]")
            out.setdefault(sec, [])
        elif "=" in line:
            k, v = line.split("=", 1)
            out[sec].append((k.strip(), v.strip()))
    return out


def check_systemd(build):
    d = os.path.join(TOP, "deploy/systemd")
    units = {"coordinator": "moe-coordinator.service", "server": "moe-server@.service",
             "worker": "moe-worker.service"}
    hardening = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                 "PrivateTmp": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM"}
    for role, name in units.items():
        where = "deploy/systemd/" + name
        if not os.path.exists(os.path.join(d, name)):
            problem(where, "missing")
            continue
        svc = unit_entries(os.path.join(d, name)).get("Service", [])
        kv = dict(svc)
        for k, v in hardening.items():
            if kv.get(k) != v:
                problem(where, "%s=%s expected (has %r)" % (k, v, kv.get(k)))
        for k in ("EnvironmentFile", "User", "TimeoutStopSec"):
            if k not in kv:
                problem(where, "no %s=" % k)
        creds = {v.split(":", 1)[0] for k, v in svc if k == "LoadCredential"}
        if creds != want_secrets(role):
            problem(where, "credentials %s, not %s" % (sorted(creds), sorted(want_secrets(role))))
        check_command(where, role, [kv.get("ExecStart", "")])
    env = open(os.path.join(d, "moe.env")).read()
    if "OPENBLAS_THREAD_TIMEOUT=" not in env:
        problem("deploy/systemd/moe.env", "OPENBLAS_THREAD_TIMEOUT is not set")
    return verify_units(d, units, build)


def verify_units(d, units, build):
    """systemd-analyze verify on copies (ExecStart at BUILD/bin when built)."""
    if not shutil.which("systemd-analyze"):
        return "systemd-analyze not found: units checked structurally only"
    bindir = os.path.abspath(os.path.join(build, "bin"))
    built = all(os.access(os.path.join(bindir, p), os.X_OK) for p in PROGRAM.values())
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for name in units.values():
            text = open(os.path.join(d, name)).read()
            if built:
                text = text.replace("/usr/local/bin/", bindir + "/")
            out = name.replace("@.", "@5600.")
            open(os.path.join(tmp, out), "w").write(text)
            names.append(out)
        r = subprocess.run(["systemd-analyze", "verify"] + names, cwd=tmp,
                           capture_output=True, text=True)
        lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and
                 (built or "is not executable" not in l)]
        for l in lines:
            problem("systemd-analyze verify", l)
    return "systemd-analyze verify passed" + ("" if built else " (programs not built: their paths not checked)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    a = ap.parse_args()
    notes = []
    try:
        check_compose("docker-compose.yml", swarm=False)
        check_compose("deploy/swarm/stack.yml", swarm=True)
        check_kubernetes()
        notes.append(render_kustomization())
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
        problem("a deployment file", "cannot be read as expected: %s: %s" % (type(e).__name__, e))
    notes.append(check_systemd(a.build))
    for p in problems:
        print("check_deploy: " + p)
    if problems:
        return 1
    print("check_deploy: compose, swarm stack, kubernetes and systemd units consistent; " +
          "; ".join(n for n in notes if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
