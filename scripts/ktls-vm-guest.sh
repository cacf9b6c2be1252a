#!/bin/sh
# Runs inside the ktls-vm guest (busybox sh, a stock Debian kernel with tls.ko loaded).
# For each TLS mode: start krpc-server, make 5,000 Echo RPCs with the krpc client in the same
# mode, sample /proc/net/tls_stat while they run, and check what the kernel saw.
#   rustls: the kernel's session counters stay at 0 (so the ktls check can fail);
#   ktls:   TlsCurrTxSw and TlsCurrRxSw reach >= 2 (both ends in the kernel), no decrypt error;
#           krpc-loadgen runs over kTLS without errors; the server's /metrics says
#           krpc_ktls_available 1 and re-exports the kernel's counters.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
RPCS=5000
failed=0

stat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }
fail() { echo "FAIL: $*"; failed=1; }

if [ ! -r /proc/net/tls_stat ]; then
    echo "FAIL: /proc/net/tls_stat missing: the guest kernel has no kTLS"
    exit 1
fi
echo "guest kernel: $(uname -r)"

run_mode() {
    mode=$1
    log="$here/server-$mode.log"
    krpc-server --tls "$mode" --listen 127.0.0.1:50051 --cores 2 \
        --cert certs/server.pem --key certs/server.key 2>"$log" &
    server=$!
    # Readiness: the server logs this line once its listeners are bound.
    tries=0
    until grep -q "krpc-server listening" "$log"; do
        tries=$((tries + 1))
        if [ $tries -gt 1200 ] || ! kill -0 $server 2>/dev/null; then
            cat "$log"; fail "$mode: server did not start"; return
        fi
        sleep 0.1
    done

    krpc --tls "$mode" --ca certs/ca.pem --addr 127.0.0.1:50051 info >"$here/info-$mode.out" 2>&1 \
        || fail "$mode: Info RPC failed: $(cat "$here/info-$mode.out")"

    krpc --tls "$mode" --ca certs/ca.pem --addr 127.0.0.1:50051 \
        echo --repeat $RPCS --size 64 >"$here/client-$mode.out" 2>&1 &
    client=$!
    max_tx=0; max_rx=0
    while kill -0 $client 2>/dev/null; do
        tx=$(stat TlsCurrTxSw); rx=$(stat TlsCurrRxSw)
        [ "$tx" -gt "$max_tx" ] && max_tx=$tx
        [ "$rx" -gt "$max_rx" ] && max_rx=$rx
        sleep 0.02
    done
    wait $client; client_rc=$?
    if [ "$mode" = ktls ]; then
        # While the server still runs: the load generator over kTLS, and the server's metrics.
        krpc-loadgen run --tls ktls --ca certs/ca.pem --addr 127.0.0.1:50051 --rate 100 \
            --duration 3s --warmup 1s --connections 2 --concurrency 4 --quiet \
            --json "$here/loadgen.json" >"$here/loadgen.out" 2>&1; loadgen_rc=$?
        wget -qO- http://127.0.0.1:9100/metrics >"$here/metrics.txt" 2>&1; metrics_rc=$?
    fi
    kill -TERM $server; wait $server; server_rc=$?

    echo "== $mode: client exit $client_rc, server exit $server_rc"
    cat "$here/client-$mode.out"
    grep -E "^(connection tls|cipher|ktls)" "$here/info-$mode.out"
    echo "max TlsCurrTxSw=$max_tx max TlsCurrRxSw=$max_rx during the run"
    sed 's/^/  /' /proc/net/tls_stat

    [ $client_rc -eq 0 ] || fail "$mode: client failed"
    [ $server_rc -eq 0 ] || { cat "$log"; fail "$mode: server did not exit 0 on SIGTERM"; }
    grep -q "^$RPCS Echo RPCs, every reply identical to its payload" "$here/client-$mode.out" \
        || fail "$mode: not every RPC returned its payload byte for byte"
    [ "$(stat TlsDecryptError)" -eq 0 ] || fail "$mode: TlsDecryptError is not 0"
    case $mode in
    rustls)
        # No kernel session ever existed: none open now, none installed for receiving. TlsTxSw
        # counts the kTLS probes (3 TLS_TX setsockopts per probing process; clients in
        # --tls rustls do not probe, so here only the server's).
        for k in TlsCurrTxSw TlsCurrRxSw TlsRxSw; do
            [ "$(stat $k)" -eq 0 ] || fail "rustls: $k is $(stat $k), expected 0"
        done
        [ "$(stat TlsTxSw)" -le 3 ] || fail "rustls: TlsTxSw is $(stat TlsTxSw), more than the probes"
        [ "$max_tx" -eq 0 ] && [ "$max_rx" -eq 0 ] || fail "rustls: kernel TLS sessions seen"
        grep -q "^ktls: *off" "$here/info-$mode.out" || fail "rustls: Info says kTLS carries it"
        ;;
    ktls)
        [ "$max_tx" -ge 2 ] || fail "ktls: TlsCurrTxSw peaked at $max_tx, expected >= 2"
        [ "$max_rx" -ge 2 ] || fail "ktls: TlsCurrRxSw peaked at $max_rx, expected >= 2"
        grep -q "^ktls: *on" "$here/info-$mode.out" || fail "ktls: Info says kTLS does not carry it"
        # krpc-loadgen over kTLS: every RPC answered OK, and the server said kTLS carried it.
        sed 's/^/  loadgen: /' "$here/loadgen.out"
        [ "$loadgen_rc" -eq 0 ] || fail "ktls: krpc-loadgen exited $loadgen_rc"
        grep -q "errors: none" "$here/loadgen.out" || fail "ktls: krpc-loadgen saw errors"
        grep -q '"tls_mode": "ktls"' "$here/loadgen.json" || fail "ktls: loadgen's result does not say ktls"
        # The server's metrics on a kernel with kTLS: available, connections by kTLS, and the
        # kernel's own counters re-exported.
        [ "$metrics_rc" -eq 0 ] || fail "ktls: cannot fetch /metrics: $(cat "$here/metrics.txt")"
        grep -E '^krpc_(ktls_available|kernel_tls_current\{stat="TlsCurrTxSw"\}|connections_accepted_total\{tls="ktls"\})' \
            "$here/metrics.txt" | sed 's/^/  metrics: /'
        grep -q '^krpc_ktls_available 1$' "$here/metrics.txt" || fail "ktls: krpc_ktls_available is not 1"
        grep -q '^krpc_kernel_tls_current{stat="TlsCurrTxSw"} ' "$here/metrics.txt" \
            || fail "ktls: the kernel's TlsCurrTxSw is not re-exported"
        grep -q '^krpc_connections_accepted_total{tls="ktls"} ' "$here/metrics.txt" \
            || fail "ktls: no connection counted under tls=ktls"
        ;;
    esac
}

# rustls first, on a fresh kernel, so its counters are exactly 0.
run_mode rustls
run_mode ktls

if [ $failed -ne 0 ]; then
    echo "ktls-vm test: FAILED"
    exit 1
fi
echo "ktls-vm test: passed"
