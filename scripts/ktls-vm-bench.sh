#!/bin/sh
# Runs inside the ktls-vm guest for scripts/bench-ktls (a benchmark, not a test).
#   usage: ktls-vm-bench.sh SIZE TRACED_SHORT TRACED_LONG TIMED
# For --tls rustls and --tls ktls, Echo with SIZE-byte payloads, one RPC in flight (the krpc
# CLI), each run against a fresh krpc-server:
#   - two runs under strace -f (server and client), TRACED_SHORT and TRACED_LONG RPCs: the
#     difference divided by the difference in RPCs is the cost of one RPC, without start-up;
#   - one run of TIMED RPCs without strace: wall time, CPU (from /proc/PID/stat and `time`),
#     and TLS records written (the client's summary, the server's /metrics once the
#     connection has closed).
# Prints one "BENCH key=value ..." line per measurement; scripts/bench-ktls makes the report.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
size=$1
short=$2
long=$3
timed=$4
tls="--ca certs/ca.pem --addr 127.0.0.1:50051"
hz=100 # USER_HZ: the unit of /proc/PID/stat times

start_server() { # start_server LOG [strace -o FILE]...
    log=$1
    shift
    "$@" krpc-server --listen 127.0.0.1:50051 --cores 2 --cert certs/server.pem \
        --key certs/server.key --tls "$mode" 2>"$log" &
    tries=0
    until grep -q "krpc-server listening" "$log"; do
        tries=$((tries + 1))
        [ $tries -gt 3000 ] && { cat "$log"; echo "BENCH error=server-did-not-start"; exit 1; }
        sleep 0.1
    done
    server=$(pidof krpc-server)
}

stop_server() {
    kill -TERM "$server"
    while kill -0 "$server" 2>/dev/null; do sleep 0.1; done
    wait
}

# Syscalls of one strace -f log: count per name, and for reads and writes the bytes moved
# and the calls that found nothing to do (EAGAIN).
summarize() { # summarize FILE side n
    awk -v side="$2" -v n="$3" -v mode="$mode" -v size="$size" '
    function account(name, rest,   ret) {
        calls[name]++
        if (rest ~ /= -1 EAGAIN/) { again[name]++; return }
        if (match(rest, /= [0-9]+/)) {
            ret = substr(rest, RSTART + 2, RLENGTH - 2) + 0
            bytes[name] += ret
        }
    }
    /^[0-9]+ +[a-z_0-9]+\(/ {
        line = $0
        sub(/^[0-9]+ +/, "", line)
        name = line
        sub(/\(.*/, "", name)
        if (line ~ /<unfinished \.\.\.>$/) { pending[$1] = name; calls[name]++; next }
        account(name, line)
        next
    }
    /<\.\.\. [a-z_0-9]+ resumed>/ {
        name = $0
        sub(/.*<\.\.\. /, "", name)
        sub(/ resumed>.*/, "", name)
        calls[name]--   # counted when it started
        account(name, $0)
    }
    END {
        for (k in calls) {
            printf "BENCH kind=syscall side=%s mode=%s size=%s n=%s name=%s calls=%d bytes=%d again=%d\n",
                side, mode, size, n, k, calls[k], bytes[k], again[k]
        }
    }' "$1"
}

for mode in rustls ktls; do
    for n in $short $long; do
        start_server "$here/server.log" strace -f -qq -s 0 -o "$here/server.trace"
        strace -f -qq -s 0 -o "$here/client.trace" \
            krpc --tls $mode $tls echo --repeat "$n" --size "$size" >"$here/client.out" 2>&1 \
            || { cat "$here/client.out"; echo "BENCH error=client-failed mode=$mode n=$n"; exit 1; }
        stop_server
        summarize "$here/server.trace" server "$n"
        summarize "$here/client.trace" client "$n"
    done

    start_server "$here/server.log"
    read -r _ _ _ _ _ _ _ _ _ _ _ _ _ su ss _ </proc/"$server"/stat
    time -p -o "$here/time.out" krpc --tls $mode $tls echo --repeat "$timed" --size "$size" \
        >"$here/client.out" 2>&1 || { cat "$here/client.out"; echo "BENCH error=client-failed"; exit 1; }
    # The server adds a connection's records to its count when the connection closes.
    tries=0
    while :; do
        wget -qO "$here/metrics.txt" http://127.0.0.1:9100/metrics
        open=$(awk -v s="krpc_connections_open{tls=\"$mode\"}" 'index($0, s " ") == 1 { print $2 }' "$here/metrics.txt")
        [ "${open:-1}" = 0 ] && break
        tries=$((tries + 1))
        [ $tries -gt 100 ] && break
        sleep 0.1
    done
    read -r _ _ _ _ _ _ _ _ _ _ _ _ _ eu es _ </proc/"$server"/stat
    stop_server
    srv_records=$(awk -v s="krpc_tls_records_written_total{tls=\"$mode\"}" 'index($0, s " ") == 1 { print $2 }' "$here/metrics.txt")
    cli_records=$(sed -n 's/^tls records written: \([0-9]*\).*/\1/p' "$here/client.out")
    real=$(awk '$1 == "real" { print $2 }' "$here/time.out")
    user=$(awk '$1 == "user" { print $2 }' "$here/time.out")
    sys=$(awk '$1 == "sys" { print $2 }' "$here/time.out")
    echo "BENCH kind=timed mode=$mode size=$size n=$timed real=$real client_user=$user client_sys=$sys" \
        "server_user=$(((eu - su) * 1000 / hz))ms server_sys=$(((es - ss) * 1000 / hz))ms" \
        "server_records=${srv_records:-?} client_records=${cli_records:-?}"
    grep -q "every reply identical to its payload" "$here/client.out" \
        || echo "BENCH error=not-byte-exact mode=$mode"
done
echo "BENCH kind=kernel release=$(uname -r)"
