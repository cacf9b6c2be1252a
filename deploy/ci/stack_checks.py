#!/usr/bin/python3
"""Checks of the compose stack for scripts/compose-test (Debian's python3 and python3-yaml only).

  stack_checks.py prometheus-config SHIPPED OUT   the shipped prometheus.yml, made for 2.42
  stack_checks.py compose BASE CI PROMETHEUS_YML RUN
                                                  the override changes only listen addresses;
                                                  every scrape target is a service's port;
                                                  Grafana's provisioning fits the compose file;
                                                  writes RUN: CI less `ports` (see below)
  stack_checks.py sockets CI SERVICE=PID,...      each service listens where its command
                                                  says, on loopback; every connection too
  stack_checks.py targets URL CONFIG SECONDS      Prometheus has every target of CONFIG, all up
  stack_checks.py loadgens SECONDS ADDR...        the load generators' counters over a window
  stack_checks.py dashboard URL DASHBOARD SECONDS every dashboard query returns data

BASE and CI are `docker-compose config` outputs (the base file alone, and with the override).
Each check prints what it saw and exits 1 with the reason when it fails.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import yaml

# The histograms with classic and native buckets (docs/metrics.md, "classic + native"). With
# native histograms on, Prometheus before 2.45 stores only their native half.
DUAL_HISTOGRAMS = ["krpc_rpc_duration_seconds", "krpc_loadgen_rpc_duration_seconds"]
LISTEN_FLAGS = {"--listen", "--metrics-listen"}


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


# --- prometheus-config ------------------------------------------------------------------------


def prometheus_config(shipped, out):
    """The shipped configuration targets Prometheus 2.55 and keeps classic buckets with
    `scrape_classic_histograms: true`, which 2.42 (Debian 12's) rejects. What 2.42 needs instead
    is docs/metrics.md's second job: the same targets scraped as text, keeping only the classic
    series of the dual histograms, so no other series is stored twice. Nothing else changes."""
    config = load_yaml(shipped)
    jobs = []
    for job in config["scrape_configs"]:
        classic = job.pop("scrape_classic_histograms", False)
        jobs.append(job)
        if classic:
            text = json.loads(json.dumps(job))
            text["job_name"] = job["job_name"] + "-classic"
            text["params"] = {"format": ["text"]}
            text["metric_relabel_configs"] = [
                {
                    "source_labels": ["__name__"],
                    "regex": "(" + "|".join(DUAL_HISTOGRAMS) + ")_(bucket|count|sum)",
                    "action": "keep",
                }
            ]
            jobs.append(text)
    config["scrape_configs"] = jobs
    text = yaml.safe_dump(config, sort_keys=False)
    if "classic_histograms" in text:
        fail("a classic-histogram option is left that Prometheus 2.42 would reject")
    with open(out, "w") as f:
        f.write("# Made by deploy/ci/stack_checks.py from deploy/prometheus/prometheus.yml.\n")
        f.write(text)
    print(f"{out}: {len(jobs)} scrape jobs ({', '.join(j['job_name'] for j in jobs)})")


# --- compose ----------------------------------------------------------------------------------


def flag_values(command):
    """{flag: value} of a command written as [--flag, value, ...] (or --flag=value)."""
    values = {}
    i = 0
    while i < len(command):
        arg = command[i]
        if arg.startswith("--") and "=" in arg:
            k, v = arg.split("=", 1)
            values[k] = v
        elif arg in LISTEN_FLAGS and i + 1 < len(command):
            values[arg] = command[i + 1]
            i += 1
        i += 1
    return values


def without_listen(command):
    out, skip = [], False
    for arg in command:
        if skip:
            skip = False
        elif arg in LISTEN_FLAGS:
            out.append(arg)
            skip = True
        elif arg.startswith("--web.listen-address="):
            continue
        else:
            out.append(arg)
    return out


def host_port(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def check_compose(base_path, ci_path, prometheus_path, run_path):
    base = load_yaml(base_path)["services"]
    ci = load_yaml(ci_path)["services"]
    if set(base) != set(ci):
        fail(f"the override changes the set of services: {sorted(set(base) ^ set(ci))}")

    listens = {}  # service -> {port: address}
    for name in sorted(base):
        b, c = base[name], ci[name]
        mode = c.get("network_mode")
        if mode not in ("host", "none"):
            fail(f"{name}: network_mode {mode!r}: every service must be on host networking (or none)")
        bc, cc = b.get("command", []), c.get("command", [])
        if without_listen(bc) != without_listen(cc):
            fail(f"{name}: the override's command differs beyond listen addresses:\n  {bc}\n  {cc}")
        hosts = c.get("extra_hosts", {})
        if isinstance(hosts, list):
            hosts = dict(h.split(":", 1) for h in hosts)
        ports = {}
        for flag, addr in flag_values(cc).items():
            if flag not in LISTEN_FLAGS | {"--web.listen-address"}:
                continue
            host, port = host_port(addr)
            if not ipaddress.ip_address(host).is_loopback:
                fail(f"{name}: {flag} {addr} is not a loopback address")
            if host != hosts.get(name):
                fail(f"{name}: listens on {host}, but its name resolves to {hosts.get(name)}")
            base_flag = flag_values(bc).get(flag)
            if base_flag is not None and host_port(base_flag)[1] != port:
                fail(f"{name}: {flag} port {port} differs from the base file's {base_flag}")
            ports[port] = host
        listens[name] = ports
        if mode == "host":
            addrs = list(hosts.values())
            on_host = {n for n in ci if ci[n].get("network_mode") == "host"}
            if len(set(addrs)) != len(addrs) or not on_host <= set(hosts) or not all(
                ipaddress.ip_address(a).is_loopback for a in addrs
            ):
                fail(f"{name}: extra_hosts must give every service its own loopback address: {hosts}")
    # The base file's Prometheus listens on its default port; the override moves it to loopback.
    listens["prometheus"].setdefault(9090, None)
    print(f"override: {len(ci)} services, host networking, commands equal but for listen addresses")

    # Every scrape target of the shipped prometheus.yml is a service and a port it listens on.
    targets = 0
    for job in load_yaml(prometheus_path)["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = host_port(target)
                if port not in listens.get(host, {}):
                    fail(f"prometheus.yml job {job['job_name']}: {target} is no service's port")
                targets += 1
    print(f"prometheus.yml: {targets} targets, each a service's listen port")

    check_grafana(base, listens)

    # Host networking publishes nothing: Docker ignores `ports` there, but docker-compose 1.29
    # refuses the pair, and an override cannot remove a key. So the file run is the merged one
    # less those `ports`.
    config = load_yaml(ci_path)
    dropped = []
    for name, service in sorted(config["services"].items()):
        if service.get("network_mode") == "host" and service.pop("ports", None):
            dropped.append(name)
    with open(run_path, "w") as f:
        f.write("# Made by deploy/ci/stack_checks.py: `docker-compose config` of the base file and\n")
        f.write("# ci/docker-compose.loopback.yml, less `ports` on host networking.\n")
        yaml.safe_dump(config, f, sort_keys=False)
    print(f"{run_path}: the merged file, without the ports of {', '.join(dropped)}")


def check_grafana(services, listens):
    """What can be checked of Grafana without Grafana: its provisioning fits the compose file."""
    grafana = services["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    provisioning = mounts.get("/etc/grafana/provisioning")
    if provisioning is None or not os.path.isdir(provisioning):
        fail(f"grafana: /etc/grafana/provisioning is not mounted from a directory: {mounts}")

    sources = []
    for path in sorted(os.listdir(os.path.join(provisioning, "datasources"))):
        sources += load_yaml(os.path.join(provisioning, "datasources", path))["datasources"]
    if len(sources) != 1:
        fail(f"grafana: expected one provisioned datasource, found {len(sources)}")
    source = sources[0]
    url = urllib.parse.urlsplit(source["url"])
    if source["type"] != "prometheus" or url.hostname not in services:
        fail(f"grafana: datasource {source['url']} is not a compose service")
    if url.port not in listens.get(url.hostname, {}):
        fail(f"grafana: datasource port {url.port} is not one {url.hostname} listens on")
    if not source.get("isDefault"):
        fail("grafana: the datasource is not the default one (the panels name none)")
    print(f"grafana datasource: {source['url']} = compose service {url.hostname}, uid {source['uid']}")

    providers = []
    for path in sorted(os.listdir(os.path.join(provisioning, "dashboards"))):
        providers += load_yaml(os.path.join(provisioning, "dashboards", path))["providers"]
    dashboards = 0
    for provider in providers:
        path = provider["options"]["path"]
        source_dir = mounts.get(path)
        if source_dir is None or not os.path.isdir(source_dir):
            fail(f"grafana: dashboard provider path {path} is not a mounted directory: {mounts}")
        for name in sorted(os.listdir(source_dir)):
            with open(os.path.join(source_dir, name)) as f:
                board = json.load(f)
            check_dashboard_json(name, board, source["uid"])
            dashboards += 1
            print(f"grafana dashboard: {path}/{name}: uid {board['uid']}, {len(board['panels'])} panels")
    if dashboards == 0:
        fail("grafana: no dashboard is provisioned")
    home = grafana.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home is not None:
        directory, name = os.path.split(home)
        if directory not in mounts or not os.path.isfile(os.path.join(mounts[directory], name)):
            fail(f"grafana: home dashboard {home} is not a provisioned file")
        print(f"grafana home dashboard: {home}")


def check_dashboard_json(name, board, datasource_uid):
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board.get("uid", "")):
        fail(f"{name}: uid {board.get('uid')!r} is not a valid Grafana uid")
    ids = [p.get("id") for p in board["panels"]]
    if None in ids or len(set(ids)) != len(ids):
        fail(f"{name}: panel ids missing or repeated: {ids}")
    for panel in board["panels"]:
        for ds in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
            if ds is None:
                continue  # the default datasource
            if ds.get("type") != "prometheus" or ds.get("uid") not in (datasource_uid, None):
                fail(f"{name}: panel {panel.get('title')!r} names datasource {ds}")
        for target in panel.get("targets", []):
            if not target.get("expr"):
                fail(f"{name}: panel {panel.get('title')!r} has a target without expr")


# --- sockets ----------------------------------------------------------------------------------


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]").split("%")[0], port


def check_sockets(ci_path, pairs):
    """Every socket of the stack's processes is on loopback, and each service listens exactly
    where its command says (a host-network container shares the host's sockets)."""
    services = load_yaml(ci_path)["services"]
    pids = {}
    for pair in pairs:
        name, pid_list = pair.split("=")
        for pid in pid_list.split(","):
            pids[pid] = name
    listening = {name: set() for name in pids.values()}
    connections = 0
    out = subprocess.run(["ss", "-H", "-tanp"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6:
            continue
        state, local, peer, users = fields[0], fields[3], fields[4], fields[5]
        owners = {pids[p] for p in re.findall(r"pid=(\d+)", users) if p in pids}
        if not owners:
            continue
        for addr in (local, peer) if state != "LISTEN" else (local,):
            host, _ = split_addr(addr)
            if not ipaddress.ip_address(host).is_loopback:
                fail(f"{sorted(owners)}: {state} {local} -> {peer}: not loopback")
        if state == "LISTEN":
            for name in owners:
                listening[name].add(local)
        else:
            connections += 1
    for name, found in sorted(listening.items()):
        command = services[name].get("command", [])
        want = {
            addr
            for flag, addr in flag_values(command).items()
            if flag in LISTEN_FLAGS | {"--web.listen-address"}
        }
        if found != want:
            fail(f"{name} listens on {sorted(found)}, its command says {sorted(want)}")
        print(f"{name}: listens on {', '.join(sorted(found))}")
    print(f"{connections} connections of the stack's processes, every one between loopback addresses")


# --- Prometheus -------------------------------------------------------------------------------


def api(url, path, **params):
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        fail(f"{path} {params}: {body}")
    return body["data"]


def wait_targets(url, config_path, seconds):
    count = sum(
        len(static["targets"])
        for job in load_yaml(config_path)["scrape_configs"]
        for static in job["static_configs"]
    )
    deadline = time.monotonic() + seconds
    while True:
        active = api(url, "/api/v1/targets")["activeTargets"]
        down = [t for t in active if t["health"] != "up"]
        if len(active) == count and not down:
            break
        if time.monotonic() > deadline:
            fail(
                f"after {seconds} s: {len(active)} targets (want {count}), not up: "
                + "; ".join(f"{t['scrapeUrl']} {t['health']} {t['lastError']}" for t in down)
            )
        time.sleep(1)
    jobs = sorted({t["labels"]["job"] for t in active})
    print(f"prometheus: {count} targets up ({', '.join(jobs)})")


def dashboard_queries(path):
    """The dashboard test's list (lab/tests/dashboard.rs): every target expression of every
    panel, with Grafana's $__rate_interval fixed (30 s: six 5 s scrapes)."""
    with open(path) as f:
        board = json.load(f)
    return [
        (panel["title"], target["expr"].replace("$__rate_interval", "30s"))
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def check_dashboard(url, path, seconds):
    queries = dashboard_queries(path)
    if len(queries) < 20:
        fail(f"only {len(queries)} dashboard queries: {queries}")
    deadline = time.monotonic() + seconds
    while True:
        ktls = api(url, "/api/v1/query", query="max(krpc_ktls_available)")["result"]
        no_ktls = bool(ktls) and float(ktls[0]["value"][1]) == 0.0
        missing, skipped, seen = [], [], []
        for title, expr in queries:
            result = api(url, "/api/v1/query", query=expr)["result"]
            if result:
                seen.append(f"{len(result):3} series  {title}: {expr}")
            elif "krpc_kernel_tls_" in expr and no_ktls and not os.path.exists("/proc/net/tls_stat"):
                skipped.append(f"{title}: {expr}")
            else:
                missing.append(f"{title}: {expr}")
        if not missing:
            break
        if time.monotonic() > deadline:
            fail(f"dashboard queries without data after {seconds} s:\n  " + "\n  ".join(missing))
        time.sleep(2)
    for line in seen:
        print(line)
    for s in skipped:
        print(f"SKIPPED (this kernel has no kTLS: /proc/net/tls_stat absent, krpc_ktls_available 0): {s}")
    if len(skipped) > 2:
        fail(f"more than the kernel kTLS panel skipped: {skipped}")
    print(f"dashboard: {len(seen)} of {len(queries)} queries return data, {len(skipped)} skipped")


# --- load generators --------------------------------------------------------------------------

SAMPLE = re.compile(r"^krpc_loadgen_rpcs_total\{([^}]*)\} (\S+)")


def loadgen_counts(addr):
    """{code: RPCs} from one load generator's own endpoint (OpenMetrics text)."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            counts[labels["code"]] = counts.get(labels["code"], 0) + float(m.group(2))
    return counts


def check_loadgens(seconds, addrs):
    before = {a: loadgen_counts(a) for a in addrs}
    time.sleep(seconds)  # the window itself: counts are compared across it, not timings
    after = {a: loadgen_counts(a) for a in addrs}
    bad = []
    for a in addrs:
        ok = after[a].get("OK", 0) - before[a].get("OK", 0)
        errors = {c: n for c, n in after[a].items() if c != "OK" and n > 0}
        print(f"loadgen {a}: {ok:.0f} RPCs OK in {seconds} s ({ok / seconds:.0f} RPC/s), errors {errors or 'none'}")
        if ok <= 0 or errors:
            bad.append(a)
    if bad:
        fail(f"load generators with errors or no completed RPCs: {bad}")


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "prometheus-config" and len(args) == 2:
        prometheus_config(*args)
    elif cmd == "compose" and len(args) == 4:
        check_compose(*args)
    elif cmd == "sockets" and len(args) >= 2:
        check_sockets(args[0], args[1:])
    elif cmd == "targets" and len(args) == 3:
        wait_targets(args[0], args[1], float(args[2]))
    elif cmd == "loadgens" and len(args) >= 2:
        check_loadgens(float(args[0]), args[1:])
    elif cmd == "dashboard" and len(args) == 3:
        check_dashboard(args[0], args[1], float(args[2]))
    else:
        fail(f"bad arguments: {argv[1:]}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
